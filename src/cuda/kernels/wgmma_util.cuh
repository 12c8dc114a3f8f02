// Warpgroup tensor-core helpers (sm_90a wgmma, PTX ISA 8.0+) of the wgmma grouped kernels: the
// fence / commit / wait of asynchronous wgmma groups, the shared-memory descriptor of a bf16
// operand stored K-major with the 128-byte swizzle, m64nNk16 bf16 products with A in
// registers (RS form, the fp4 kernel's dequantized weights) or in shared memory (SS form), and m64nNk32 e4m3
// products (SS). A register
// fragment of a warpgroup: warp w holds rows 16w .. 16w + 15 in
// mma.sync m16n8k16's A layout (lane 4g + c: rows g and g + 8, k 2c, 2c + 1 and 2c + 8, 2c + 9).
// C: warp w, lane 4g + c holds d[4j + i] = C[16w + g + 8 (i >= 2)][8j + 2c + (i & 1)].
#pragma once

#include <cstdint>

namespace fusedmoe::cuda {

__device__ inline void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ inline void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// Waits until at most N committed groups of this warpgroup are still running.
template <int N>
__device__ inline void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Pins a register the asynchronous wgmma reads or writes at this point of the program: the compiler
// may not move it, or give its physical register to another value, across the fence.
__device__ inline void wgmma_fence_operand(uint32_t& r) { asm volatile("" : "+r"(r)::"memory"); }
__device__ inline void wgmma_fence_operand(float& r) { asm volatile("" : "+f"(r)::"memory"); }

// Descriptor of a K-major bf16 tile in shared memory with the 128-byte swizzle: rows of 64 values
// (128 bytes), 16-byte chunk c of row r stored at chunk c ^ (r % 8), 8-row groups 1024 bytes apart,
// the tile 1024-byte aligned. k16 step s of the 64 values starts at byte 32 s of the tile's first row.
__host__ __device__ constexpr uint64_t smem_desc_k_major_sw128(uint32_t smem_addr) {
  uint64_t d = 0;
  d |= uint64_t((smem_addr & 0x3FFFF) >> 4);  // start address
  d |= uint64_t(1) << 16;                     // leading byte offset: unused with a swizzle (1 by convention)
  d |= uint64_t(1024 >> 4) << 32;             // stride byte offset: between 8-row groups
  d |= uint64_t(1) << 62;                     // 128-byte swizzle
  return d;
}

// The descriptor above from its low 32 bits: they hold the address field (and the leading byte offset), the high word
// is the same for every address, and no shared-memory address carries out of the field, so that offsets into the
// stages (in its 16-byte unit) can be added in 32 bits: an add and no carry a descriptor where 64-bit sums took two
// adds and two moves (wgmma_grouped_gemm.cu, session 63: with its 16-byte scale-product loads, the fp8 k-tile loop at
// 128 tokens runs 150 instructions, 162 before; same bits; mixtral-8x7b's bf16 1.024x / 1.028x at 1024 / 2048 tokens,
// H200, same-run A/B). Not for the fp4 kernel, whose descriptors the compiler already keeps in uniform registers (one
// UIADD3.64 a sum; the low-word form made its loops 2-7% longer).
__device__ __forceinline__ uint64_t sw128_desc(uint32_t low) {
  constexpr uint64_t kHigh = smem_desc_k_major_sw128(0) & ~uint64_t(0xFFFFFFFF);
  return kHigh | low;
}

// The accumulator operands of the products below, 16 at a time: FMOE_WGMMA_ACC_n names d[0 .. n - 1] as
// read-write asm operands, FMOE_WGMMA_REGS_n their placeholders %0 .. %(n - 1).
#define FMOE_WGMMA_ACC_16                                                                                             \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),                     \
  "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
#define FMOE_WGMMA_REGS_16                                                                                            \
  "%0, %1, %2, %3, %4, %5, %6, %7, "                                                                                  \
  "%8, %9, %10, %11, %12, %13, %14, %15"
#define FMOE_WGMMA_ACC_32                                                                                             \
  FMOE_WGMMA_ACC_16,                                                                                                  \
  "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),             \
  "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define FMOE_WGMMA_REGS_32                                                                                            \
  FMOE_WGMMA_REGS_16 ", %16, %17, %18, %19, %20, %21, %22, %23, "                                                     \
  "%24, %25, %26, %27, %28, %29, %30, %31"
#define FMOE_WGMMA_ACC_48                                                                                             \
  FMOE_WGMMA_ACC_32,                                                                                                  \
  "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),             \
  "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47])
