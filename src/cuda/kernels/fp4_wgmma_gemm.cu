// Grouped GEMM for fp4 weights (W4A16) on Hopper's warpgroup tensor cores, the path of the nvfp4 and
// mxfp4 experts above 32 rows per expert — small_m_gemm_fp4.cu's product and formats:
//   Y[r, n] = gs[e] * sum_k X[src(r), k] * e2m1(W[e, n, k]) * s[e, n, k / G]  (+ bias[e, n])
// without the bf16 copy of the weights the CUTLASS path needs (4 bytes written and read again per
// weight value, more than the GEMMs themselves at 1-8K tokens).
// Swap-AB: the weights are wgmma's A operand, dequantized in registers (fp4_util.cuh's bit placement
// and group multipliers, exact); the tokens of one plan item are B, bf16 in shared memory.
// A block: 128 weight rows x one work item of the row plan (up to 256 rows of one expert; items of up
// to 128 / 64 rows run n = 128 / 64 products), in 3 warpgroups:
// - a producer fills a 5-stage ring of k tiles (64 values) with cp.async: the item's X rows gathered
//   through x_row into the K-major, 128-byte-swizzled layout wgmma reads, the packed W rows as they lie
//   (32 bytes a row), each row's group scales of the tile as one word. A stage's full barrier completes
//   when its copies land; its empty barrier when both consumers are done with it.
// - two consumers, an m64 tile of weight rows each, m64n256k16 wgmma with A from registers. A lane's
//   fragment of a 32-value chunk of a weight row is byte c of each of the chunk's four words (lane
//   4g + c): one 16-byte shared load and three prmt give a packed word whose unpacking and scaling are
//   the A registers of two k16 steps. Chunk h + 1 is unpacked while chunk h's wgmma run and scaled
//   into the other register buffer once chunk h - 1's are done. Consumers read no global memory in the
//   loop (the scales come through shared memory), so nothing but the stages holds up a wgmma fence.
// Measured (H200, session 14): with the producer's scale load waiting in line, its generic (not
// shared-space) loads and per-copy address arithmetic, the consumers waited on full stages 27-32% of
// the time and the kernel ran at 0.6-0.9x the CUTLASS path; without them 1.0-1.7x. A persistent variant
// (one block per SM walking the units) was 2-4% slower.
// Limits: K % 64 == 0 (the CUDA fp4 experts' hidden and intermediate sizes); plan items of 256 rows.
#include "cuda/cuda_util.h"
#include "cuda/kernels/fp4_util.cuh"
#include "cuda/kernels/kernels.h"
#include "cuda/kernels/launch.cuh"
#include "cuda/kernels/mma_util.cuh"
#include "cuda/kernels/wgmma_util.cuh"
#include "fusedmoe/formats.h"

namespace fusedmoe::cuda {
namespace {

constexpr int kConsumers = 2;                      // consumer warpgroups: an m64 tile of weight rows each
constexpr int kThreads = 128 * (kConsumers + 1);   // + the producer warpgroup (the last)
constexpr int kBlockRows = 64 * kConsumers;
constexpr int kTileK = 64;                    // 2 chunks of 32 values, 4 k16 steps
constexpr int kStages = 5;
constexpr int kTileTokens = 256;
constexpr int kXBytes = kTileTokens * kTileK * 2;  // up to 256 token rows of 128 bytes
constexpr int kWBytes = kBlockRows * kTileK / 2;   // 128 weight rows of 32 bytes
constexpr int kSBytes = kBlockRows * 4;            // their group scales, a word a row
constexpr int kStageBytes = (kXBytes + kWBytes + kSBytes + 1023) / 1024 * 1024;  // X 1024-byte aligned
// The stages, then the full and empty barriers of each stage, then the item's rows of X (+ alignment).
constexpr size_t kSmemBytes = size_t(kStages) * kStageBytes + 2 * kStages * 8 + kTileTokens * sizeof(int32_t) + 1024;

__device__ inline uint32_t smem_addr(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

// mbarrier helpers (CTA scope).
__device__ inline void mbar_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}
__device__ inline void mbar_wait(uint64_t* bar, uint32_t parity) {
  uint32_t done;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(smem_addr(bar)), "r"(parity)
        : "memory");
  } while (!done);
}
__device__ inline void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}
// Arrives on bar once this thread's cp.async copies issued so far have landed (the count includes it).
__device__ inline void cp_async_arrive(uint64_t* bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}
// Orders shared-memory writes seen through the generic proxy (cp.async) before wgmma's reads.
__device__ inline void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
__device__ inline uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
  uint32_t d;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
  return d;
}

