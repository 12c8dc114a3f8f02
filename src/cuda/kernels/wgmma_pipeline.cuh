// The warp-specialized pipeline of the swap-AB wgmma grouped GEMMs (fp4_wgmma_gemm.cu, wgmma_grouped_gemm.cu):
// a producer warpgroup fills a ring of k-tile stages in shared memory (cp.async or TMA), two consumer warpgroups
// issue wgmma on them; mbarriers (a full and an empty one per stage) hand the stages over. Here: the barrier
// and proxy-fence helpers, the TMA copy, the named barriers of the consumers, the register hand-over between
// the roles, the epilogue that stores a consumer's accumulators (weight rows by token rows) as bf16 rows of
// Y through shared memory, and the persistent kernels' pieces (ring position, claim queue, claim-counter reset,
// per-device occupancy cache). sm_90a only.
#pragma once

#include <cuda_bf16.h>

#include <atomic>
#include <cstdint>

#include "core/activation_math.h"
#include "cuda/cuda_util.h"
#include "cuda/kernels/kernels.h"
#include "cuda/kernels/wgmma_util.cuh"

namespace fusedmoe::cuda {

inline constexpr int kWgmmaConsumers = 2;  // consumer warpgroups of a block (threads 0 .. 255)

__device__ inline uint32_t smem_addr(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

// mbarrier helpers (CTA scope).
__device__ inline void mbar_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}
// (bar: the barrier's shared-memory address.)
__device__ inline void mbar_wait(uint32_t bar, uint32_t parity) {
  uint32_t done;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
}
__device__ inline void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Arrives on the barrier and adds `bytes` to the transaction count its phase waits for (the TMA copies below).
__device__ inline void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
// The bytes the barrier's phase waits for, without arriving (the arrival comes later, mbar_arrive).
__device__ inline void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
// A 2-D TMA copy of the box at (c0, c1) (innermost coordinate first) of the tensor map into shared memory at
// dst; its bytes count towards the barrier's transaction (mbarrier complete_tx). tmap: the map's generic address
// (a __grid_constant__ kernel parameter).
__device__ inline void tma_load_2d(uint32_t dst, const void* tmap, int32_t c0, int32_t c1, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::
          "r"(dst),
      "l"(tmap), "r"(c0), "r"(c1), "r"(bar)
      : "memory");
}
// A 5-D TMA copy of the box at (c0, .., c4) (gated_rows_map), as tma_load_2d.
__device__ inline void tma_load_5d(uint32_t dst, const void* tmap, int32_t c0, int32_t c1, int32_t c2, int32_t c3,
                                   int32_t c4, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.5d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5, %6}],"
      " [%7];\n" ::"r"(dst),
      "l"(tmap), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(c4), "r"(bar)
      : "memory");
}
// The same copy multicast: the box lands at dst in every CTA of the cluster in cta_mask, and its bytes count towards
// the barrier at bar's offset in each of them.
__device__ inline void tma_load_2d_multicast(uint32_t dst, const void* tmap, int32_t c0, int32_t c1, uint32_t bar,
                                             uint16_t cta_mask) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster"
      " [%0], [%1, {%2, %3}], [%4], %5;\n" ::"r"(dst),
      "l"(tmap), "r"(c0), "r"(c1), "r"(bar), "h"(cta_mask)
      : "memory");
}
// The same two copies with an L2 cache policy (.L2::cache_hint; wgmma_grouped_gemm.cu's X boxes), and the
// evict_last policy they take.
__device__ inline void tma_load_2d_hinted(uint32_t dst, const void* tmap, int32_t c0, int32_t c1, uint32_t bar,
                                          uint64_t policy) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint"
      " [%0], [%1, {%2, %3}], [%4], %5;\n" ::"r"(dst),
      "l"(tmap), "r"(c0), "r"(c1), "r"(bar), "l"(policy)
      : "memory");
}
__device__ inline void tma_load_2d_multicast_hinted(uint32_t dst, const void* tmap, int32_t c0, int32_t c1,
                                                    uint32_t bar, uint16_t cta_mask, uint64_t policy) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster.L2::cache_hint"
      " [%0], [%1, {%2, %3}], [%4], %5, %6;\n" ::"r"(dst),
      "l"(tmap), "r"(c0), "r"(c1), "r"(bar), "h"(cta_mask), "l"(policy)
      : "memory");
}
__device__ inline uint64_t l2_evict_last_policy() {
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;\n" : "=l"(policy));
  return policy;
}