#define FMOE_WGMMA_REGS_48                                                                                            \
  FMOE_WGMMA_REGS_32 ", %32, %33, %34, %35, %36, %37, %38, %39, "                                                     \
  "%40, %41, %42, %43, %44, %45, %46, %47"
#define FMOE_WGMMA_ACC_64                                                                                             \
  FMOE_WGMMA_ACC_48,                                                                                                  \
  "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),             \
  "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define FMOE_WGMMA_REGS_64                                                                                            \
  FMOE_WGMMA_REGS_48 ", %48, %49, %50, %51, %52, %53, %54, %55, "                                                     \
  "%56, %57, %58, %59, %60, %61, %62, %63"
#define FMOE_WGMMA_ACC_80                                                                                             \
  FMOE_WGMMA_ACC_64,                                                                                                  \
  "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),             \
  "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79])
#define FMOE_WGMMA_REGS_80                                                                                            \
  FMOE_WGMMA_REGS_64 ", %64, %65, %66, %67, %68, %69, %70, %71, "                                                     \
  "%72, %73, %74, %75, %76, %77, %78, %79"
#define FMOE_WGMMA_ACC_96                                                                                             \
  FMOE_WGMMA_ACC_80,                                                                                                  \
  "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),             \
  "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95])
#define FMOE_WGMMA_REGS_96                                                                                            \
  FMOE_WGMMA_REGS_80 ", %80, %81, %82, %83, %84, %85, %86, %87, "                                                     \
  "%88, %89, %90, %91, %92, %93, %94, %95"
#define FMOE_WGMMA_ACC_112                                                                                            \
  FMOE_WGMMA_ACC_96,                                                                                                  \
  "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),         \
  "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111])
#define FMOE_WGMMA_REGS_112                                                                                           \
  FMOE_WGMMA_REGS_96 ", %96, %97, %98, %99, %100, %101, %102, %103, "                                                 \
  "%104, %105, %106, %107, %108, %109, %110, %111"
#define FMOE_WGMMA_ACC_128                                                                                            \
  FMOE_WGMMA_ACC_112,                                                                                                 \
  "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),     \
  "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
#define FMOE_WGMMA_REGS_128                                                                                           \
  FMOE_WGMMA_REGS_112 ", %112, %113, %114, %115, %116, %117, %118, %119, "                                            \
  "%120, %121, %122, %123, %124, %125, %126, %127"

// D[64 x N] (f32) += A[64 x 16] (bf16) * B[16 x N] (bf16, shared memory via desc_b), ACC = N / 2 accumulators a
// thread: wgmma_m64nNk16_rs with A in registers, wgmma_m64nNk16_ss with A in shared memory (desc_a). P0 ..: the
// placeholders of the operands after the accumulators (ACC, ACC + 1, ...), as strings.
#define FMOE_WGMMA_RS(N, ACC, P0, P1, P2, P3, P4, P5)                                                                 \
  __device__ inline void wgmma_m64n##N##k16_rs(float (&d)[ACC], const uint32_t (&a)[4], uint64_t desc_b) {            \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" P5 ", 0;\n"                                                     \
                 "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32.bf16.bf16 {" FMOE_WGMMA_REGS_##ACC                   \
                 "}, {%" P0 ", %" P1 ", %" P2 ", %" P3 "}, %" P4 ", p, 1, 1, 0;\n}\n"                                 \
                 : FMOE_WGMMA_ACC_##ACC                                                                               \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));                                  \
  }
