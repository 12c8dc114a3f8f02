// Fused decode kernel of the CUDA experts (bf16 weights, bf16 activations): after the kernel that
// builds the row plan (the monolithic route+plan kernel, or the modular plan kernel), this one launch runs
// GEMM1 with the activation in its epilogue, GEMM2 and (monolithic: FusedDecode::out set) the weighted
// top-k reduce. It works on the plan's work items (RowPlan::items, fused_decode_item_rows(M) rows each: an
// expert's rows, all of them unless a token repeats an id). Its own items, taken in order from an atomic
// counter:
//   A (plan item i, h2 columns j0..): 16 w13 rows — for a gated activation 8 gate rows and
//     their 8 up rows, so each lane holds a gate/up pair of the same column in its accumulators;
//     relu2: 16 plain rows — times the plan item's token rows, then bias, activation, bf16 h2;
//     then done_a[i] += 1.
//   B (plan item i, w2 rows n0..n0+15): waits for done_a[i] to reach the A tiles of plan item i
//     (the producer waits, see below), then y rows (+ bias) in bf16; done_b[n0/16] += 1.
//   C (output columns n0..n0+15; only with out set): waits for done_b[n0/16] to count every plan item,
//     then out[t] = bf16(sum over slots j in order of w[t, j] * y[row of (t, j)]) — finalize.cu's sum.
// Without out the modular experts return y (rows in plan order) for their PrepareFinalize to reduce.
// Items are taken in order, so an item only waits on items taken before it by running blocks,
// which never wait on it: no deadlock, whatever blocks are resident (a block runs its items in the
// order it took them). The counters (the work counter, done_a, done_b) are zeroed by the kernel that
// builds the plan just before.
// Block: 4 consumer warps and a producer warp, 4 blocks an SM. The producer warp takes the items
// (the next claim in flight while it copies the present one) and copies each one's 16 weight rows
// into a ring of shared-memory stages (3, or 2 for items of 16+ rows: stages_for), 1 KiB of every row a
// stage, by 1-D bulk copies (TMA; a
// full and an empty mbarrier per stage, the item's index beside the stage); the consumers multiply
// from the ring. A B item's first stage is marked full only once its plan item's h2 is complete: the
// producer polls done_a after issuing that stage's copies, so the weights stream in meanwhile and
// the consumers never poll (session 38: a poll and a consumer barrier per B item cost ~0.8 us each
// at qwen3-30b-a3b's 8 tokens, the blocks' trace showed). The plan's tables
// (each plan item's expert, rows and first row, each row's token) are copied to shared memory once per block.
// The GEMM tiles are small_m_gemm.cu's (swap-AB mma.sync m16n8k16, 4 warps splitting k in the
// same chunk order, reduced in the same warp order), and h2 and y are rounded to bf16 where the
// modular chain rounds them, so the output equals the modular small-M forward bit for bit.
// Data written in this kernel (h2, y) is read through L2 (ld.global.cg), never a stale L1 line.
// Limits (host-checked): K % 32 == 0, I % 32 == 0, top_k <= 32, M <= 64 (an item's rows in registers).
// Measurements behind this shape, and what was tried and dropped: docs/KERNEL_NOTES.md (decode_fused.cu).
#include <algorithm>

#include "core/activation_math.h"
#include "cuda/cuda_util.h"
#include "cuda/kernels/kernels.h"
#include "cuda/kernels/launch.cuh"
#include "cuda/kernels/mma_util.cuh"
#include "cuda/kernels/wgmma_pipeline.cuh"
#include "cuda/kernels/topk_sum.cuh"

