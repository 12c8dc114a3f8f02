// Fused decode kernel of the monolithic CUDA experts (bf16 weights, bf16 activations): after the
// route+plan kernel, this one launch runs GEMM1 with the activation in its epilogue, GEMM2 and
// the weighted top-k reduce. Work items, taken in order from an atomic counter:
//   A (active expert i, h2 columns j0..): 16 w13 rows — for a gated activation 8 gate rows and
//     their 8 up rows, so each lane holds a gate/up pair of the same column in its accumulators;
//     relu2: 16 plain rows — times the expert's token rows, then bias, activation, bf16 h2;
//     then done_a[i] += 1.
//   B (active expert i, w2 rows n0..n0+15): waits for done_a[i] to reach the A tiles of expert i,
//     then y rows (+ bias) in bf16; done_b[n0/16] += 1.
//   C (output columns n0..n0+15): waits for done_b[n0/16] to count every active expert, then
//     out[t] = bf16(sum over slots j in order of w[t, j] * y[row of (t, j)]) — finalize.cu's sum.
// Items are taken in order, so an item only waits on items taken before it by running blocks,
// which never wait on it: no deadlock, whatever blocks are resident. The counters (the work
// counter, done_a, done_b) are zeroed by the route+plan kernel that runs just before.
// The GEMM tiles are small_m_gemm.cu's (swap-AB mma.sync m16n8k16, 4 warps splitting k in the
// same chunk order, reduced in the same warp order), and h2 and y are rounded to bf16 where the
// modular chain rounds them, so the output equals the modular small-M forward bit for bit.
// Data written in this kernel (h2, y) is read through L2 (ld.global.cg), never a stale L1 line.
// Limits (host-checked): K % 32 == 0, I % 32 == 0, top_k <= 32.
// Measured (H200, bench/results/gpu-h200-session{4,5}-2026-11-28.md): with route+plan, 1.08x
// (qwen3-30b-a3b) and 1.19x (mixtral) the modular chain at 1 token, 44% / 82% of the floor: the weight
// stream is the limit (40-55% of DRAM peak; 16 warps per SM, register-bound). A two-stage register
// pipeline, L2 bulk prefetches, a cp.async shared-memory pipeline and early work claims were slower.
#include <algorithm>

#include "core/activation_math.h"
#include "cuda/cuda_util.h"
#include "cuda/kernels/kernels.h"
#include "cuda/kernels/launch.cuh"
#include "cuda/kernels/mma_util.cuh"
#include "cuda/kernels/topk_sum.cuh"

namespace fusedmoe::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kTile = 16;  // weight rows per A/B item, output columns per C item
constexpr int kU = 4;      // 16-byte chunks in flight per lane and weight row

__device__ inline int load_acquire(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// The whole block waits until *counter >= target.
__device__ inline void wait_for(const int* counter, int target) {
  if (threadIdx.x == 0)
    while (load_acquire(counter) < target) __nanosleep(64);
  __syncthreads();
}

// Counts one more finished item once every thread's writes are done; the fence releases them.
__device__ inline void signal_done(int* counter) {
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    atomicAdd(counter, 1);
  }
}

// One step of the k loop: U 16-byte chunks (ch0, ch0 + 4, ...) of this lane's two weight rows and
// of its NT token rows, loaded into registers, then multiplied into acc.
template <int NT, int U, bool kL2X>
struct Step {
  uint4 wa[U], wb[U], xv[NT][U];

  __device__ inline void load(const uint8_t* w0, const uint8_t* w1, const uint8_t* const (&x)[NT], int64_t ch0,
                              int64_t num_chunks) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t ch = ch0 + u * kWarps;
      wa[u] = ch < num_chunks ? load_streaming(w0 + ch * 64) : make_uint4(0, 0, 0, 0);
      wb[u] = ch < num_chunks ? load_streaming(w1 + ch * 64) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t ch = ch0 + u * kWarps;
        if (x[t] && ch < num_chunks)
          xv[t][u] = kL2X ? load_l2(x[t] + ch * 64) : __ldg(reinterpret_cast<const uint4*>(x[t] + ch * 64));
        else
          xv[t][u] = make_uint4(0, 0, 0, 0);
      }
  }

  __device__ inline void multiply(float (&acc)[NT][4]) const {
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
      for (int u = 0; u < U; ++u) mma_chunk<false>(acc[t], wa[u], wb[u], xv[t][u]);
  }
};