// Thread block clusters: the CTA's rank, the address of the same shared-memory location in the cluster's CTA
// `rank` (shared::cluster space), an arrival on a barrier there, a store there, a wait with cluster-scope acquire
// (for barriers that other CTAs' threads arrive on after their stores) and the cluster-wide barrier (every thread
// of every CTA; also orders this CTA's barrier initialization before its peers' use of them).
__device__ inline uint32_t cluster_rank() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
  return r;
}
__device__ inline uint32_t cluster_addr(uint32_t smem, uint32_t rank) {
  uint32_t a;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(a) : "r"(smem), "r"(rank));
  return a;
}
__device__ inline void mbar_arrive_cluster(uint32_t cluster_bar) {
  asm volatile("mbarrier.arrive.release.cluster.shared::cluster.b64 _, [%0];\n" ::"r"(cluster_bar) : "memory");
}
// The same with the default (CTA-scope release) semantics: for a barrier that only orders shared-memory reads by
// wgmma before a TMA copy that overwrites them.
__device__ inline void mbar_arrive_remote(uint32_t cluster_bar) {
  asm volatile("mbarrier.arrive.shared::cluster.b64 _, [%0];\n" ::"r"(cluster_bar) : "memory");
}
__device__ inline void st_cluster(uint32_t cluster_addr, int v) {
  asm volatile("st.shared::cluster.u32 [%0], %1;\n" ::"r"(cluster_addr), "r"(v) : "memory");
}
__device__ inline void mbar_wait_cluster(uint32_t bar, uint32_t parity) {
  uint32_t done;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
}
__device__ inline void cluster_sync() {
  asm volatile("barrier.cluster.arrive.release;\nbarrier.cluster.wait.acquire;\n" ::: "memory");
}

// Orders this thread's shared-memory writes through the generic proxy (cp.async, st.shared) before the async
// proxy's (wgmma's) reads that follow a synchronization with this thread.
__device__ inline void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
template <int kPending>
__device__ inline void cp_async_wait_group() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}
// A producer thread's part of a stage is complete (its copies have landed, cp_async_wait_group): the proxy
// fence on the writer's side, then the release on the stage's full barrier. (The consumers used to fence
// after every full wait: MEMBAR.ALL.CTA and FENCE.VIEW.ASYNC held about 16% of their main loop's stall
// samples. Moved here: 1.01-1.03x at 8192 tokens, and the consumers' waiting moved to the full barrier,
// H200.)
__device__ inline void publish_stage(uint32_t full) {
  fence_proxy_async();
  mbar_arrive(full);
}

// Stores four 8x8 bf16 matrices transposed: lane l's register i holds row l / 4, columns 2 (l % 4) and
// 2 (l % 4) + 1 of matrix i; row r of the transpose goes to the 16 bytes at lane 8 i + r's address.
__device__ inline void stmatrix_x4_trans(uint32_t addr, uint32_t r0, uint32_t r1, uint32_t r2, uint32_t r3) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(r0),
               "r"(r1), "r"(r2), "r"(r3)
               : "memory");
}
// Named barriers (0 is __syncthreads'): 1 for both consumer warpgroups, 2 and 3 for one of them.
__device__ inline void consumers_bar() { asm volatile("bar.sync 1, %0;\n" ::"n"(128 * kWgmmaConsumers) : "memory"); }
__device__ inline void warpgroup_bar(int wg) {
  if (wg == 0) asm volatile("bar.sync 2, 128;\n" ::: "memory");
  else asm volatile("bar.sync 3, 128;\n" ::: "memory");
}
__device__ inline uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// Register budgets of the warpgroup roles (setmaxnreg: the producer's 128 threads give registers to the consumers'
// 256, within the launch's total): without them ptxas fits the consumers in the launch's per-thread budget by
// serializing their wgmma.
template <uint32_t kRegs>
__device__ inline void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}
template <uint32_t kRegs>
__device__ inline void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

template <int kTok>
__device__ inline void fence_accumulators(float (&acc)[kTok / 2]) {
#pragma unroll
  for (int i = 0; i < kTok / 2; ++i) wgmma_fence_operand(acc[i]);
}

// A role's position in the stage ring, carried from one unit of work to the next (the persistent kernels): the
// stage, the parity of the ring's round and the k tiles it has passed so far.
template <int kStages>
struct Ring {
  int st = 0;
  uint32_t phase = 0;
  int passed = 0;
  __device__ void advance() {
    ++passed;
    if (++st == kStages) {
      st = 0;
      phase ^= 1;
    }
  }
};