namespace fusedmoe::cuda {
namespace {

constexpr int kWarps = 4;                  // consumer warps (split k between them, as small_m_gemm.cu does)
constexpr int kConsumers = kWarps * 32;    // threads 0 .. 127; the producer warp is threads 128 .. 159
constexpr int kThreads = kConsumers + 32;
constexpr int kTile = 16;                  // weight rows per A/B item, output columns per C item

// Blocks per SM and the ring of each: stages of 16 weight rows x kChunkBytes, rows padded by 16 bytes (the
// 8 rows a warp's lanes read start on 8 bank groups). kChunkBytes is a multiple of 4 64-byte chunks, so warp w's
// chunks of k are those == w (mod 4) in every stage. Measured (H200, session 37, timelines of mixtral-8x7b and
// qwen3-30b-a3b at 1 and 8 tokens on an earlier build of this design): against 4 blocks of 2 such stages, 1 block
// of 6 stages of 2 KiB rows was 1.28-1.82x slower (its one consumer group ran each item's latencies in turn) and
// 2 blocks of 3 stages of 2 KiB 1.01-1.16x slower; a third stage at 4 blocks: 1.00-1.02x faster (A/B).
constexpr int kBlocksPerSm = 4;
constexpr int kChunkBytes = 1024;
constexpr int kRowStride = kChunkBytes + 16;
constexpr int kStageBytes = kTile * kRowStride;

// The ring's stages for items of 8 NT rows: 3 for 8-row items; 2 from 16 rows (9 tokens) on, where 4 rings of 3
// stages left L1 too small for the token rows that every A item re-reads (52% hits at mixtral-8x7b's 16 tokens,
// ncu): mixtral-8x7b 1.021x / 1.026x faster at 12 / 16 tokens with 2, and 0.995-0.997x at 4 / 8 (H200, session 42,
// same-run A/B; bench/results/gpu-h200-session42-2026-12-02.md).
constexpr int stages_for(int nt) { return nt >= 2 ? 2 : 3; }

// Shared memory after the stages: their barriers and the item each holds (written by the producer), then the
// split-k partial sums, then the plan's tables. (Not wgmma_pipeline.cuh's Ring, a role's position: this one is the
// ring's shared-memory barriers, and the roles keep their stage and phase in registers.)
template <int S>
struct StageRing {
  uint64_t full[S], empty[S];
  int64_t item[S];
  // Moves to the next stage, flipping the phase on the wrap.
  __device__ static void next(int& stage, uint32_t& phase) {
    if (++stage == S) stage = 0, phase ^= 1;
  }
};
template <int NT>
using RingOf = StageRing<stages_for(NT)>;
template <int NT>
constexpr size_t fixed_smem_bytes() {
  return size_t(stages_for(NT)) * kStageBytes + sizeof(RingOf<NT>) + sizeof(float) * kWarps * NT * 4 * 32;
}

// The plan as the items need it, copied to shared memory once per block (no dependent global reads per item):
// per plan item ("slot") its expert, rows and first row; per row its token.
struct Tables {
  int *e, *count, *off, *token;  // [slots] x 3, then [rows]

  __device__ Tables(int* at, int slots) : e(at), count(at + slots), off(at + 2 * slots), token(at + 3 * slots) {}
  static int64_t ints(int slots, int rows) { return 3 * int64_t(slots) + rows; }
  // The whole block; n_items: the plan's work items. Item i holds rows first .. first + item_rows - 1 of its
  // expert (fewer at the expert's end). Reads only the plan rows in use (the items' rows are rows 0 .. end - 1,
  // in item order).
  __device__ void load(const RowPlan& plan, int n_items) {
    for (int i = threadIdx.x; i < n_items; i += blockDim.x) {
      const PlanItem item = plan.items[i];
      e[i] = item.expert;
      count[i] = min(plan.item_rows, item.count - item.first);
      off[i] = item.offset + item.first;
    }
    __syncthreads();
    const int end = n_items > 0 ? off[n_items - 1] + count[n_items - 1] : 0;
    for (int i = threadIdx.x; i < end; i += blockDim.x) token[i] = plan.row_token[i];
    __syncthreads();
  }
};

__device__ inline int load_acquire(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// The consumer warps' barrier (named barrier 1; the producer warp never joins it).
struct ConsumerSync {
  __device__ void operator()() const { asm volatile("bar.sync 1, %0;\n" ::"n"(kConsumers) : "memory"); }
};

// One thread waits until *counter >= target (acquire, gpu scope).
__device__ inline void poll_until(const int* counter, int target) {
  while (load_acquire(counter) < target) __nanosleep(64);
}
// The consumers wait until *counter >= target.
__device__ inline void wait_for(const int* counter, int target) {
  if (threadIdx.x == 0) poll_until(counter, target);
  ConsumerSync{}();
}

// Counts one more finished item once every consumer's writes are done: the barrier orders them before
// thread 0's release (gpu scope), which wait_for's acquire pairs with.
__device__ inline void signal_done(int* counter) {
  ConsumerSync{}();
  if (threadIdx.x == 0) asm volatile("red.release.gpu.global.add.s32 [%0], 1;\n" ::"l"(counter) : "memory");
}

// A 1-D bulk copy (TMA) of `bytes` (a multiple of 16) from global to shared memory; the bytes count
// towards the barrier's transaction.
__device__ inline void bulk_copy(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
               "l"(src), "r"(bytes), "r"(bar)
               : "memory");
}
__device__ inline uint4 load_shared(uint32_t addr) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];\n" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(addr));
  return v;
}