// 16 weight rows (this lane's rows gq and gq + 8 at w0 and w1, already offset by its 16 bytes
// of each 64-byte chunk) times NT tiles of 8 token rows (x[t], null past the expert's rows);
// returns the sums in warp 0's v (C fragment layout: v[t][0..1] row gq, v[t][2..3] row gq + 8,
// tokens 2cq and 2cq + 1 of tile t). kL2X: x was written by this kernel. Each acc[t] sums its
// chunks in ascending order, as small_m_gemm.cu does (bit-equal results).
template <int NT, bool kL2X>
__device__ inline void tile_gemm(const uint8_t* w0, const uint8_t* w1, const uint8_t* const (&x)[NT], int64_t K,
                                 float (&v)[NT][4], float (&partial)[kWarps][NT][4][32]) {
  const int warp = threadIdx.x >> 5;
  const int64_t num_chunks = K / 32;
  float acc[NT][4];
#pragma unroll
  for (int t = 0; t < NT; ++t)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[t][i] = 0.0f;
  for (int64_t ch0 = warp; ch0 < num_chunks; ch0 += kWarps * kU) {
    Step<NT, kU, kL2X> step;
    step.load(w0, w1, x, ch0, num_chunks);
    step.multiply(acc);
  }
  split_k_sum<kWarps, NT>(acc, partial, v);
}

// Warp 0 calls out(t, j, m) for each of its lane's C columns (tokens 2cq + j of tile t) that is a
// row of the expert (m < count).
template <int NT, class Out>
__device__ inline void for_each_row(int64_t tb, int64_t count, Out out) {
  if ((threadIdx.x >> 5) != 0) return;
  const int cq = threadIdx.x & 3;
#pragma unroll
  for (int t = 0; t < NT; ++t)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int64_t m = tb + t * 8 + 2 * cq + j;
      if (m < count) out(t, j, m);
    }
}

__device__ inline float round_bf16(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }

// A: h2 columns of one tile of expert e (rows [off, off + count) of the plan).
template <int NT>
__device__ void gemm1_item(const FusedDecode& f, const RowPlan& plan, int e, int tile,
                           float (&partial)[kWarps][NT][4][32]) {
  const int lane = threadIdx.x & 31, gq = lane >> 2, cq = lane & 3;
  const int64_t off = plan.offsets[e], count = plan.counts[e], K = f.K, I = f.I;
  const bool gated = f.act.kind != ActivationKind::relu2;
  const int64_t N1 = gated ? 2 * I : I;
  // This lane's two weight rows and the h2 column(s) they make.
  int64_t r0, r1, j0;
  if (!gated) {
    j0 = int64_t(tile) * 16 + gq;
    r0 = j0, r1 = j0 + 8;
  } else {
    j0 = int64_t(tile) * 8 + gq;
    const bool interleaved = f.act.kind == ActivationKind::swiglu_oai;
    r0 = interleaved ? 2 * j0 : j0;
    r1 = interleaved ? 2 * j0 + 1 : I + j0;
  }
  const uint8_t* w = reinterpret_cast<const uint8_t*>(f.w13 + e * N1 * K);
  const uint8_t* w0 = w + r0 * K * 2 + cq * 16;
  const uint8_t* w1 = w + r1 * K * 2 + cq * 16;
  const float b0 = f.b13 ? f.b13[e * N1 + r0] : 0.0f, b1 = f.b13 ? f.b13[e * N1 + r1] : 0.0f;
  for (int64_t tb = 0; tb < count; tb += NT * 8) {
    const uint8_t* x[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const int64_t m = tb + t * 8 + gq;
      x[t] = m < count ? reinterpret_cast<const uint8_t*>(f.x + int64_t(plan.row_token[off + m]) * K) + cq * 16
                       : nullptr;
    }
    float v[NT][4];
    tile_gemm<NT, false>(w0, w1, x, K, v, partial);
    for_each_row<NT>(tb, count, [&](int t, int j, int64_t m) {
      // The modular chain: GEMM1 rounds (sum + bias) to bf16, the activation kernel reads that.
      const float a0 = round_bf16(v[t][j] + b0), a1 = round_bf16(v[t][2 + j] + b1);
      bf16* h2_row = f.h2 + (off + m) * I;
      if (gated) {
        h2_row[j0] = __float2bfloat16_rn(gated_activation(f.act.kind, a0, a1, f.act.alpha, f.act.limit));
      } else {
        h2_row[j0] = __float2bfloat16_rn(relu2_activation(a0));
        h2_row[j0 + 8] = __float2bfloat16_rn(relu2_activation(a1));
      }
    });
  }
}

