// Warp-level tensor-core helpers of the small-M kernels (sm_80+ mma.sync, used on sm_90a):
// bf16 m16n8k16 and e4m3 m16n8k32 with f32 accumulators, a 16-byte streaming load that skips
// L1, word access into a 16-byte vector, the swap-AB step over one 16-byte chunk of k, the
// split-k sum across warps, and the fitted-tile passes over an expert's rows.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

namespace fusedmoe::cuda {

__device__ inline void mma_bf16_16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                      uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ inline void mma_e4m3_16832(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                      uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ inline uint4 load_streaming(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// load_streaming where ok, else no read: v keeps whatever its registers held (the caller must not let it count).
// An asm predicate rather than `ok ? load : 0`, which costs four register moves for the zeros.
__device__ inline uint4 load_streaming_if(const void* p, bool ok) {
  uint4 v;
  asm volatile(
      "{\n .reg .pred q;\n setp.ne.u32 q, %5, 0;\n @q ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n}\n"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p), "r"(static_cast<uint32_t>(ok)));
  return v;
}

// A 16-byte read-only load through L1 (data the block's warps share), volatile: it stays where the code
// puts it, ahead of the work that hides its latency.
__device__ inline uint4 load_cached(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.v4.u32 {%0,%1,%2,%3}, [%4];\n" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}

__device__ inline uint32_t word(const uint4& v, int i) { return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w; }

// One 16-byte chunk of k for one token tile: 2 bf16 k16 steps or 2 e4m3 k32 steps. Lane
// (g, c) holds words 2s, 2s+1 of its 16 bytes for step s: logical k {2c,2c+1 | 2c+8,2c+9}
// (bf16) or {4c..4c+3 | 16+4c..} (e4m3) — the same mapping for A and B.
template <bool kFp8>
__device__ inline void mma_chunk(float (&d)[4], const uint4& wa, const uint4& wb, const uint4& x) {
#pragma unroll
  for (int s = 0; s < 2; ++s) {
    if constexpr (kFp8)
      mma_e4m3_16832(d, word(wa, 2 * s), word(wb, 2 * s), word(wa, 2 * s + 1), word(wb, 2 * s + 1), word(x, 2 * s),
                     word(x, 2 * s + 1));
    else
      mma_bf16_16816(d, word(wa, 2 * s), word(wb, 2 * s), word(wa, 2 * s + 1), word(wb, 2 * s + 1), word(x, 2 * s),
                     word(x, 2 * s + 1));
  }
}

// The whole block's barrier: split_k_sum's default.
struct BlockSync {
  __device__ void operator()() const { __syncthreads(); }
};

// Split-k reduction of the small-M kernels: each of kWarps warps holds NT C fragments over its
// share of k; warp 0 returns their sums in v, added in warp order (deterministic). Every thread
// that sync() joins calls it (the block's, or warps 0 .. kWarps-1 with a named barrier); `partial`
// is free again when it returns.
template <int kWarps, int NT, class Sync = BlockSync>
__device__ inline void split_k_sum(const float (&acc)[NT][4], float (&partial)[kWarps][NT][4][32], float (&v)[NT][4],
                                   Sync sync = {}) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
  for (int t = 0; t < NT; ++t)
#pragma unroll
    for (int i = 0; i < 4; ++i) partial[warp][t][i][lane] = acc[t][i];
  sync();
  if (warp == 0) {
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        float sum = partial[0][t][i][lane];
#pragma unroll
        for (int w = 1; w < kWarps; ++w) sum += partial[w][t][i][lane];
        v[t][i] = sum;
      }
  }
  sync();
}

// An output value as the small-M epilogues make it: sum times the scale, plus the bias when there is
// one — an explicit fma, so that every epilogue sharing it rounds alike.
__device__ __forceinline__ float tile_value(float sum, float scale, const float* bias) {
  return bias ? __fmaf_rn(sum, scale, *bias) : __fmul_rn(sum, scale);
}

// The small-M epilogues' default output: the value rounded to bf16.
struct RoundToBf16 {
  __device__ __nv_bfloat16 operator()(float v) const { return __float2bfloat16_rn(v); }
};

// Warp 0's epilogue of the small-M kernels: y[(off + m) * N + n] = out(sum * scale + bias[e, n]) for
// its C fragments (rows n = n0 + gq, + 8; tokens m = tb + 8t + 2cq, + 1) inside the expert's rows and N.
// scale 1 (bf16, fp8) leaves the sum exact.
template <int NT, class Out = RoundToBf16>
__device__ inline void store_tile(const float (&sum)[NT][4], float scale, const float* bias, int64_t e, int64_t N,
                                  int64_t n0, int64_t tb, int64_t count, int64_t off, __nv_bfloat16* y,
                                  Out out = {}) {
  const int lane = threadIdx.x & 31, gq = lane >> 2, cq = lane & 3;
#pragma unroll
  for (int t = 0; t < NT; ++t)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t n = n0 + gq + (i >= 2 ? 8 : 0);
      const int64_t m = tb + t * 8 + 2 * cq + (i & 1);
      if (m < count && n < N)
        y[(off + m) * N + n] = out(tile_value(sum[t][i], scale, bias ? bias + e * N + n : nullptr));
    }
}

// 16 bytes global -> shared without registers (cp.async, L2 only); zeros when !valid (no read).
__device__ inline void cp_async_16(void* smem, const void* gmem, bool valid) {
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(valid ? 16 : 0));
}
__device__ inline void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ inline void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

// The pass of a small-M work item over an expert's rows [begin, end), end - begin <= 8 * kMaxNT:
// it takes the smallest token tile (8 * NT rows, NT = 1, 2, 4 or 8) that holds them and calls
// pass(std::integral_constant<int, NT>{}, begin). Items cut an expert's rows every 8 * kMaxNT, so
// the passes are those one block running over all of the expert's rows would make.
template <int kMaxNT, class Pass>
__device__ __forceinline__ void fitted_pass(int64_t begin, int64_t end, Pass&& pass) {
  const int64_t rest = end - begin;
  if constexpr (kMaxNT >= 8) {
    if (rest > 32) return pass(std::integral_constant<int, 8>{}, begin);
  }
  if constexpr (kMaxNT >= 4) {
    if (rest > 16) return pass(std::integral_constant<int, 4>{}, begin);
  }
  if constexpr (kMaxNT >= 2) {
    if (rest > 8) return pass(std::integral_constant<int, 2>{}, begin);
  }
  pass(std::integral_constant<int, 1>{}, begin);
}

}  // namespace fusedmoe::cuda