// The work items in claim order: A (GEMM1 tiles, expert-major), B (GEMM2 tiles), C (reduce columns).
struct Work {
  enum Kind { A, B, C, End } kind;
  int slot, tile;  // C: tile = the output column tile
};
struct Items {
  bool gated;
  int t1, t2, n_slots;  // A tiles per plan item, B tiles per plan item (= C items)
  int64_t num_ab, total;

  __device__ Items(const FusedDecode& f, int slots) {
    gated = f.act.kind != ActivationKind::relu2;
    n_slots = slots;
    t1 = static_cast<int>(gated ? f.I / 8 : f.I / 16);
    t2 = static_cast<int>(f.K / kTile);
    num_ab = int64_t(n_slots) * (t1 + t2);
    total = num_ab + (f.out ? t2 : 0);
  }
  // Claim q: every A item (slot by slot), every B item, the C items. (Each slot's B items right after the next
  // slot's A items was 1.3-1.7x slower at qwen3-30b-a3b 2-8 tokens: the B items then wait on A items just claimed.)
  __device__ Work at(int64_t q) const {
    if (q >= total) return {Work::End, 0, 0};
    if (q >= num_ab) return {Work::C, 0, static_cast<int>(q - num_ab)};
    const int64_t num_a = int64_t(n_slots) * t1;
    if (q < num_a) return {Work::A, static_cast<int>(q / t1), static_cast<int>(q % t1)};
    return {Work::B, static_cast<int>((q - num_a) / t2), static_cast<int>((q - num_a) % t2)};
  }
  // Bytes of each weight row of the work (0: a C item or the end).
  __device__ int64_t row_bytes(const FusedDecode& f, const Work& w) const {
    return w.kind == Work::A ? f.K * 2 : w.kind == Work::B ? f.I * 2 : 0;
  }
};
// The stages an item's rows take in the ring (at least 1: a C item's header).
__device__ inline int chunks_of(int64_t bytes) {
  return bytes == 0 ? 1 : static_cast<int>((bytes + kChunkBytes - 1) / kChunkBytes);
}

// Row r (0..15) of an A item's tile: for a gated activation rows 0-7 are gate rows and 8-15 their up
// rows (the lane holding row g in its accumulators holds row g + 8 too); relu2: 16 plain rows.
__device__ inline int64_t gemm1_row(const FusedDecode& f, int tile, int r) {
  if (f.act.kind == ActivationKind::relu2) return int64_t(tile) * 16 + r;
  const int64_t j = int64_t(tile) * 8 + (r & 7);
  if (f.act.kind == ActivationKind::swiglu_oai) return 2 * j + (r >> 3);  // interleaved gate/up
  return r < 8 ? j : f.I + j;
}