// A persistent kernel's end: each of its `claimers` claiming threads counts itself done on work[1]; the last sets
// both counters back to 0 for the next launch (every claim has been made by then).
__device__ inline void reset_claim_counters(int* work, int claimers) {
  if (atomicAdd(&work[1], 1) == claimers - 1) {
    atomicExch(&work[0], 0);
    atomicExch(&work[1], 0);
  }
}

// GEMM2 beside GEMM1 (WgmmaOverlap; the bf16 wgmma kernels and the persistent fp4 one). GEMM1 lets the next launch
// start once its blocks have all started (pdl_launch_dependents after pdl_wait), so GEMM2's blocks take the SMs that
// GEMM1's blocks leave in its tail; once a unit's stores are issued, GEMM1 adds its h2 columns to its item's count with
// a release (bf16, signal_item: each consumer warpgroup's barrier, then one thread's red.release.gpu, as CUTLASS's
// generic barrier; fp4: the producer's leader after the unit's `taken` barrier, signal_unit); GEMM2's producer waits
// for the item's count to reach GEMM2's K with an acquire before it loads the item's rows by TMA (a proxy fence orders
// the generic writes before the async proxy's reads). GEMM1's blocks are all resident before GEMM2's first block starts
// and never wait on GEMM2, so the waits end. GEMM2 claims from its own counters (work_counters[3, 4]) and waits for
// GEMM1's grid (pdl_wait) before it ends, so that the launches after it see every kernel before them complete, as
// without it. A wait that has not ended after 10 s traps (a kernel error, not a hang).
constexpr int kSecondGemmCounters = 3;
__device__ inline void add_release(int32_t* count, int cols) {
  asm volatile("red.release.gpu.global.add.s32 [%0], %1;\n" ::"l"(count), "r"(cols) : "memory");
}
__device__ inline void signal_item(int32_t* count, int cols, int wg) {
  warpgroup_bar(wg);  // the warpgroup's stores of the unit are issued
  if ((threadIdx.x & 127) == 0) add_release(count, cols);
}
__device__ inline void await_item(const int32_t* count, int64_t target) {
  uint64_t start = 0;
  for (int polls = 0;; ++polls) {
    int32_t v;
    asm volatile("ld.acquire.gpu.global.s32 %0, [%1];\n" : "=r"(v) : "l"(count) : "memory");
    if (v >= target) break;
    uint64_t now;
    asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(now));
    if (polls == 0) start = now;
    else if (now - start > 10'000'000'000ull) __trap();
    __nanosleep(128);
  }
  asm volatile("fence.proxy.async.global;\n" ::: "memory");
}
// The persistent kernels' groups of blocks the current device holds at once: count() the first time for each
// device, the cached answer after (known: the kernel's own cache; what: the kernel's name for the errors).
inline constexpr int kMaxDevices = 64;
template <class F>
int once_per_device(std::atomic<int> (&known)[kMaxDevices], const char* what, F&& count) {
  int device = 0;
  FMOE_CUDA_CHECK(cudaGetDevice(&device));
  FMOE_CHECK(device < kMaxDevices, what, " supports devices 0 .. ", kMaxDevices - 1, ", got ", device);
  if (const int n = known[device].load(std::memory_order_relaxed)) return n;
  const int n = count(device);
  FMOE_CHECK(n > 0, what, "'s blocks do not fit on device ", device);
  known[device].store(n, std::memory_order_relaxed);
  return n;
}

// The persistent kernels' hand-out of claimed units from the producer to the consumers (wgmma_grouped_gemm.cu
// describes the protocol): two slots, slot n % 2 for a block's n-th claim; `posted` completes when the producer has
// written the slot, `taken` when the consumers are done with it.
template <class T>
struct ClaimQueue {
  T unit[2];
  uint64_t posted[2], taken[2];
};

// A block's rows of a plan item (items of tile_tokens rows; an expert's last 1 .. tail_tokens rows ride as a tail
// on the full item before them): its expert, first row and row count, rows = 0 when it has none (past the last
// item, or an item that is the previous one's tail).
struct ItemRows {
  int expert;
  int64_t first, rows;
};
__device__ inline ItemRows item_rows(PlanItem item, int tile_tokens, int tail_tokens) {
  if (item.expert < 0) return {0, 0, 0};
  const int64_t left = int64_t(item.count) - item.first;  // the expert's rows from the item's first
  if (item.first > 0 && left <= tail_tokens) return {0, 0, 0};
  return {item.expert, int64_t(item.offset) + item.first, left <= tile_tokens + tail_tokens ? left : tile_tokens};
}