// Register budgets of the warpgroup roles (setmaxnreg; 96 x 128 + 200 x 256 <= 64 Ki): without them
// ptxas fits the consumers in the launch's 168 registers by serializing their wgmma.
template <uint32_t kRegs>
__device__ inline void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}
template <uint32_t kRegs>
__device__ inline void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}
constexpr uint32_t kProducerRegs = 96, kConsumerRegs = 200;

template <int kTok>
__device__ inline void wgmma_rs(float (&d)[kTok / 2], const uint32_t (&a)[4], uint64_t desc) {
  if constexpr (kTok == 256) wgmma_m64n256k16_rs(d, a, desc);
  else if constexpr (kTok == 128) wgmma_m64n128k16_rs(d, a, desc);
  else wgmma_m64n64k16_rs(d, a, desc);
}

// Chunk h (32 values, k16 steps 2h and 2h + 1) of a k tile in shared memory (ws: 32 bytes a block
// row) for the lane's rows `row` and row + 8, unpacked but not yet scaled: q[hi][i] = values times
// 2^-126 (fp4_util.cuh), m0 / m1 the group multipliers of the two steps. sel picks byte c of two words.
// scales[hi]: the tile's group scales of row + 8 hi, byte i = group i (nvfp4: 4 groups of 16, mxfp4: 2
// of 32). It writes no fragment register, so it may run while the wgmma reading them are in flight.
struct UnpackedChunk {
  uint32_t q[2][4];
  __nv_bfloat162 m0[2], m1[2];
  uint32_t big_scale[2];  // mxfp4 scales above 2: the scale byte (else 0), applied in a second multiply
};

template <bool kNv>
__device__ inline void unpack_chunk(const uint8_t* ws, int h, const uint32_t (&scales)[2], int row, uint32_t sel,
                                    UnpackedChunk& c) {
#pragma unroll
  for (int hi = 0; hi < 2; ++hi) {
    const uint4 v = *reinterpret_cast<const uint4*>(ws + (row + 8 * hi) * 32 + h * 16);
    // Byte c of words 0..3: values k = 2c, 2c + 1 | 2c + 8, 2c + 9 of step 2h, then of step 2h + 1.
    e2m1x8_bf16_times_2m126(prmt(prmt(v.x, v.y, sel), prmt(v.z, v.w, sel), 0x5410), c.q[hi]);
    c.big_scale[hi] = 0;
    if constexpr (kNv) {
      const uint32_t two = scales[hi] >> (16 * h);  // the scales of steps 2h, 2h + 1
      c.m0[hi] = nv_multiplier(two & 0xff);
      c.m1[hi] = nv_multiplier((two >> 8) & 0xff);
    } else {
      const uint32_t u = (scales[hi] >> (8 * h)) & 0xff;  // one scale for both steps
      bool big;
      c.m0[hi] = c.m1[hi] = ue8m0_multiplier(u, big);
      if (big) c.big_scale[hi] = u;
    }
  }
}

// The A registers of steps 2h, 2h + 1 from an unpacked chunk: fr[step][i] in wgmma's A order (rows
// g, g + 8 at k 2c, 2c + 1, then at k 2c + 8, 2c + 9).
__device__ inline void scale_chunk(const UnpackedChunk& c, uint32_t (&fr)[2][4]) {
#pragma unroll
  for (int hi = 0; hi < 2; ++hi) {
    fr[0][hi] = mul_bf16x2(c.q[hi][0], c.m0[hi]);
    fr[0][2 + hi] = mul_bf16x2(c.q[hi][1], c.m0[hi]);
    fr[1][hi] = mul_bf16x2(c.q[hi][2], c.m1[hi]);
    fr[1][2 + hi] = mul_bf16x2(c.q[hi][3], c.m1[hi]);
    if (c.big_scale[hi]) {  // not seen in checkpoints: times 2^(u-127) in a second step
      const __nv_bfloat162 s2 = __float2bfloat162_rn(ue8m0_to_float(static_cast<uint8_t>(c.big_scale[hi])));
#pragma unroll
      for (int st = 0; st < 2; ++st) {
        fr[st][hi] = mul_bf16x2(fr[st][hi], s2);
        fr[st][2 + hi] = mul_bf16x2(fr[st][2 + hi], s2);
      }
    }
  }
}