// B: y rows n0..n0+15 of expert e, once its h2 is complete.
template <int NT>
__device__ void gemm2_item(const FusedDecode& f, const RowPlan& plan, int slot, int e, int tile, int gemm1_tiles,
                           float (&partial)[kWarps][NT][4][32]) {
  const int lane = threadIdx.x & 31, gq = lane >> 2, cq = lane & 3;
  const int64_t off = plan.offsets[e], count = plan.counts[e], K = f.K, I = f.I, n0 = int64_t(tile) * kTile;
  const uint8_t* w = reinterpret_cast<const uint8_t*>(f.w2 + (e * K + n0) * I);
  wait_for(f.done_a + slot, gemm1_tiles);
  const uint8_t* w0 = w + gq * I * 2 + cq * 16;
  const uint8_t* w1 = w + (gq + 8) * I * 2 + cq * 16;
  const float b0 = f.b2 ? f.b2[e * K + n0 + gq] : 0.0f, b1 = f.b2 ? f.b2[e * K + n0 + gq + 8] : 0.0f;
  for (int64_t tb = 0; tb < count; tb += NT * 8) {
    const uint8_t* x[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const int64_t m = tb + t * 8 + gq;
      x[t] = m < count ? reinterpret_cast<const uint8_t*>(f.h2 + (off + m) * I) + cq * 16 : nullptr;
    }
    float v[NT][4];
    tile_gemm<NT, true>(w0, w1, x, I, v, partial);
    for_each_row<NT>(tb, count, [&](int t, int j, int64_t m) {
      f.y[(off + m) * K + n0 + gq] = __float2bfloat16_rn(v[t][j] + b0);
      f.y[(off + m) * K + n0 + gq + 8] = __float2bfloat16_rn(v[t][2 + j] + b1);
    });
  }
  signal_done(f.done_b + tile);
}

// C: output columns n0..n0+15 of every token, once every active expert's y has them.
__device__ void finalize_item(const FusedDecode& f, const RowPlan& plan, int tile, int n_active) {
  wait_for(f.done_b + tile, n_active);
  const int64_t K = f.K, n0 = int64_t(tile) * kTile;
  const int k = f.top_k;
  for (int64_t p = threadIdx.x; p < f.M * 2; p += kThreads) {
    const int64_t t = p >> 1, c = n0 + (p & 1) * 8;
    float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    add_weighted_rows8<true>(plan.slot_rows + t * k, f.topk_weights ? f.topk_weights + t * k : nullptr, k, f.y, K, c,
                             acc);
    store_bf16x8(acc, f.out + t * K + c);
  }
}