// The producer warp: claims items in order (the next claim is in flight while it copies the present item) and
// copies each one's 16 weight rows into the ring, a chunk of every row per stage (lanes 0..15 a row each), with
// the item beside the stage. A C item, and the end (item == total), take one stage with no bytes.
template <class R>
__device__ void produce(const FusedDecode& f, const Tables& tab, const Items& it, uint8_t* stages, R& ring) {
  const int lane = threadIdx.x & 31;
  int stage = 0;
  uint32_t phase = 0;
  int64_t next = lane == 0 ? atomicAdd(f.counters, 1) : 0;
  for (;;) {
    int64_t item = std::min<int64_t>(__shfl_sync(0xffffffffu, next, 0), it.total);
    if (lane == 0 && item < it.total) next = atomicAdd(f.counters, 1);  // read at the next turn
    const Work w = it.at(item);
    const int64_t bytes = it.row_bytes(f, w);
    const uint8_t* row = nullptr;  // this lane's weight row
    if (bytes > 0 && lane < kTile) {
      const int64_t e = tab.e[w.slot], n1 = it.gated ? 2 * f.I : f.I;
      row = w.kind == Work::A
                ? reinterpret_cast<const uint8_t*>(f.w13 + (e * n1 + gemm1_row(f, w.tile, lane)) * f.K)
                : reinterpret_cast<const uint8_t*>(f.w2 + (e * f.K + int64_t(w.tile) * kTile + lane) * f.I);
    }
    const int n = chunks_of(bytes);
    for (int c = 0; c < n; ++c) {
      const uint32_t full = smem_addr(&ring.full[stage]);
      mbar_wait(smem_addr(&ring.empty[stage]), phase ^ 1);
      const uint32_t part =
          static_cast<uint32_t>(std::min<int64_t>(kChunkBytes, bytes - int64_t(c) * kChunkBytes));
      // A B item's first stage also waits for the expert's h2: its arrival comes once every A item of the
      // expert has signalled, after the copies are on their way.
      const bool h2_gate = w.kind == Work::B && c == 0;
      if (lane == 0) {
        ring.item[stage] = item;
        if (h2_gate)
          mbar_expect_tx(full, part * kTile);
        else if (bytes > 0)
          mbar_arrive_expect_tx(full, part * kTile);
        else
          mbar_arrive(full);
      }
      if (row)
        bulk_copy(smem_addr(stages + stage * kStageBytes + lane * kRowStride), row + int64_t(c) * kChunkBytes,
                  part, full);
      if (h2_gate) {
        if (lane == 0) {
          poll_until(f.done_a + w.slot, it.t1);
          mbar_arrive(full);  // releases (cta) what the acquire (gpu) saw to the consumers' wait on the stage
        }
        __syncwarp();
      }
      R::next(stage, phase);
    }
    if (item == it.total) return;
  }
}

// Warp 0's lanes: for each C column of its fragments (tokens 2cq + j of tile t) that is a row of the expert.
template <int NT, class Out>
__device__ inline void for_each_row(int64_t count, Out out) {
  if ((threadIdx.x >> 5) != 0) return;
  const int cq = threadIdx.x & 3;
#pragma unroll
  for (int t = 0; t < NT; ++t)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int64_t m = t * 8 + 2 * cq + j;
      if (m < count) out(t, j, m);
    }
}

__device__ inline float round_bf16(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }

// The consumers' side of a GEMM item: its chunks, stage by stage, times the expert's token rows (x[t]: this
// lane's 16 bytes of token row 8t + gq, null past the expert's rows); warp 0 gets the sums (C fragment layout:
// v[t][0..1] weight row gq, v[t][2..3] row gq + 8). Warp w multiplies the 64-byte chunks w, w + 4, ... of k
// in ascending order and the warps' sums are added in warp order: small_m_gemm.cu's order, so the bits are
// the same.
template <int NT, bool kL2X>
__device__ void gemm_item(uint8_t* stages, RingOf<NT>& ring, int& stage, uint32_t& phase, int64_t row_bytes,
                          const uint8_t* const (&x)[NT], float (&partial)[kWarps][NT][4][32], float (&v)[NT][4]) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gq = lane >> 2, cq = lane & 3;
  constexpr int kU = NT >= 4 ? 1 : 4 / NT;  // chunks in flight per warp
  float acc[NT][4];