__device__ inline void fence_fragments(uint32_t (&fr)[2][4]) {
#pragma unroll
  for (int s = 0; s < 2; ++s)
#pragma unroll
    for (int i = 0; i < 4; ++i) wgmma_fence_operand(fr[s][i]);
}

template <int kTok>
__device__ inline void fence_accumulators(float (&acc)[kTok / 2]) {
#pragma unroll
  for (int i = 0; i < kTok / 2; ++i) wgmma_fence_operand(acc[i]);
}

// One block's item: weight rows n0 .. n0 + 127 of expert e against the item's `rows` token rows
// (src_rows: their rows of X, -1 past them), all of k; Y rows first_row .. first_row + rows - 1.
// The producer warpgroup copies k tiles into the stages (full[s] completes when a tile has landed);
// each consumer warpgroup releases a stage (empty[s]) once its wgmma groups reading it are done.
template <bool kNv, int kTok>
__device__ __forceinline__ void fp4_wgmma_item(const SmallMGemm& g, uint8_t* smem, uint64_t* full, uint64_t* empty,
                                               const int32_t* src_rows, int e, int64_t n0, int64_t rows,
                                               int64_t first_row) {
  constexpr int kGroup = kNv ? 16 : 32;
  const int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31, gq = lane >> 2, cq = lane & 3;
  const int64_t N = g.N, K = g.K, row_bytes = K / 2, groups = K / kGroup;
  const int num_kt = static_cast<int>(K / kTileK);

  if (wg == kConsumers) {  // the producer: X as wgmma's B (16-byte chunk c of token row t at chunk
    // c ^ (t % 8) of the row's 128 bytes), W's rows unchanged, each row's group scales of the tile as
    // a word (4 nvfp4 or 2 mxfp4 bytes, aligned as K % 64 == 0); zeros past the rows or N. The scales
    // go through registers (mxfp4 rows of K/32 bytes need not be 4-byte aligned for cp.async), so that
    // the consumers read no global memory in their loop.
    setmaxnreg_dec<kProducerRegs>();
    const int p = tid - 128 * kConsumers;
    const bf16* x = static_cast<const bf16*>(g.x);
    const uint8_t* w = static_cast<const uint8_t*>(g.w) + e * N * row_bytes;
    // X: this thread copies chunk c of rows p / 8 + 16 i, all with t % 8 == (p / 8) % 8 (one swizzled
    // slot); their source addresses stay in registers (the copies issue at a few instructions each).
    const int c = p & 7, slot = (c ^ ((p >> 3) & 7)) << 4;
    const bf16* x_src[kTok / 16];
    uint32_t x_ok = 0;
#pragma unroll
    for (int i = 0; i < kTok / 16; ++i) {
      const int32_t src = src_rows[(p >> 3) + 16 * i];
      x_src[i] = src >= 0 ? x + int64_t(src) * K + c * 8 : x;
      x_ok |= uint32_t(src >= 0) << i;
    }
    const bool s_ok = n0 + p < N;  // this thread's scale row: block row p
    const uint8_t* s_row = g.w_fp4_scales + (e * N + (s_ok ? n0 + p : 0)) * groups;
    auto load_scale = [&](int kt) -> uint32_t {
      if (!s_ok) return 0u;
      if constexpr (kNv) return __ldg(reinterpret_cast<const uint32_t*>(s_row) + kt);
      else return __ldg(reinterpret_cast<const uint16_t*>(s_row) + kt);
    };
    uint32_t sw = load_scale(0);  // tile kt's scale word, loaded one tile ahead (the store waits for it)
    for (int kt = 0; kt < num_kt; ++kt) {
      const int st = kt % kStages;
      if (kt >= kStages) mbar_wait(&empty[st], ((kt / kStages) - 1) & 1);
      uint8_t* xs = smem + st * kStageBytes;
      uint8_t* ws = xs + kXBytes;
      const int k0 = kt * kTileK;
      uint8_t* x_dst = xs + (p >> 3) * 128 + slot;
#pragma unroll
      for (int i = 0; i < kTok / 16; ++i) {
        const bool ok = (x_ok >> i) & 1;
        cp_async_16(x_dst + i * 16 * 128, ok ? x_src[i] + k0 : x, ok);
      }
#pragma unroll
      for (int i = 0; i < kBlockRows * 2 / 128; ++i) {
        const int id = p + i * 128, r = id >> 1, cw = id & 1;
        const bool ok = n0 + r < N;
        cp_async_16(ws + r * 32 + cw * 16, ok ? w + (n0 + r) * row_bytes + kt * (kTileK / 2) + cw * 16 : w, ok);
      }
      reinterpret_cast<uint32_t*>(ws + kWBytes)[p] = sw;
      mbar_arrive(&full[st]);  // release: the scale word is visible to whoever waits on full[st]
      cp_async_arrive(&full[st]);
      if (kt + 1 < num_kt) sw = load_scale(kt + 1);
    }
    cp_async_wait_all();
    return;
  }

  setmaxnreg_inc<kConsumerRegs>();
  const int row = 64 * wg + 16 * warp + gq;  // the lane's fragment rows in the block: row, row + 8

  float acc[kTok / 2];
#pragma unroll
  for (int i = 0; i < kTok / 2; ++i) acc[i] = 0.0f;
  fence_accumulators<kTok>(acc);

  const uint32_t sel = uint32_t(cq) | (uint32_t(cq + 4) << 4);
  const bool releaser = (tid & 127) == 0;  // one arrival per warpgroup on a stage's empty barrier
  uint32_t fr[2][2][4];  // chunk h's A registers in fr[h % 2], kept across tiles (see below)
  for (int kt = 0; kt < num_kt; ++kt) {
    const int st = kt % kStages;
    mbar_wait(&full[st], (kt / kStages) & 1);
    fence_proxy_async();
    const uint8_t* xs = smem + st * kStageBytes;
    const uint8_t* ws = xs + kXBytes;
    const uint32_t sc[2] = {reinterpret_cast<const uint32_t*>(ws + kWBytes)[row],
                            reinterpret_cast<const uint32_t*>(ws + kWBytes)[row + 8]};
    const uint32_t xs_addr = smem_addr(xs);
    UnpackedChunk unpacked;
    unpack_chunk<kNv>(ws, 0, sc, row, sel, unpacked);
    scale_chunk(unpacked, fr[0]);  // fr[0] last fed the previous tile's chunk 0: done
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      wgmma_fence();  // the fragments written above are visible to the wgmma
#pragma unroll
      for (int sub = 0; sub < 2; ++sub)  // k16 step 2h + sub: 32 bytes into each 128-byte X row
        wgmma_rs<kTok>(acc, fr[h][sub], smem_desc_k_major_sw128(xs_addr + (2 * h + sub) * 32));
      wgmma_commit();
      // Chunk 1's unpacking runs while chunk 0 and the previous tile's chunk 1 are in flight; only its
      // scaling, which writes fr[1], waits for the latter.
      if (h == 0) unpack_chunk<kNv>(ws, 1, sc, row, sel, unpacked);
      wgmma_wait<1>();  // chunk h - 1 (at h = 0: the previous tile's chunk 1) is done with fr[h ^ 1]
      // Pins fr[h ^ 1] to its registers up to here (at h = 0 that holds the previous tile's chunk 1):
      // the compiler may not reuse them while the wgmma reads them.
      fence_fragments(fr[h ^ 1]);
      if (h == 0) {
        if (kt > 0 && releaser) mbar_arrive(&empty[(kt - 1) % kStages]);  // tile kt - 1 is done
        scale_chunk(unpacked, fr[1]);
      }
    }
  }
  wgmma_wait<0>();
  fence_accumulators<kTok>(acc);
  fence_fragments(fr[1]);
  pdl_launch_dependents();

  const float gs = kNv ? g.w_global[e] * kNvEpilogueFactor : 1.0f;  // exact: a power of two
  float bias[2] = {0.0f, 0.0f};