#define FMOE_WGMMA_SS(N, ACC, P0, P1, P2)                                                                             \
  __device__ inline void wgmma_m64n##N##k16_ss(float (&d)[ACC], uint64_t desc_a, uint64_t desc_b) {                   \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" P2 ", 0;\n"                                                     \
                 "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32.bf16.bf16 {" FMOE_WGMMA_REGS_##ACC                   \
                 "}, %" P0 ", %" P1 ", p, 1, 1, 0, 0;\n}\n"                                                           \
                 : FMOE_WGMMA_ACC_##ACC                                                                               \
                 : "l"(desc_a), "l"(desc_b), "r"(1));                                                                 \
  }
FMOE_WGMMA_RS(32, 16, "16", "17", "18", "19", "20", "21")
FMOE_WGMMA_RS(64, 32, "32", "33", "34", "35", "36", "37")
FMOE_WGMMA_RS(128, 64, "64", "65", "66", "67", "68", "69")
FMOE_WGMMA_RS(256, 128, "128", "129", "130", "131", "132", "133")
FMOE_WGMMA_SS(32, 16, "16", "17", "18")
FMOE_WGMMA_SS(64, 32, "32", "33", "34")
FMOE_WGMMA_SS(96, 48, "48", "49", "50")
FMOE_WGMMA_SS(128, 64, "64", "65", "66")
FMOE_WGMMA_SS(160, 80, "80", "81", "82")
FMOE_WGMMA_SS(192, 96, "96", "97", "98")
FMOE_WGMMA_SS(224, 112, "112", "113", "114")
FMOE_WGMMA_SS(256, 128, "128", "129", "130")
// D[64 x N] (f32) (+)= A[64 x 32] (e4m3, shared memory via desc_a) * B[32 x N] (e4m3, via desc_b), both K-major (the
// only form fp8 wgmma has): the same descriptors as bf16's, a k32 step being 32 bytes as a k16 one is. accumulate = 0
// overwrites D (a k tile's first step, which starts the fp8 kernel's per-tile partial sums).
#define FMOE_WGMMA_E4M3_SS(N, ACC, P0, P1, P2)                                                                        \
  __device__ inline void wgmma_m64n##N##k32_e4m3_ss(float (&d)[ACC], uint64_t desc_a, uint64_t desc_b,                \
                                                    int accumulate) {                                                 \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" P2 ", 0;\n"                                                     \
                 "wgmma.mma_async.sync.aligned.m64n" #N "k32.f32.e4m3.e4m3 {" FMOE_WGMMA_REGS_##ACC                   \
                 "}, %" P0 ", %" P1 ", p, 1, 1;\n}\n"                                                                  \
                 : FMOE_WGMMA_ACC_##ACC                                                                               \
                 : "l"(desc_a), "l"(desc_b), "r"(accumulate));                                                        \
  }
FMOE_WGMMA_E4M3_SS(32, 16, "16", "17", "18")
FMOE_WGMMA_E4M3_SS(64, 32, "32", "33", "34")
FMOE_WGMMA_E4M3_SS(96, 48, "48", "49", "50")
FMOE_WGMMA_E4M3_SS(128, 64, "64", "65", "66")
FMOE_WGMMA_E4M3_SS(160, 80, "80", "81", "82")
#undef FMOE_WGMMA_RS
#undef FMOE_WGMMA_SS
#undef FMOE_WGMMA_E4M3_SS
#undef FMOE_WGMMA_ACC_16
#undef FMOE_WGMMA_REGS_16
#undef FMOE_WGMMA_ACC_32
#undef FMOE_WGMMA_REGS_32
#undef FMOE_WGMMA_ACC_48
#undef FMOE_WGMMA_REGS_48
#undef FMOE_WGMMA_ACC_64
#undef FMOE_WGMMA_REGS_64
#undef FMOE_WGMMA_ACC_80
#undef FMOE_WGMMA_REGS_80
#undef FMOE_WGMMA_ACC_96
#undef FMOE_WGMMA_REGS_96
#undef FMOE_WGMMA_ACC_112
#undef FMOE_WGMMA_REGS_112
#undef FMOE_WGMMA_ACC_128
#undef FMOE_WGMMA_REGS_128

}  // namespace fusedmoe::cuda