template <int NT>
__device__ __forceinline__ void fused_decode_body(const FusedDecode& f, const RowPlan& plan) {
  __shared__ float partial[kWarps][NT][4][32];
  __shared__ int item_of_block[2];  // this item and the next, alternating: one barrier per claim
  pdl_wait();
  // The active experts are a prefix of plan.active; every warp counts them.
  int n_active = 0;
  for (int base = 0; base < f.max_active; base += 32) {
    const int i = base + (threadIdx.x & 31);
    n_active += __popc(__ballot_sync(0xffffffffu, i < f.max_active && plan.active[i] >= 0));
  }
  const bool gated = f.act.kind != ActivationKind::relu2;
  const int t1 = static_cast<int>(gated ? f.I / 8 : f.I / 16), t2 = static_cast<int>(f.K / kTile);
  const int64_t num_a = int64_t(n_active) * t1, num_b = int64_t(n_active) * t2, total = num_a + num_b + t2;
  if (threadIdx.x == 0) item_of_block[0] = atomicAdd(f.counters, 1);
  __syncthreads();
  int64_t item = item_of_block[0];
  for (int slot_of_next = 1; item < total; slot_of_next ^= 1) {
    if (item < num_a) {
      const int slot = static_cast<int>(item / t1);
      gemm1_item<NT>(f, plan, plan.active[slot], static_cast<int>(item % t1), partial);
      signal_done(f.done_a + slot);
    } else if (item < num_a + num_b) {
      const int slot = static_cast<int>((item - num_a) / t2);
      gemm2_item<NT>(f, plan, slot, plan.active[slot], static_cast<int>((item - num_a) % t2), t1, partial);
    } else {
      finalize_item(f, plan, static_cast<int>(item - num_a - num_b), n_active);
    }
    // The next item is claimed only now: claiming it before running this one was slower (a block
    // then holds an item it cannot start; 42.1 -> 45.2 us for qwen3-30b-a3b at 1 token on H200).
    if (threadIdx.x == 0) item_of_block[slot_of_next] = atomicAdd(f.counters, 1);
    __syncthreads();
    item = item_of_block[slot_of_next];
  }
}

// __launch_bounds__ asks for 4 resident blocks: ptxas then issues all of a step's loads before
// its first mma (with the default it interleaved them, 2 in flight per lane: 6-13% slower at 1 token).
template <int NT>
__global__ void __launch_bounds__(kThreads, 4) fused_decode_kernel(FusedDecode f, RowPlan plan) {
  fused_decode_body<NT>(f, plan);
}

template <int NT>
int resident_blocks(int sm_count) {
  static const int per_sm = [] {
    int n = 0;
    FMOE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, fused_decode_kernel<NT>, kThreads, 0));
    return n;
  }();
  return per_sm * sm_count;
}

template <int NT>
void launch_typed(const FusedDecode& f, const RowPlan& plan, int sm_count, cudaStream_t s) {
  const int64_t t1 = f.act.kind != ActivationKind::relu2 ? f.I / 8 : f.I / 16, t2 = f.K / kTile;
  const int64_t max_items = int64_t(f.max_active) * (t1 + t2) + t2;
  const int64_t grid = std::min<int64_t>(max_items, resident_blocks<NT>(sm_count));
  launch(fused_decode_kernel<NT>, dim3(static_cast<unsigned>(grid)), dim3(kThreads), s, f, plan);
}

}  // namespace

int64_t fused_decode_counters(int max_active, int64_t K) { return 1 + max_active + K / kTile; }

void launch_fused_decode(const FusedDecode& f, const RowPlan& plan, int tile_tokens, int sm_count, cudaStream_t s) {
  FMOE_CHECK(f.K % 32 == 0 && f.I % 32 == 0, "the fused decode kernel needs hidden and intermediate sizes that are ",
             "multiples of 32, got ", f.K, " and ", f.I);
  FMOE_CHECK(f.top_k >= 1 && f.top_k <= 32, "the fused decode kernel handles top_k 1 to 32, got ", f.top_k);
  if (f.M == 0) return;  // no local expert (max_active 0) still runs the C items: the output is zero
  if (tile_tokens <= 8)
    launch_typed<1>(f, plan, sm_count, s);
  else
    launch_typed<2>(f, plan, sm_count, s);
}

}  // namespace fusedmoe::cuda