// The weight row in block row b of a block from GEMM1 row n0 where GEMM1 carries the gated activation (the fp4 and bf16
// wgmma kernels' instances for SmallMGemm::act_epilogue; else it is n0 + b): the gate (b % 16 < 8) or the up row of
// h2 column j = n0 / 2 + 8 (b / 16) + b % 8 — w13's rows j and I + j, or 2j and 2j + 1 for swiglu_oai —, so that a
// consumer lane's accumulator rows g and g + 8 (wgmma's m64 layout) are one column's gate and up sums for the same
// tokens (store_gated_tiles pairs them); N (no row) past h2's last column. A block of 128 T rows covers 64 T columns
// of h2; the grid and the units stay GEMM1's. In 32 bits (the launches check N < 2^31).
__device__ __forceinline__ int64_t gated_block_row(const SmallMGemm& g, int64_t n0, int b) {
  const int N = static_cast<int>(g.N), I = N >> 1, j = (static_cast<int>(n0) >> 1) + 8 * (b >> 4) + (b & 7);
  const int up = (b >> 3) & 1;
  if (j >= I) return N;
  return g.act.kind == ActivationKind::swiglu_oai ? 2 * j + up : j + (up ? I : 0);
}

// The bias of a consumer lane's weight rows, those of its block rows row0 + 64 t and 8 below: weight row
// row_of(block row) (0 past N or without a bias).
template <int kT, class RowOf>
__device__ inline void load_row_bias(const SmallMGemm& g, int e, int row0, RowOf row_of, float (&bias)[kT][2]) {
#pragma unroll
  for (int t = 0; t < kT; ++t)
#pragma unroll
    for (int hi = 0; hi < 2; ++hi) {
      const int64_t n = row_of(row0 + 64 * t + 8 * hi);
      bias[t][hi] = g.bias && n < g.N ? g.bias[e * g.N + n] : 0.0f;
    }
}
// The same for a block from weight row n0 on, its rows in order: n0 + row0 + 64 t and 8 below.
template <int kT>
__device__ inline void load_row_bias(const SmallMGemm& g, int e, int64_t n0, int row0, float (&bias)[kT][2]) {
#pragma unroll
  for (int t = 0; t < kT; ++t)
#pragma unroll
    for (int hi = 0; hi < 2; ++hi) {
      const int64_t n = n0 + row0 + 64 * t + 8 * hi;
      bias[t][hi] = g.bias && n < g.N ? g.bias[e * g.N + n] : 0.0f;
    }
}

// Zeroes a consumer's accumulators (kTok token columns, then kTail) and pins them for the first wgmma.
template <int kTok, int kTail, int kT, int kTailAcc>
__device__ inline void zero_accumulators(float (&acc)[kT][kTok / 2], float (&tail)[kT][kTailAcc]) {
#pragma unroll
  for (int t = 0; t < kT; ++t) {
#pragma unroll
    for (int i = 0; i < kTok / 2; ++i) acc[t][i] = 0.0f;
    fence_accumulators<kTok>(acc[t]);
#pragma unroll
    for (int i = 0; i < kTailAcc; ++i) tail[t][i] = 0.0f;
    if constexpr (kTail > 0) fence_accumulators<kTail>(tail[t]);
  }
}

// Waits for the consumer's last wgmma and pins its accumulators (kTok token columns, then kTail).
template <int kTok, int kTail, int kT, int kTailAcc>
__device__ inline void drain_accumulators(float (&acc)[kT][kTok / 2], float (&tail)[kT][kTailAcc]) {
  wgmma_wait<0>();
#pragma unroll
  for (int t = 0; t < kT; ++t) {
    fence_accumulators<kTok>(acc[t]);
    if constexpr (kTail > 0) fence_accumulators<kTail>(tail[t]);
  }
}