#pragma unroll
  for (int hi = 0; hi < 2; ++hi)
    if (g.bias && n0 + row + 8 * hi < N) bias[hi] = g.bias[e * N + n0 + row + 8 * hi];
#pragma unroll
  for (int j = 0; j < kTok / 8; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t n = n0 + row + (i >= 2 ? 8 : 0);
      const int m = 8 * j + 2 * cq + (i & 1);
      if (m < rows && n < N) g.y[(first_row + m) * N + n] = __float2bfloat16_rn(acc[4 * j + i] * gs + bias[i >> 1]);
    }
}

template <bool kNv>
__global__ void __launch_bounds__(kThreads, 1) fp4_wgmma_kernel(SmallMGemm g, RowPlan plan) {
  extern __shared__ uint8_t smem_raw[];
  // 1024-byte aligned (the swizzled X tiles); an offset into smem_raw, so that the compiler knows every
  // pointer below addresses shared memory (generic loads took long-scoreboard stalls).
  uint8_t* smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + kStages * kStageBytes);
  uint64_t* empty = full + kStages;
  int32_t* src_rows = reinterpret_cast<int32_t*>(empty + kStages);
  pdl_wait();
  if (static_cast<int>(blockIdx.y) >= *plan.item_count) return;
  const int2 item = plan.items[blockIdx.y];  // {expert, first row}: a block row per item
  const int e = item.x;
  const int64_t first = plan.offsets[e] + item.y;
  const int64_t rows = min(int64_t(plan.counts[e]) - item.y, int64_t(kTileTokens));
  for (int t = threadIdx.x; t < kTileTokens; t += kThreads)
    src_rows[t] = t < rows ? (g.x_row ? g.x_row[first + t] : static_cast<int32_t>(first + t)) : -1;
  if (threadIdx.x < kStages) {
    mbar_init(&full[threadIdx.x], 2 * 128);     // each producer thread's copies and scale word
    mbar_init(&empty[threadIdx.x], kConsumers);  // one arrival per consumer warpgroup
  }
  __syncthreads();
  const int64_t n0 = int64_t(blockIdx.x) * kBlockRows;
  if (rows > 128) fp4_wgmma_item<kNv, 256>(g, smem, full, empty, src_rows, e, n0, rows, first);
  else if (rows > 64) fp4_wgmma_item<kNv, 128>(g, smem, full, empty, src_rows, e, n0, rows, first);
  else fp4_wgmma_item<kNv, 64>(g, smem, full, empty, src_rows, e, n0, rows, first);
}

}  // namespace

void launch_fp4_wgmma_gemm(const SmallMGemm& g, const RowPlan& plan, int64_t max_items, cudaStream_t s) {
  if (max_items == 0) return;
  FMOE_CHECK(g.K % kTileK == 0, "the fp4 wgmma GEMM needs K % ", kTileK, " == 0, got K=", g.K);
  FMOE_CHECK(plan.items && plan.item_rows == kTileTokens, "the fp4 wgmma GEMM needs a plan with work items of ",
             kTileTokens, " rows, got item_rows=", plan.item_rows);
  FMOE_CHECK(max_items <= 65535, "the fp4 wgmma GEMM takes at most 65535 work items, got ", max_items);
  const auto go = [&](auto kernel) {
    FMOE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kSmemBytes)));
    const dim3 grid(static_cast<unsigned>((g.N + kBlockRows - 1) / kBlockRows), static_cast<unsigned>(max_items));
    launch_with_smem(kernel, grid, dim3(kThreads), kSmemBytes, s, g, plan);
  };
  if (g.weights == SmallMWeights::nvfp4) go(fp4_wgmma_kernel<true>);
  else go(fp4_wgmma_kernel<false>);
}

}  // namespace fusedmoe::cuda