#pragma unroll
  for (int t = 0; t < NT; ++t)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[t][i] = 0.0f;
  const int n = chunks_of(row_bytes);
  for (int c = 0; c < n; ++c) {
    if (c > 0) mbar_wait(smem_addr(&ring.full[stage]), phase);
    const int local = static_cast<int>(std::min<int64_t>(kChunkBytes, row_bytes - int64_t(c) * kChunkBytes) / 64);
    const uint32_t base = smem_addr(stages + stage * kStageBytes) + gq * kRowStride + cq * 16;
    const int64_t k0 = int64_t(c) * kChunkBytes;
    for (int l0 = warp; l0 < local; l0 += kWarps * kU) {
      uint4 wa[kU], wb[kU], xv[NT][kU];
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        const int l = l0 + u * kWarps;
        const bool in = l < local;
        wa[u] = in ? load_shared(base + l * 64) : make_uint4(0, 0, 0, 0);
        wb[u] = in ? load_shared(base + 8 * kRowStride + l * 64) : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int t = 0; t < NT; ++t) {
          if (in && x[t]) {
            const uint8_t* p = x[t] + k0 + l * 64;
            xv[t][u] = kL2X ? load_l2(p) : __ldg(reinterpret_cast<const uint4*>(p));
          } else {
            xv[t][u] = make_uint4(0, 0, 0, 0);
          }
        }
      }
#pragma unroll
      for (int t = 0; t < NT; ++t)
#pragma unroll
        for (int u = 0; u < kU; ++u) mma_chunk<false>(acc[t], wa[u], wb[u], xv[t][u]);
    }
    mbar_arrive(smem_addr(&ring.empty[stage]));  // every consumer thread, after its reads
    RingOf<NT>::next(stage, phase);
  }
  split_k_sum<kWarps, NT>(acc, partial, v, ConsumerSync{});
}