// The persistent fp4 kernel's GEMM1 epilogue with silu_mul or swiglu_oai (SmallMGemm::act_epilogue; its block rows
// paired by gated_block_row, fp4_wgmma_gemm.cu): a consumer lane's accumulator rows g and g + 8 of tile t are the gate
// and up sums of h2 column j_base + 32 t + 8 warp + g for the same tokens. Each sum is rounded as GEMM1's store would
// (times gs, plus its row's bias, bf16), the pair goes through sigmoid_gated_activation (the activation kernel's bits,
// no switch) and is rounded to bf16; stmatrix stores the values transposed into 64-byte token rows of buf (a warp's 8
// columns are its 16-byte chunk, at chunk warp ^ (row / 2 % 4): conflict-free), and they go out into h2 [R, N / 2]
// as 16-byte stores of 8 columns (N % 16 == 0), in passes of kPass tokens. The activation runs on the accumulators:
// staging GEMM1's bf16 tile through buf and activating it from there (a loop) made the kernel 29 us slower on
// qwen3-nvfp4's GEMM1 at 8192 tokens (H200).
template <int kTok, int kTail, int kT, int kTailAcc, int kPass>
__device__ __forceinline__ void store_gated_tiles(const SmallMGemm& g, const float (&acc)[kT][kTok / 2],
                                                  const float (&tail)[kT][kTailAcc], const float (&bias)[kT][2],
                                                  float gs, uint8_t* buf, int64_t j_base, int64_t rows,
                                                  int64_t first_row) {
  constexpr int kN = kTok + kTail;
  static_assert(kPass % 32 == 0 && kTok % 32 == 0 && kTail % 32 == 0);
  const int tid = threadIdx.x & 127, wg = threadIdx.x >> 7, warp = tid >> 5, lane = tid & 31;
  const int64_t I = g.N / 2;
  const Activation act = g.act;
  const auto chunk = [](int m, int c) { return uint32_t(m) * 64 + (uint32_t(c ^ ((m >> 1) & 3)) << 4); };
  // The pair rounded to bf16 by one packed conversion (two conversions took a quarter-rate pipe slot each).
  const auto value = [&](float gate_sum, float up_sum, int t) {
    const __nv_bfloat162 gu = __floats2bfloat162_rn(gate_sum * gs + bias[t][0], up_sum * gs + bias[t][1]);
    return sigmoid_gated_activation(act.kind, __low2float(gu), __high2float(gu), act.alpha, act.limit);
  };
  // stmatrix: lane l addresses row l % 8 of matrix l / 8, i.e. token 8 (j + l / 8) + l % 8, chunk `warp`.
  const uint32_t buf_a = smem_addr(buf);
  const int q = lane >> 3, r = lane & 7;
  // Tile t's tokens [m0, m1) into buf: 32 tokens (accumulators 4 j .. 4 j + 15) a stmatrix.
  const auto stage = [&](int t, int m0, int m1) {
#pragma unroll
    for (int j = m0 / 8; j < m1 / 8; j += 4) {
      uint32_t v[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float* a = j + i < kTok / 8 ? &acc[t][4 * (j + i)] : &tail[t][4 * (j + i - kTok / 8)];
        v[i] = pack_bf16x2(value(a[0], a[2], t), value(a[1], a[3], t));
      }
      stmatrix_x4_trans(buf_a + chunk(8 * (j + q) + r - m0, warp), v[0], v[1], v[2], v[3]);
    }
  };
  // Thread tid stores chunk c = tid % 4 (columns 8c .. 8c + 7 of the tile) of tokens m0 + tid / 4 + 32 k.
  const int c = tid & 3;
  const auto store = [&](int t, int m0, int m1) {
    const int64_t j = j_base + 32 * t + 8 * c;
#pragma unroll
    for (int k = 0; k < (m1 - m0) / 32; ++k) {
      const int m = m0 + (tid >> 2) + 32 * k, bm = m - m0;
      if (m >= rows || j >= I) continue;
      const uint4 v = *reinterpret_cast<const uint4*>(buf + chunk(bm, c));
      *reinterpret_cast<uint4*>(g.y + (first_row + m) * I + j) = v;
    }
  };
#pragma unroll
  for (int t = 0; t < kT; ++t)
#pragma unroll
    for (int m0 = 0; m0 < kN; m0 += kPass) {
      const int m1 = m0 + kPass < kN ? m0 + kPass : kN;
      warpgroup_bar(wg);  // the previous pass's stores have read buf
      stage(t, m0, m1);
      warpgroup_bar(wg);  // the pass is in buf
      store(t, m0, m1);
    }
}