// A: h2 columns of one tile of the expert in slot `slot` (its rows [off, off + count) of the plan).
template <int NT>
__device__ void gemm1_item(const FusedDecode& f, const Tables& tab, int slot, int tile, uint8_t* stages,
                           RingOf<NT>& ring, int& stage, uint32_t& phase, float (&partial)[kWarps][NT][4][32]) {
  const int lane = threadIdx.x & 31, gq = lane >> 2, cq = lane & 3;
  const int64_t e = tab.e[slot], count = tab.count[slot], off = tab.off[slot], K = f.K, I = f.I;
  const bool gated = f.act.kind != ActivationKind::relu2;
  const int64_t n1 = gated ? 2 * I : I;
  const int64_t r0 = gemm1_row(f, tile, gq), r1 = gemm1_row(f, tile, gq + 8);
  const int64_t j0 = gated ? int64_t(tile) * 8 + gq : r0;  // the h2 column of row gq
  const uint8_t* x[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    const int m = t * 8 + gq;
    x[t] = m < count ? reinterpret_cast<const uint8_t*>(f.x + int64_t(tab.token[off + m]) * K) + cq * 16 : nullptr;
  }
  const float b0 = f.b13 ? f.b13[e * n1 + r0] : 0.0f, b1 = f.b13 ? f.b13[e * n1 + r1] : 0.0f;
  float v[NT][4];
  gemm_item<NT, false>(stages, ring, stage, phase, K * 2, x, partial, v);
  for_each_row<NT>(count, [&](int t, int j, int64_t m) {
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

// B: y rows n0..n0+15 of the expert in slot `slot`. Its first stage is full only once the expert's h2 is
// complete (the producer's wait, see produce), so the consumers read h2 without waiting themselves.
template <int NT>
__device__ void gemm2_item(const FusedDecode& f, const Tables& tab, int slot, int tile, uint8_t* stages,
                           RingOf<NT>& ring, int& stage, uint32_t& phase, float (&partial)[kWarps][NT][4][32]) {
  const int lane = threadIdx.x & 31, gq = lane >> 2, cq = lane & 3;
  const int64_t e = tab.e[slot], count = tab.count[slot], off = tab.off[slot], K = f.K, I = f.I;
  const int64_t n0 = int64_t(tile) * kTile;
  const float b0 = f.b2 ? f.b2[e * K + n0 + gq] : 0.0f, b1 = f.b2 ? f.b2[e * K + n0 + gq + 8] : 0.0f;
  const uint8_t* x[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    const int m = t * 8 + gq;
    x[t] = m < count ? reinterpret_cast<const uint8_t*>(f.h2 + (off + m) * I) + cq * 16 : nullptr;
  }
  float v[NT][4];
  gemm_item<NT, true>(stages, ring, stage, phase, I * 2, x, partial, v);
  for_each_row<NT>(count, [&](int t, int j, int64_t m) {
    f.y[(off + m) * K + n0 + gq] = __float2bfloat16_rn(v[t][j] + b0);
    f.y[(off + m) * K + n0 + gq + 8] = __float2bfloat16_rn(v[t][2 + j] + b1);
  });
  signal_done(f.done_b + tile);
}

// C: output columns n0..n0+15 of every token, once every plan item's y has them.
__device__ void finalize_item(const FusedDecode& f, const RowPlan& plan, int tile, int n_slots) {
  wait_for(f.done_b + tile, n_slots);
  const int64_t K = f.K, n0 = int64_t(tile) * kTile;
  const int k = f.top_k;
  for (int64_t p = threadIdx.x; p < f.M * 2; p += kConsumers) {
    const int64_t t = p >> 1, c = n0 + (p & 1) * 8;
    float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    add_weighted_rows8<true>(plan.slot_rows + t * k, f.topk_weights ? f.topk_weights + t * k : nullptr, k, f.y, K, c,
                             acc);
    store_bf16x8(acc, f.out + t * K + c);
  }
}

// The consumer warps: the items in the order the producer put them in the ring.
template <int NT>
__device__ void consume(const FusedDecode& f, const RowPlan& plan, const Tables& tab, const Items& it, uint8_t* stages,
                        RingOf<NT>& ring, float (&partial)[kWarps][NT][4][32]) {
  int stage = 0;
  uint32_t phase = 0;
  for (;;) {
    mbar_wait(smem_addr(&ring.full[stage]), phase);
    const Work w = it.at(ring.item[stage]);
    if (w.kind == Work::End) return;
    if (w.kind == Work::A) {
      gemm1_item<NT>(f, tab, w.slot, w.tile, stages, ring, stage, phase, partial);
      signal_done(f.done_a + w.slot);
    } else if (w.kind == Work::B) {
      gemm2_item<NT>(f, tab, w.slot, w.tile, stages, ring, stage, phase, partial);
    } else {
      mbar_arrive(smem_addr(&ring.empty[stage]));  // the item is read
      RingOf<NT>::next(stage, phase);
      finalize_item(f, plan, w.tile, it.n_slots);
    }
  }
}

// kBlocksPerSm blocks per SM (their shared memory holds the rings): 4 consumer warps and a producer warp each.
// Above 16 tokens (tests only: the heuristic stops at 16) 3 blocks, whose registers hold 4 or 8 token tiles.
template <int NT>
__global__ void __launch_bounds__(kThreads, NT >= 4 ? 3 : kBlocksPerSm)
    fused_decode_kernel(FusedDecode f, RowPlan plan) {
  extern __shared__ __align__(128) uint8_t smem[];
  uint8_t* stages = smem;
  constexpr int kStages = stages_for(NT);
  auto& ring = *reinterpret_cast<RingOf<NT>*>(smem + kStages * kStageBytes);
  auto& partial =
      *reinterpret_cast<float(*)[kWarps][NT][4][32]>(smem + kStages * kStageBytes + sizeof(RingOf<NT>));
  Tables tab(reinterpret_cast<int*>(smem + fixed_smem_bytes<NT>()), f.max_items);
  if (threadIdx.x < kStages) {
    mbar_init(&ring.full[threadIdx.x], 1);            // the producer's arrival, with the bytes it expects
    mbar_init(&ring.empty[threadIdx.x], kConsumers);  // each consumer thread, once it has read the stage
  }
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  pdl_wait();
  // The work items are a prefix of plan.items; every warp counts them.
  int n_slots = 0;
  for (int base = 0; base < f.max_items; base += 32) {
    const int i = base + (threadIdx.x & 31);
    n_slots += __popc(__ballot_sync(0xffffffffu, i < f.max_items && plan.items[i].expert >= 0));
  }
  tab.load(plan, n_slots);
  const Items it(f, n_slots);
  if (threadIdx.x >= kConsumers)
    produce(f, tab, it, stages, ring);
  else
    consume<NT>(f, plan, tab, it, stages, ring, partial);
}

template <int NT>
void launch_typed(const FusedDecode& f, const RowPlan& plan, int sm_count, cudaStream_t s) {
  const size_t bytes =
      fixed_smem_bytes<NT>() + sizeof(int) * Tables::ints(f.max_items, static_cast<int>(f.M * f.top_k));
  static const bool raised = [] {  // the most any launch asks for
    int device = 0, most = 0;
    FMOE_CUDA_CHECK(cudaGetDevice(&device));
    FMOE_CUDA_CHECK(cudaDeviceGetAttribute(&most, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    FMOE_CUDA_CHECK(cudaFuncSetAttribute(fused_decode_kernel<NT>, cudaFuncAttributeMaxDynamicSharedMemorySize, most));
    return true;
  }();
  (void)raised;
  const int64_t t1 = f.act.kind != ActivationKind::relu2 ? f.I / 8 : f.I / 16, t2 = f.K / kTile;
  const int64_t max_items = int64_t(f.max_items) * (t1 + t2) + (f.out ? t2 : 0);
  const int64_t grid = std::min<int64_t>(max_items, int64_t(sm_count) * kBlocksPerSm);
  launch_with_smem(fused_decode_kernel<NT>, dim3(static_cast<unsigned>(grid)), dim3(kThreads), bytes, s, f, plan);
}

}  // namespace

int64_t fused_decode_counters(int max_items, int64_t K) { return 1 + max_items + K / kTile; }

int fused_decode_item_rows(int64_t M) { return M <= 8 ? 8 : M <= 16 ? 16 : M <= 32 ? 32 : 64; }

void launch_fused_decode(const FusedDecode& f, const RowPlan& plan, int sm_count, cudaStream_t s) {
  FMOE_CHECK(f.K % 32 == 0 && f.I % 32 == 0, "the fused decode kernel needs hidden and intermediate sizes that are ",
             "multiples of 32, got ", f.K, " and ", f.I);
  FMOE_CHECK(f.top_k >= 1 && f.top_k <= 32, "the fused decode kernel handles top_k 1 to 32, got ", f.top_k);
  FMOE_CHECK(f.M >= 0 && f.M <= kMaxFusedDecodeRows, "the fused decode kernel takes up to ", kMaxFusedDecodeRows,
             " tokens, got ", f.M);
  if (f.M == 0) return;  // (no local expert, max_items 0, still runs the C items: the output is zero)
  FMOE_CHECK(plan.item_rows == fused_decode_item_rows(f.M) && plan.item_grid == f.max_items,
             "the fused decode kernel runs on a plan of ", f.max_items, " work items of ", fused_decode_item_rows(f.M),
             " rows, got ", plan.item_grid, " of ", plan.item_rows);
  // A plan item holds at most item_rows rows: token tiles of 8 rows, item_rows / 8 of them.
  if (plan.item_rows == 8)
    launch_typed<1>(f, plan, sm_count, s);
  else if (plan.item_rows == 16)
    launch_typed<2>(f, plan, sm_count, s);
  else if (plan.item_rows == 32)
    launch_typed<4>(f, plan, sm_count, s);
  else
    launch_typed<8>(f, plan, sm_count, s);
}

}  // namespace fusedmoe::cuda