// A consumer warpgroup's epilogue: its kT m64 tiles of accumulators (weight rows n_base + 64 t + 0..63 by
// the item's tokens: kTok in acc, then kTail in tail), times gs plus the rows' bias, as bf16 into Y rows
// first_row .. first_row + rows - 1. The tiles go through buf in shared memory, transposed by stmatrix
// (a token m at 128 m: its 64 weight rows, 16-byte chunk c at c ^ (m % 8), conflict-free), then out as 16-byte
// stores of a token's 8 consecutive weight rows (N % 8 == 0, Y 16-byte aligned). kChunk = 0: buf holds every
// tile at once (tile t's tokens from (kTok + kTail) t on; one barrier); else passes of kChunk tokens of one tile
// through kChunk 128-byte rows of buf, which the warpgroup's previous epilogue may still be reading.
template <int kTok, int kTail, int kT, int kTailAcc, int kChunk = 0>
__device__ __forceinline__ void store_tiles(const SmallMGemm& g, const float (&acc)[kT][kTok / 2],
                                            const float (&tail)[kT][kTailAcc], const float (&bias)[kT][2], float gs,
                                            uint8_t* buf, int64_t n_base, int64_t rows, int64_t first_row) {
  constexpr int kN = kTok + kTail;
  static_assert(kChunk % 16 == 0 && kN % 16 == 0);
  const int tid = threadIdx.x & 127, wg = threadIdx.x >> 7, warp = tid >> 5, lane = tid & 31;
  const int64_t N = g.N;
  // stmatrix: lane l addresses row l % 8 of matrix l / 8, i.e. token 8 (j + l / 16) + l % 8 and the warp's
  // weight rows 8 ((l / 8) % 2) .. + 7, chunk 2 warp + (l / 8) % 2 of the token's 128 bytes.
  const int q = lane >> 3, r = lane & 7;
  const uint32_t st_addr =
      smem_addr(buf) + uint32_t(8 * (q >> 1) + r) * 128 + (uint32_t((2 * warp + (q & 1)) ^ r) << 4);
  // Tile t's tokens [m0, m1) into buf from token row b on.
  const auto stage = [&](int t, int m0, int m1, int b) {
#pragma unroll
    for (int j = m0 / 8; j < m1 / 8; j += 2) {  // tokens 8 j .. 8 j + 15: accumulators 4 j .. 4 j + 7
      const float* a0 = j < kTok / 8 ? &acc[t][4 * j] : &tail[t][4 * (j - kTok / 8)];
      const float* a1 = a0 + 4;
      stmatrix_x4_trans(st_addr + uint32_t(b + 8 * j - m0) * 128,
                        pack_bf16x2(a0[0] * gs + bias[t][0], a0[1] * gs + bias[t][0]),
                        pack_bf16x2(a0[2] * gs + bias[t][1], a0[3] * gs + bias[t][1]),
                        pack_bf16x2(a1[0] * gs + bias[t][0], a1[1] * gs + bias[t][0]),
                        pack_bf16x2(a1[2] * gs + bias[t][1], a1[3] * gs + bias[t][1]));
    }
  };
  // Thread tid stores chunk c = tid % 8 (weight rows 8 c .. 8 c + 7) of tokens m0 + tid / 8 + 16 k.
  const int c = tid & 7;
  const auto store = [&](int t, int m0, int m1, int b) {
    const int64_t n = n_base + 64 * t + 8 * c;
#pragma unroll
    for (int k = 0; k < (m1 - m0) / 16; ++k) {
      const int m = m0 + (tid >> 3) + 16 * k, bm = b + m - m0;
      if (m >= rows || n >= N) continue;
      const uint4 v = *reinterpret_cast<const uint4*>(buf + bm * 128 + ((c ^ (bm & 7)) << 4));
      *reinterpret_cast<uint4*>(g.y + (first_row + m) * N + n) = v;
    }
  };
  if constexpr (kChunk == 0) {
#pragma unroll
    for (int t = 0; t < kT; ++t) stage(t, 0, kN, kN * t);
    warpgroup_bar(wg);  // the tiles are in buf
#pragma unroll
    for (int t = 0; t < kT; ++t) store(t, 0, kN, kN * t);
  } else {
#pragma unroll
    for (int t = 0; t < kT; ++t)
#pragma unroll
      for (int m0 = 0; m0 < kN; m0 += kChunk) {
        warpgroup_bar(wg);  // the previous pass's stores have read buf
        stage(t, m0, m0 + kChunk < kN ? m0 + kChunk : kN, 0);
        warpgroup_bar(wg);  // the pass is in buf
        store(t, m0, m0 + kChunk < kN ? m0 + kChunk : kN, 0);
      }
  }
}

}  // namespace fusedmoe::cuda
