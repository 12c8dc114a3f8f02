// Grouped GEMMs on Hopper's warpgroup tensor cores for many rows per expert, in place of the CUTLASS grouped GEMMs
// when chosen (heuristics.h): bf16 weights (Bf16Gemm below) and fp8-block ones (Fp8BlockGemm: e4m3 W with an f32
// scale per 128x128 block, e4m3 X with one per row and 128-wide k group):
//   Y[r, n] = sum_k X[r, k] * W[e, n, k]  (+ bias[e, n]),  r in plan order
//   fp8-block: Y[r, n] = sum_kb xs[kb, r] ws[e, n / 128, kb] sum_{k in kb} X[r, k] W[e, n, k]  (+ bias)
//   fp8-tensor and fp8-channel run as fp8-block (one scale for every block of an expert); fp8-channel's weight row
//   scales rs[e, n] multiply the promoted sums before the bias (scale_weight_rows)
// Swap-AB, as fp4_wgmma_gemm.cu, whose pipeline it shares (wgmma_pipeline.cuh): the weights are wgmma's A,
// the tokens of one plan item its B, both in shared memory (SS form). The token tile is wgmma's N, so
// an expert's last few rows take a 32-row tail beside a full item instead of a whole 128-row M tile of
// their own, as on the CUTLASS path (partly filled tiles cost it 7-36% of its GEMM time at the benchmark's
// routing, session 29).
// Persistent, one block per SM, alone or (bf16) in pairs (clusters of two; kCluster below). A unit of work: one work
// item of the row plan (up to kTileTokens rows of one expert, plus the expert's last 1-32 rows as a tail when they
// follow a full item) against 128 kT weight rows per block. Blocks (pairs) claim units one at a time from a counter
// (the hand-out below), in 3 warpgroups:
// - a thread of the producer warpgroup fills a ring of k tiles (128 bytes of every row: 64 bf16 or 128 e4m3 values,
//   one scale group) with TMA copies from the tensor maps of X [rows, K] and W [E N, K], K-major with the 128-byte
//   swizzle wgmma reads (fp8-block: and of X's scales [K/128, rows]), running on into the next unit while the
//   consumers store the last one; in a pair, each block loads half of the X boxes into both (multicast), and a stage
//   is refilled once the consumers of both blocks have released it;
// - two consumers, kT m64 tiles of weight rows each, N = the item's token tile (its rows rounded up to 32; with_tile)
//   (bf16: + 32 for a tail in wgmma of their own; fp8-block: a tile of 160). bf16: m64nNk16 wgmma accumulate over all
//   of k. fp8-block: each k tile's four m64nNk32 steps make a partial sum, which the consumer adds to its
//   accumulators times the tile's scale products (its weight block's scale times each token's; the warpgroup writes
//   them to shared memory while the wgmma run) once they are done, as DeepGEMM promotes;
// - the epilogue (store_tiles) goes through an 8 KiB buffer per consumer, apart from the ring.
// Decode batches (up to heuristics.h's kWgmmaInPlaceMaxTokens) read GEMM1's rows where they lie (kInPlace: x_row set,
// one-row boxes by the producer warp's lanes); larger ones read X gathered into plan order (quantize.cu), its boxes
// L2::evict_last (the kernel's x_evict_last). GEMM1 may carry the gated activation in its epilogue (Bf16GateUpGemm,
// SmallMGemm::act_epilogue: 5-D boxes of w13's rows as 16-row groups of 8 gate and 8 up rows, gated_rows_map;
// store_gated_tiles writes h2).
// Limits: K % 64 == 0 (fp8-block: % 128), N % 8 == 0, x, w and y 16-byte aligned, rows addressed in 32 bits; plan
// items of kTileTokens rows.
// Measurements behind this shape, and what was tried and dropped: docs/KERNEL_NOTES.md (wgmma_grouped_gemm.cu).
#include <cuda.h>
#include <cudaTypedefs.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <type_traits>

#include "cuda/cuda_util.h"
#include "cuda/kernels/kernels.h"
#include "cuda/kernels/launch.cuh"
#include "cuda/kernels/tensor_map.h"
#include "cuda/kernels/wgmma_pipeline.cuh"
#include "cuda/kernels/wgmma_util.cuh"

namespace fusedmoe::cuda {
namespace {

constexpr int kConsumers = kWgmmaConsumers;
constexpr int kThreads = 128 * (kConsumers + 1);  // + the producer warpgroup (the last)
constexpr int kSlabRows = 64 * kConsumers;        // weight rows of a block per m64 tile of each consumer
constexpr int kRowBytes = 128;                    // a row's bytes in a k tile (the swizzle's span)
constexpr int kSteps = 4;                         // wgmma k steps of a k tile (32 bytes each: k16 bf16, k32 e4m3)
constexpr int kTailTokens = 32;
constexpr int kItemGroup = 8;  // plan items whose units run side by side (the unit order below)
// Rows of the TMA boxes: X's (and 32-row boxes for a token tile's last 32 rows or a tail), W's (a block of kT = 1).
constexpr int kXBox = 64, kXTailBox = 32, kWBox = 128;
// fp8-block's X scales of a k tile: one box of kScaleBox rows from the 4-row boundary at or below the tile's first row
// (the largest token tile, 160, plus up to 3 rows; a 16-byte multiple).
constexpr int kScaleBox = 164;

// A block's shape for items of up to kTok rows: kT m64 tiles of weight rows per consumer against kTok
// (+ kTail) tokens, every row 128 bytes of a k tile; scaled (fp8-block): then the tokens' scales of the k tile, from
// the row below the first rounded down to a multiple of 4 (produce).
template <int kTok, int kT, int kTail = 0, bool kScaled = false>
struct Shape {
  static constexpr int kBlockRows = kSlabRows * kT;
  static constexpr int kXBytes = (kTok + kTail) * kRowBytes;
  static constexpr int kWBytes = kBlockRows * kRowBytes;
  static constexpr int kScaleBytes = kScaled ? kScaleBox * 4 : 0;
  static constexpr int kStageBytes = kXBytes + kWBytes + kScaleBytes;
  static_assert(kXBytes % 1024 == 0 && kWBytes % 1024 == 0, "swizzled tiles start 1024-byte aligned");
};

// The element types. kTileK: values of a k tile; kTileTokens: the plan's item rows; the stages of the ring, of
// kStageBytes each (the largest shape of with_tile below, rounded up to 1024 bytes).
struct Bf16Gemm {
  static constexpr bool kScaled = false, kGateUp = false;
  static constexpr bool kSignal = false, kAwait = false;  // GEMM2 beside GEMM1 (below)
  static constexpr int kTileK = 64, kTileTokens = 256, kStages = 4;
  static constexpr int kStageBytes = Shape<kTileTokens, 1, kTailTokens>::kStageBytes;  // 52 KiB
  static_assert(Shape<256, 1>::kStageBytes <= kStageBytes && Shape<128, 2>::kStageBytes <= kStageBytes);
};
// fp8-block: a k tile is one scale group. Items of 128 rows, a tail making a tile of 160: the partial sums double a
// consumer's accumulators (kT m64 tiles by kTok tokens, twice, within kConsumerRegs).
struct Fp8BlockGemm {
  static constexpr bool kScaled = true, kGateUp = false;
  static constexpr bool kSignal = false, kAwait = false;
  static constexpr int kTileK = 128, kTileTokens = 128, kStages = 5;
  static constexpr int kStageBytes = (Shape<64, 2, 0, true>::kStageBytes + 1023) / 1024 * 1024;  // 41 KiB
  static_assert(Shape<160, 1, 0, true>::kStageBytes <= kStageBytes &&
                Shape<32, 2, 0, true>::kStageBytes <= kStageBytes);
};
// bf16 GEMM1 with the gated activation in its epilogue (SmallMGemm::act_epilogue): the weight boxes come from
// gated_rows_map, 16-row groups of 8 gate rows and their 8 up rows (gated_block_row), so that a consumer lane's
// accumulator rows g and g + 8 are the gate and up sums of one h2 column, and store_gated_tiles writes h2 [R, N / 2].
struct Bf16GateUpGemm : Bf16Gemm {
  static constexpr bool kGateUp = true;
};
// GEMM2 beside GEMM1 (WgmmaOverlap in kernels.h; the blocks alone): GEMM1 counts each item's h2 columns
// as they are stored, GEMM2 waits for an item's count before it loads the item's rows (signal_item, await_item).
// Instances of their own, so that the others' code stays as it was.
struct Bf16GateUpSignalGemm : Bf16GateUpGemm {
  static constexpr bool kSignal = true;
};
struct Bf16AwaitGemm : Bf16Gemm {
  static constexpr bool kAwait = true;
};
// fp8-block: a consumer's two buffers of a k tile's scale products (ws xs[token], consume), after the barriers.
constexpr int kProductFloats = 160;
// A consumer's epilogue buffer: passes of 64 tokens' 64 weight rows (store_tiles), 8 KiB.
constexpr int kEpiTokens = 64;
constexpr int kEpiBytes = kEpiTokens * 128;
// The stages, the consumers' epilogue buffers, the stages' full and empty barriers, (fp8-block) the consumers' scale
// products, 1024 bytes of alignment: 225 KiB (bf16), 225 KiB (fp8-block).
template <class C>
constexpr size_t kSmemBytes = size_t(C::kStages) * C::kStageBytes + kConsumers * kEpiBytes + 2 * C::kStages * 8 +
                              (C::kScaled ? kConsumers * 2 * kProductFloats * 4 : 0) + 1024;
static_assert(kSmemBytes<Bf16Gemm> <= 227 * 1024 && kSmemBytes<Fp8BlockGemm> <= 227 * 1024);
// setmaxnreg budgets: 40 x 128 + 232 x 256 <= 168 x 384, the launch's.
constexpr uint32_t kProducerRegs = 40, kConsumerRegs = 232;

// The k step of a k tile on the element type: D += A B (bf16), D (+)= A B (e4m3; accumulate = 0 overwrites D).
template <class C, int kTok>
__device__ inline void wgmma_ss(float (&d)[kTok / 2], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  if constexpr (C::kScaled) {
    if constexpr (kTok == 160) wgmma_m64n160k32_e4m3_ss(d, desc_a, desc_b, accumulate);
    else if constexpr (kTok == 128) wgmma_m64n128k32_e4m3_ss(d, desc_a, desc_b, accumulate);
    else if constexpr (kTok == 96) wgmma_m64n96k32_e4m3_ss(d, desc_a, desc_b, accumulate);
    else if constexpr (kTok == 64) wgmma_m64n64k32_e4m3_ss(d, desc_a, desc_b, accumulate);
    else wgmma_m64n32k32_e4m3_ss(d, desc_a, desc_b, accumulate);
  } else if constexpr (kTok == 256) wgmma_m64n256k16_ss(d, desc_a, desc_b);
  else if constexpr (kTok == 224) wgmma_m64n224k16_ss(d, desc_a, desc_b);
  else if constexpr (kTok == 192) wgmma_m64n192k16_ss(d, desc_a, desc_b);
  else if constexpr (kTok == 160) wgmma_m64n160k16_ss(d, desc_a, desc_b);
  else if constexpr (kTok == 128) wgmma_m64n128k16_ss(d, desc_a, desc_b);
  else if constexpr (kTok == 96) wgmma_m64n96k16_ss(d, desc_a, desc_b);
  else if constexpr (kTok == 64) wgmma_m64n64k16_ss(d, desc_a, desc_b);
  else wgmma_m64n32k16_ss(d, desc_a, desc_b);
}

// The producer: one thread of the producer warpgroup fills the stages with TMA copies (full[s] completes
// when their bytes have landed) once the consumers have released the stage (empty[s]): the item's X rows
// (x_row0 on, boxes of 64 rows, then 32), the block's weight rows (w_row0 on, boxes of 128) and (fp8-block) the X
// rows' scales of the k tile. Rows past the item or N hold other experts' rows, or zeros past the tensors: they meet
// accumulator columns or rows that are never stored.
// In place (kInPlace: x_row set, decode batches): the item's `rows` rows come as one-row boxes of x_map from the rows
// x_row[x_row0 ..] of X where they lie, issued by the producer warp's lanes (lane i: rows i, i + 32, ..) once its
// first lane has waited for the stage and announced its bytes; no scales (the consumers read them, consume). The
// tile's other rows keep what an earlier stage left there: they meet accumulator columns that are never stored.
template <class C, int kCluster, int kTok, int kT, int kTail, bool kInPlace>
__device__ __forceinline__ void produce(const CUtensorMap& x_map, const CUtensorMap& x_tail_map,
                                        const CUtensorMap& w_map, const CUtensorMap& xs_map, int num_kt, uint8_t* smem,
                                        uint32_t full, uint32_t empty, Ring<C::kStages>& ring, int32_t x_row0,
                                        int32_t w_row0, int rank, const int32_t* x_row, int rows, int32_t w_expert,
                                        bool x_evict_last) {
  using S = Shape<kTok, kT, kTail, C::kScaled>;
  static_assert(!C::kScaled || kCluster == 1, "fp8-block runs its blocks alone");
  static_assert(!kInPlace || kCluster == 1, "rows read in place run their blocks alone");
  const uint32_t base = smem_addr(smem);
  const int lane = threadIdx.x & 31;
  const int32_t lane_row = kInPlace && lane < rows ? __ldg(x_row + x_row0 + lane) : 0;
  const uint64_t x_policy = x_evict_last ? l2_evict_last_policy() : 0;
  for (int kt = 0; kt < num_kt; ++kt, ring.advance()) {
    const uint32_t bar = full + 8 * ring.st, xs = base + ring.st * C::kStageBytes, ws = xs + S::kXBytes;
    const int32_t k = kt * C::kTileK;
    // From the ring's second round on, the stage's previous round must have been released (in both blocks of the
    // pair: the X boxes land in both); then its bytes are announced.
    const auto take_stage = [&](uint32_t bytes) {
      if (ring.passed >= C::kStages) mbar_wait(empty + 8 * ring.st, ring.phase ^ 1);
      mbar_arrive_expect_tx(bar, bytes);
    };
    const auto load_w = [&] {
      if constexpr (C::kGateUp) {  // boxes of 8 groups of 16 rows (64 h2 columns) from group w_row0 of w_expert on
#pragma unroll
        for (int j = 0; j < S::kBlockRows / kWBox; ++j)
          tma_load_5d(ws + j * kWBox * kRowBytes, &w_map, k, 0, 0, w_row0 + 8 * j, w_expert, bar);
      } else {
#pragma unroll
        for (int j = 0; j < S::kBlockRows / kWBox; ++j)
          tma_load_2d(ws + j * kWBox * kRowBytes, &w_map, k, w_row0 + kWBox * j, bar);
      }
    };
    if constexpr (kInPlace) {
      if (lane == 0) {
        take_stage(S::kWBytes + rows * kRowBytes);
        load_w();
      }
      __syncwarp();  // the stage is free and its bytes announced
      if (lane < rows) tma_load_2d(xs + lane * kRowBytes, &x_map, k, lane_row, bar);
      for (int i = lane + 32; i < rows; i += 32)
        tma_load_2d(xs + i * kRowBytes, &x_map, k, __ldg(x_row + x_row0 + i), bar);
      continue;
    }
    take_stage(S::kStageBytes);
    // X box b comes from the pair's block b % 2, multicast to both; evict_last when x_evict_last (see the kernel).
    const auto load_x = [&](uint32_t dst, const CUtensorMap& map, int32_t row, int b) {
      const uint16_t both = (1u << kCluster) - 1;
      if constexpr (kCluster == 1) {
        if (x_evict_last) tma_load_2d_hinted(dst, &map, k, row, bar, x_policy);
        else tma_load_2d(dst, &map, k, row, bar);
      } else if (b % kCluster == rank) {
        if (x_evict_last) tma_load_2d_multicast_hinted(dst, &map, k, row, bar, both, x_policy);
        else tma_load_2d_multicast(dst, &map, k, row, bar, both);
      }
    };
#pragma unroll
    for (int j = 0; j < kTok / kXBox; ++j) load_x(xs + j * kXBox * kRowBytes, x_map, x_row0 + kXBox * j, j);
    // The rows past the last whole box (kTok % 64 == 32), then the tail's: 32-row boxes.
#pragma unroll
    for (int r = kTok / kXBox * kXBox, b = kTok / kXBox; r < kTok + kTail; r += kXTailBox, ++b)
      load_x(xs + r * kRowBytes, x_tail_map, x_row0 + r, b);
    load_w();
    // The scales: a TMA box's innermost coordinate must be 16-byte aligned, so they start at the 4-row boundary at
    // or below x_row0 (the consumers skip x_row0 % 4 of them), in one box (until session 39 in boxes of 32 rows,
    // five or six copies a stage: 1.00-1.01x, H200).
    if constexpr (C::kScaled) tma_load_2d(ws + S::kWBytes, &xs_map, x_row0 & ~3, kt, bar);
  }
}

// A consumer warpgroup: its kT m64 tiles of the unit's weight rows against the item's kTok (+ kTail) token
// rows, all of k, then (once fetch_next has taken the next unit) the epilogue into Y rows first_row .. first_row
// + rows - 1 through the warpgroup's epilogue buffer, while the producer fills the ring for the next unit. A k
// tile's wgmma are one group. bf16 with kT = 2 (token tiles of up to 128 rows, where the weights' stream binds): the
// group is waited for at once and its stage goes back (session 52, same-run A/Bs on H200, 3 calls: qwen3-30b-a3b
// 1.009-1.012x at 16-1024 tokens, mixtral-8x7b 1.014x at 512, 0.996-0.999x at 16-128). bf16 with kT = 1: once the
// previous tile's group is done, its stage goes back to the producer (the last one after the drain), so that the
// tensor cores always have the next group queued. One arrival per consumer warp, as the consumers read the stages
// through wgmma alone (an arrival per thread timed the same, session 30). fp8-block: the group is waited for at once
// (the warpgroup writes the tile's scale products meanwhile), and the stage goes back after the promotion.
// A consumer warp gives a stage back to the producers of both blocks of the pair (either one's X boxes land in it).
template <int kCluster>
__device__ inline void release_stage(uint32_t empty) {
  if constexpr (kCluster == 1) {
    mbar_arrive(empty);
  } else {
#pragma unroll
    for (int r = 0; r < kCluster; ++r) mbar_arrive_remote(cluster_addr(empty, r));
  }
}

// fp8-block's scale products of a k tile (ws xs[token], the weight block's scale and each token's) lie in a consumer's
// buffer so that one 16-byte load gives a lane the four it needs for two neighbouring n8 blocks of its accumulator
// columns (8 j + 2 (lane % 4) + 0/1, wgmma_util.cuh's C layout; j = 2 m, 2 m + 1): token column c goes to float
// 16 m + 4 q + 2 (j % 2) + c % 2, where c = 8 j + 2 q + c % 2. (Column order, read as float2, took twice the loads.)
__device__ __forceinline__ int product_slot(int c) {
  const int j = c >> 3, q = (c >> 1) & 3;
  return 16 * (j >> 1) + 4 * q + 2 * (j & 1) + (c & 1);
}

// fp8-block: a consumer's accumulators of one m64 tile += its k tile's partial sums times the tile's scale products
// (product_slot's order; kTok % 16 == 0, the buffer 16-byte aligned).
template <int kTok>
__device__ inline void promote(float (&acc)[kTok / 2], const float (&part)[kTok / 2], const float* prod, int lane) {
  static_assert(kTok % 16 == 0, "token tiles of whole pairs of n8 blocks");
#pragma unroll
  for (int m = 0; m < kTok / 16; ++m) {
    const float4 s = *reinterpret_cast<const float4*>(prod + 16 * m + 4 * (lane & 3));
    const int j = 8 * m;  // accumulators of n8 block 2 m: j .. j + 3; of block 2 m + 1: j + 4 .. j + 7
    acc[j] += part[j] * s.x;
    acc[j + 1] += part[j + 1] * s.y;
    acc[j + 2] += part[j + 2] * s.x;
    acc[j + 3] += part[j + 3] * s.y;
    acc[j + 4] += part[j + 4] * s.z;
    acc[j + 5] += part[j + 5] * s.w;
    acc[j + 6] += part[j + 6] * s.z;
    acc[j + 7] += part[j + 7] * s.w;
  }
}

// fp8-channel (g.w_row_scales set): a consumer's promoted sums times the scales of the lane's weight rows n + 64 t
// and n + 64 t + 8 (accumulators 4 j, 4 j + 1 and 4 j + 2, 4 j + 3), before the epilogue adds the bias, as the
// small-M kernels' scale_rows does (its block scales are 1).
template <int kTok, int kT>
__device__ inline void scale_weight_rows(float (&acc)[kT][kTok / 2], const SmallMGemm& g, int e, int64_t n) {
  const float* rs = g.w_row_scales + int64_t(e) * g.N;
#pragma unroll
  for (int t = 0; t < kT; ++t) {
    const int64_t r = n + 64 * t;
    const float lo = r < g.N ? __ldg(rs + r) : 0.0f, hi = r + 8 < g.N ? __ldg(rs + r + 8) : 0.0f;
#pragma unroll
    for (int j = 0; j < kTok / 8; ++j)
      acc[t][4 * j] *= lo, acc[t][4 * j + 1] *= lo, acc[t][4 * j + 2] *= hi, acc[t][4 * j + 3] *= hi;
  }
}

template <class C, int kCluster, int kTok, int kT, int kTail, bool kInPlace, class FetchNext>
__device__ __forceinline__ void consume(const SmallMGemm& g, uint8_t* smem, uint8_t* epi, float* products,
                                        uint32_t full, uint32_t empty, Ring<C::kStages>& ring, int e, int64_t n0,
                                        int64_t rows, int64_t first_row, FetchNext&& fetch_next) {
  using S = Shape<kTok, kT, kTail, C::kScaled>;
  const int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31;
  const int num_kt = static_cast<int>(g.K / C::kTileK);
  float acc[kT][kTok / 2];
  constexpr int kTailAcc = kTail ? kTail / 2 : 1;
  float tail[kT][kTailAcc];  // tokens kTok .. kTok + kTail - 1, laid out as acc's first kTail tokens
  zero_accumulators<kTok, kTail, kT, kTailAcc>(acc, tail);
  // Stage 0's descriptors (their low words, sw128_desc): X, and this consumer's first m64 tile of W (tile t: 64 rows
  // of 128 bytes on). Stage s, k step i: + s kStageBytes / 16 + 2 i (the address field's unit is 16 bytes, and no
  // address in shared memory carries out of it).
  const uint32_t base = smem_addr(smem);
  const uint32_t x_lo0 = uint32_t(smem_desc_k_major_sw128(base));
  const uint32_t w_lo0 = uint32_t(smem_desc_k_major_sw128(base + S::kXBytes + 64 * kT * wg * kRowBytes));
  constexpr uint32_t kTileDesc = 64 * kRowBytes / 16;
  // A k tile's wgmma: kSteps k steps of the consumer's kT m64 tiles against the tokens, then the tail's (whose token
  // rows follow the kTok rows in the stage, kTok 128-byte rows further); accumulate = 0 at step 0 starts new sums.
  const auto issue = [&](float (&d)[kT][kTok / 2], float (&d_tail)[kT][kTailAcc], uint32_t off, bool restart) {
    wgmma_fence();
#pragma unroll
    for (int i = 0; i < kSteps; ++i)
#pragma unroll
      for (int t = 0; t < kT; ++t) {
        const uint64_t a = sw128_desc(w_lo0 + off + t * kTileDesc + 2 * i);
        const int accumulate = !(restart && i == 0);
        wgmma_ss<C, kTok>(d[t], a, sw128_desc(x_lo0 + off + 2 * i), accumulate);
        if constexpr (kTail > 0)
          wgmma_ss<C, kTail>(d_tail[t], a, sw128_desc(x_lo0 + off + 2 * i + kTok * 8), accumulate);
      }
    wgmma_commit();
  };
  float bias[kT][2];  // of the lane's weight rows
  const int bias_row = 64 * kT * wg + 16 * warp + (lane >> 2);
  if constexpr (!C::kScaled) {
    // One group per k tile. Token tiles of up to 128 rows (kT = 2): the tensor cores finish a k tile long before the
    // next one lands, so its stage goes back as soon as its own group is done and, while the consumer waits for the
    // next tile, every other stage is the producer's to fill. Larger tiles: once the previous tile's group is done,
    // its stage goes back, so that the tensor cores always have the next group queued.
    constexpr bool kReleaseAtOnce = kT == 2;
    int prev_st = 0;
    for (int kt = 0; kt < num_kt; ++kt, ring.advance()) {
      mbar_wait(full + 8 * ring.st, ring.phase);
      issue(acc, tail, uint32_t(ring.st) * (C::kStageBytes >> 4), false);
      if constexpr (kReleaseAtOnce) {
        wgmma_wait<0>();
        if (lane == 0) release_stage<kCluster>(empty + 8 * ring.st);
      } else {
        wgmma_wait<1>();  // tile kt - 1's group is done: the warpgroup's wgmma no longer read its stage
        if (kt > 0 && lane == 0) release_stage<kCluster>(empty + 8 * prev_st);
        prev_st = ring.st;
      }
    }
    // The rows' bias while the last wgmma run.
    if constexpr (C::kGateUp) load_row_bias<kT>(g, e, bias_row, [&](int b) { return gated_block_row(g, n0, b); }, bias);
    else load_row_bias<kT>(g, e, n0, bias_row, bias);
    drain_accumulators<kTok, kTail, kT, kTailAcc>(acc, tail);
    if (!kReleaseAtOnce && lane == 0) release_stage<kCluster>(empty + 8 * prev_st);
  } else {
    static_assert(kTail == 0, "fp8-block tiles hold an item's tail in their token tile (with_tile)");
    static_assert(kTok <= kProductFloats, "a k tile's scale products fit the consumer's buffer");
    // The consumer's weight rows n0 + 64 kT wg .. + 64 kT - 1 lie in one 128-row scale block (kT <= 2); none past N.
    const int64_t NB = (g.N + 127) / 128, nb = (n0 + 64 * kT * wg) / 128;
    const float* w_scale = nb < NB ? g.w_scales + (int64_t(e) * NB + nb) * num_kt : nullptr;
    float ws = w_scale ? __ldg(w_scale) : 0.0f;
    float part[kT][kTok / 2], part_tail[kT][kTailAcc];  // (part_tail: issue's unused tail operand)
    zero_accumulators<kTok, kTail, kT, kTailAcc>(part, part_tail);
    const int wg_tid = tid & 127;
    // In place: the scales of the thread's token columns c = wg_tid + 128 i where X's rows lie (row-major [*, K/128]),
    // a k tile ahead; none past the item's rows.
    constexpr int kCols = kInPlace ? (kTok + 127) / 128 : 1;
    const float* col_scales[kCols];
    float col_scale[kCols];
    if constexpr (kInPlace) {
#pragma unroll
      for (int i = 0; i < kCols; ++i) {
        const int c = wg_tid + 128 * i;
        col_scales[i] = c < rows ? g.x_scales + int64_t(__ldg(g.x_row + first_row + c)) * num_kt : nullptr;
        col_scale[i] = col_scales[i] ? __ldg(col_scales[i]) : 0.0f;
      }
    }
    for (int kt = 0; kt < num_kt; ++kt, ring.advance()) {
      mbar_wait(full + 8 * ring.st, ring.phase);
      issue(part, part_tail, uint32_t(ring.st) * (C::kStageBytes >> 4), true);
      // While the group runs: the tile's scale products ws * xs[token] into this consumer's buffer kt % 2, a token
      // (or two) a thread; the warpgroup meets once they are written.
      float* prod = products + (kt & 1) * kProductFloats;
      if constexpr (kInPlace) {
#pragma unroll
        for (int i = 0; i < kCols; ++i) {
          if (const int c = wg_tid + 128 * i; c < kTok) prod[product_slot(c)] = col_scale[i] * ws;
          col_scale[i] = col_scales[i] && kt + 1 < num_kt ? __ldg(col_scales[i] + kt + 1) : 0.0f;
        }
      } else {
        const float* xs = reinterpret_cast<const float*>(smem + ring.st * C::kStageBytes + S::kXBytes + S::kWBytes) +
                          (first_row & 3);
#pragma unroll
        for (int c = wg_tid; c < kTok; c += 128) prod[product_slot(c)] = xs[c] * ws;
      }
      ws = w_scale && kt + 1 < num_kt ? __ldg(w_scale + kt + 1) : 0.0f;
      warpgroup_bar(wg);
      drain_accumulators<kTok, kTail, kT, kTailAcc>(part, part_tail);
#pragma unroll
      for (int t = 0; t < kT; ++t) promote<kTok>(acc[t], part[t], prod, lane);
      __syncwarp();  // (the warpgroup barrier above already orders every lane's scale reads before the release)
      if (lane == 0) release_stage<kCluster>(empty + 8 * ring.st);
    }
    load_row_bias<kT>(g, e, n0, bias_row, bias);
    if (g.w_row_scales) scale_weight_rows<kTok, kT>(acc, g, e, n0 + bias_row);
  }
  fetch_next();  // the next unit's claim (the producer is loading it already)
  if constexpr (C::kGateUp) {  // (kPass tokens of 32 columns: the 8 KiB buffer)
    store_gated_tiles<kTok, kTail, kT, kTailAcc, 2 * kEpiTokens>(g, acc, tail, bias, 1.0f, epi, n0 / 2 + 32 * kT * wg,
                                                                 rows, first_row);
  } else {
    store_tiles<kTok, kTail, kT, kTailAcc, kEpiTokens>(g, acc, tail, bias, 1.0f, epi, n0 + 64 * kT * wg, rows,
                                                      first_row);
  }
}

// A unit of work, for a pair of blocks: a plan item's rows against kCluster neighbouring slabs of weight rows
// (kSlabRows each, two for items of up to 128 rows, which take kT = 2), the block of rank r taking slab r from
// n0 on. rows = 0 when there is none (an item that rides as a tail, or the pair's first slab past N); a block whose
// slab starts past N runs the unit (its peer's X boxes land in it) but stores nothing.
struct Unit {
  int e;
  int64_t first, rows, n0;
};
// The m64 tiles per consumer of a unit's tile (with_tile below): 2 for the smaller token tiles.
template <class C>
__device__ inline int tile_kt(int64_t rows) {
  return rows > (C::kScaled ? 64 : 128) ? 1 : 2;
}
// Unit order: groups of kItemGroup consecutive plan items (n_items of them, the plan's count), and within a group
// the pairs of N tiles outer, so that the units running at once share their items' X rows and their weight rows in
// L2.
template <class C, int kCluster>
__device__ inline Unit unit_at(const SmallMGemm& g, const RowPlan& plan, int n_pairs, int n_items, int u, int rank) {
  const int group = u / (kItemGroup * n_pairs), in_group = u - group * kItemGroup * n_pairs;
  const int group_items = min(kItemGroup, n_items - group * kItemGroup);
  const int item_index = group * kItemGroup + in_group % group_items, pair = in_group / group_items;
  const auto [e, first, rows] = item_rows(plan.items[item_index], C::kTileTokens, kTailTokens);
  const int64_t slab = kSlabRows * tile_kt<C>(rows), pair_n0 = int64_t(pair) * kCluster * slab;
  return {e, first, pair_n0 < g.N ? rows : 0, pair_n0 + rank * slab};
}
// The plan item of unit u (unit_at's order).
__device__ inline int unit_item(int n_pairs, int n_items, int u) {
  const int group = u / (kItemGroup * n_pairs), in_group = u - group * kItemGroup * n_pairs;
  return group * kItemGroup + in_group % min(kItemGroup, n_items - group * kItemGroup);
}

// Calls f with the unit's tile: token tile (the item's rows rounded up to 32), kT (tile_kt) and
// tail. fp8-block keeps kTok <= 160 at kT = 1 and kTok <= 64 at kT = 2 (the partial sums' registers).
template <class C, class F>
__device__ __forceinline__ void with_tile(int64_t rows, F&& f) {
  using std::integral_constant;
  using I0 = integral_constant<int, 0>;
  using I1 = integral_constant<int, 1>;
  using I2 = integral_constant<int, 2>;
  constexpr int kItem = C::kTileTokens;
  if constexpr (C::kScaled) {  // an item with a tail: one tile of 160 tokens (one wgmma reads each W tile, not two)
    if (rows > kItem) f(integral_constant<int, kItem + kTailTokens>{}, I1{}, I0{});
    else if (rows > 96) f(integral_constant<int, 128>{}, I1{}, I0{});
    else if (rows > 64) f(integral_constant<int, 96>{}, I1{}, I0{});
    else if (rows > 32) f(integral_constant<int, 64>{}, I2{}, I0{});
    else f(integral_constant<int, 32>{}, I2{}, I0{});
  } else if (rows > kItem) f(integral_constant<int, kItem>{}, I1{}, integral_constant<int, kTailTokens>{});
  else if (rows > 224) f(integral_constant<int, 256>{}, I1{}, I0{});
  else if (rows > 192) f(integral_constant<int, 224>{}, I1{}, I0{});
  else if (rows > 160) f(integral_constant<int, 192>{}, I1{}, I0{});
  else if (rows > 128) f(integral_constant<int, 160>{}, I1{}, I0{});
  else if (rows > 96) f(integral_constant<int, 128>{}, I2{}, I0{});
  else if (rows > 64) f(integral_constant<int, 96>{}, I2{}, I0{});
  else if (rows > 32) f(integral_constant<int, 64>{}, I2{}, I0{});
  else f(integral_constant<int, 32>{}, I2{}, I0{});
}

// The units' hand-out: the producer warp's first lane claims the next unit from a counter in global memory
// (work[0], atomically) and passes it to the consumers through a queue of two slots in shared memory, slot n % 2
// for the block's n-th unit: it writes the claim and arrives on the slot's `posted` barrier; each consumer warp's
// first lane waits for that, reads the claim for its warp and arrives on the slot's `taken` barrier, which the
// producer waits for before it writes the slot again. The producer claims unit n + 1 once its copies for unit n are
// issued and goes on to load it at once, so the ring stays full across units. (Until session 34 the claim passed
// under a named barrier of the producer and both consumers, which held the producer until the consumers had finished
// unit n's main loop: the ring ran dry at every unit's end. The queue: deepseek-v3 1.013x at 1024 tokens, 1.026x at
// 2048, H200.) The consumers take the claim between unit n's main loop and its epilogue. Claims go past the last
// unit, one per block (pair), which then stops. The block (pair) to count itself done last (work[1]) sets both
// counters back to 0 for the next launch (the plan zeroes them each forward; launches that follow on the stream
// touch them only after pdl_wait, i.e. once this grid has finished). A claim on demand keeps the units that run at
// once a window of consecutive units, however unlike their lengths (tails, items of 64-224 rows), where a fixed
// share per block left the blocks unevenly loaded (0.77x at mixtral 1024 tokens, session 31).
// The units are those of the plan's items (its count, RowPlan::work_counters[2]), not of the grid's bound on them
// (plan.item_grid): each block's leader reads the count beside its first claim and leaves it in shared memory for its
// consumers, who read it after the first claim. (Until session 64 the claims ran over item_grid items, whose units
// past the last item each cost a block a claim at the end of the GEMM: deepseek-v3 has 256 experts, and at 64 tokens
// its GEMM1 had about 4400 of them.)

// Both blocks of a pair run the same units: the leader of block 0 claims (the hand-out above) and passes the claim
// to block 1's leader through a two-slot channel in block 1's shared memory: the claim (st.shared::cluster), then an
// arrival on the slot's `sent` barrier there; block 1's leader reads it and arrives on the slot's `taken` barrier in
// block 0, which block 0 waits for before it writes the slot again. n: the block's n-th claim, slot n % 2.
struct PairChannel {
  int unit[2];
  uint64_t sent[2], taken[2];
};
template <int kCluster>
__device__ inline int pair_claim(PairChannel& ch, int* work, int n, int rank) {
  if constexpr (kCluster == 1) return atomicAdd(&work[0], 1);
  const int slot = n & 1;
  const uint32_t parity = (n >> 1) & 1;
  if (rank == 0) {
    if (n >= 2) mbar_wait_cluster(smem_addr(&ch.taken[slot]), parity ^ 1);
    const int u = atomicAdd(&work[0], 1);
    st_cluster(cluster_addr(smem_addr(&ch.unit[slot]), 1), u);
    mbar_arrive_cluster(cluster_addr(smem_addr(&ch.sent[slot]), 1));
    return u;
  }
  mbar_wait_cluster(smem_addr(&ch.sent[slot]), parity);
  const int u = *static_cast<volatile int*>(&ch.unit[slot]);
  mbar_arrive_cluster(cluster_addr(smem_addr(&ch.taken[slot]), 0));
  return u;
}

// The h2 columns a GEMM1 consumer warpgroup stores of a unit: its 64 kT weight rows from n0 + 64 kT wg on (gated:
// half as many h2 columns), none past N.
template <class C, int kT>
__device__ inline int unit_columns(const SmallMGemm& g, int64_t n0, int wg) {
  constexpr int kRows = 64 * kT;
  const int64_t left = g.N - (n0 + int64_t(kRows) * wg);
  const int rows = static_cast<int>(left < 0 ? 0 : left < kRows ? left : kRows);
  return C::kGateUp ? rows / 2 : rows;
}

// Persistent: each pair of blocks runs units as it claims them (above) until they run out.
// xs_map: fp8-block's X scales (unused for bf16, and in place). kInPlace: g.x_row gives each planned row's row of X,
// x_map's boxes are one row (produce).
// x_evict_last: the gathered X boxes (not the in-place rows, whose one-row boxes take no policy) are loaded
// L2::evict_last. Every N pair of an item reads the item's X again, while the weights stream through L2 once;
// without the policy the stream evicts X between the pairs that share it. (Session 74, H100, mixtral-8x7b at 1024
// tokens: GEMM1 read 2.45 GB from DRAM for 1.88 GB of weights, 2.28 GB with the policy.) X is workspace that the
// next forward rewrites. Same-run A/Bs on the H100: up to 1.036x at 256-2048 tokens, even elsewhere, but
// 0.996-0.997x at qwen3-30b-a3b's 8192 tokens, whichever GEMMs take the policy there. Capped at half the L2, the
// policy lost the gains where X is 59-117 MB (deepseek-v3 at 1024-2048 tokens, qwen3-30b-a3b at 2048): no cap.
// FUSEDMOE_X_EVICT_LAST=0 turns it off (launch_kernel).
template <class C, int kCluster, bool kInPlace>
__global__ void __launch_bounds__(kThreads, 1)
    wgmma_grouped_kernel(const __grid_constant__ CUtensorMap x_map, const __grid_constant__ CUtensorMap x_tail_map,
                         const __grid_constant__ CUtensorMap w_map, const __grid_constant__ CUtensorMap xs_map,
                         SmallMGemm g, RowPlan plan, bool x_evict_last) {
  extern __shared__ uint8_t smem_raw[];
  // 1024-byte aligned (the swizzled tiles); an offset into smem_raw, so that the compiler knows every
  // pointer below addresses shared memory.
  uint8_t* smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
  uint8_t* epi = smem + C::kStages * C::kStageBytes;
  uint64_t* full = reinterpret_cast<uint64_t*>(epi + kConsumers * kEpiBytes);
  uint64_t* empty = full + C::kStages;
  __shared__ ClaimQueue<int> queue;
  __shared__ PairChannel channel;
  __shared__ int item_count;  // the plan's items, from the producer's leader to the consumers
  const int rank = static_cast<int>(cluster_rank());
  const int n_pairs = static_cast<int>((g.N + kCluster * kSlabRows - 1) / (kCluster * kSlabRows));
  if (threadIdx.x < C::kStages) {
    mbar_init(&full[threadIdx.x], 1);                          // the producer's expect_tx, then the TMA bytes
    mbar_init(&empty[threadIdx.x], 4 * kConsumers * kCluster);  // each consumer warp of the pair, after its wgmma
  }
  if (threadIdx.x < 2) {
    mbar_init(&channel.sent[threadIdx.x], 1);
    mbar_init(&channel.taken[threadIdx.x], 1);
    mbar_init(&queue.posted[threadIdx.x], 1);                 // the producer's leader, once it has written the claim
    mbar_init(&queue.taken[threadIdx.x], 4 * kConsumers);     // each consumer warp, once it has read it
  }
  if (threadIdx.x == 128 * kConsumers) {
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(&x_map) : "memory");
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(&x_tail_map) : "memory");
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(&w_map) : "memory");
    if constexpr (C::kScaled) asm volatile("prefetch.tensormap [%0];\n" ::"l"(&xs_map) : "memory");
  }
  // The barriers' initialization is visible to the TMA unit (the async proxy) and to every thread of the pair.
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  if constexpr (kCluster == 1) __syncthreads();
  else cluster_sync();
  if constexpr (!C::kAwait) pdl_wait();
  if constexpr (C::kSignal) pdl_launch_dependents();  // GEMM2 may take the SMs this grid's blocks leave
  const uint32_t full_a = smem_addr(full), empty_a = smem_addr(empty);
  int32_t* const item_counts = plan.work_counters + kPlanCounterInts;  // (WgmmaOverlap)
  Ring<C::kStages> ring;
  if (threadIdx.x >= 128 * kConsumers) {
    setmaxnreg_dec<kProducerRegs>();
    // Alone, the producer warpgroup's other warps leave now; in a pair they wait for the cluster's last barrier.
    if (kCluster == 1 && threadIdx.x >= 128 * kConsumers + 32) return;
    const bool leader = threadIdx.x == 128 * kConsumers;
    int* work = plan.work_counters + (C::kAwait ? kSecondGemmCounters : 0);
    // The plan's item count: its first use follows the first claim's atomic, so that the two round trips overlap.
    int n_items = leader ? *static_cast<volatile int*>(plan.work_counters + 2) : 0;
    for (int n = 0; threadIdx.x < 128 * kConsumers + 32; ++n) {  // the producer warp
      const int slot = n & 1;
      int u = 0;
      if (leader) {
        if (n >= 2) mbar_wait(smem_addr(&queue.taken[slot]), ((n >> 1) - 1) & 1);  // claim n - 2 has been read
        u = pair_claim<kCluster>(channel, work, n, rank);
        if (n == 0) item_count = n_items;
        queue.unit[slot] = u;
        mbar_arrive(smem_addr(&queue.posted[slot]));
      }
      u = __shfl_sync(~0u, u, 0);
      if (n == 0) n_items = __shfl_sync(~0u, n_items, 0);
      if (u >= n_pairs * n_items) break;
      const Unit w = unit_at<C, kCluster>(g, plan, n_pairs, n_items, u, rank);
      if constexpr (C::kAwait)
        if (leader && w.rows > 0) await_item(item_counts + unit_item(n_pairs, n_items, u), g.K);
      if ((leader || kInPlace) && w.rows > 0)
        with_tile<C>(w.rows, [&](auto tok, auto t, auto tail) {
          produce<C, kCluster, decltype(tok)::value, decltype(t)::value, decltype(tail)::value, kInPlace>(
              x_map, x_tail_map, w_map, xs_map, static_cast<int>(g.K / C::kTileK), smem, full_a, empty_a, ring,
              static_cast<int32_t>(w.first), static_cast<int32_t>(C::kGateUp ? w.n0 / 16 : w.e * g.N + w.n0), rank,
              g.x_row, static_cast<int>(w.rows), w.e, x_evict_last);
        });
      __syncwarp();
    }
    if (leader && rank == 0) reset_claim_counters(work, int(gridDim.x) / kCluster);  // one claimer a pair
  } else {
    setmaxnreg_inc<kConsumerRegs>();
    uint8_t* my_epi = epi + (threadIdx.x >> 7) * kEpiBytes;
    float* my_products = reinterpret_cast<float*>(empty + C::kStages) + (threadIdx.x >> 7) * 2 * kProductFloats;
    int n = 0, u = 0;
    // A warp's first lane takes the claim for the warp (the read and the arrival in one thread's program order).
    const auto fetch_next = [&] {
      const int slot = n & 1;
      int claim = 0;
      if ((threadIdx.x & 31) == 0) {
        mbar_wait(smem_addr(&queue.posted[slot]), (n >> 1) & 1);
        claim = *static_cast<volatile int*>(&queue.unit[slot]);
        mbar_arrive(smem_addr(&queue.taken[slot]));
      }
      u = __shfl_sync(~0u, claim, 0);
      ++n;
    };
    fetch_next();
    const int n_items = __shfl_sync(~0u, (threadIdx.x & 31) == 0 ? *static_cast<volatile int*>(&item_count) : 0, 0);
    while (u < n_pairs * n_items) {
      const Unit w = unit_at<C, kCluster>(g, plan, n_pairs, n_items, u, rank);
      if (w.rows == 0) {
        fetch_next();
        continue;
      }
      // (consume takes the next claim into u before its epilogue: the unit's item is read now)
      const int item = C::kSignal ? unit_item(n_pairs, n_items, u) : 0;
      with_tile<C>(w.rows, [&](auto tok, auto t, auto tail) {
        consume<C, kCluster, decltype(tok)::value, decltype(t)::value, decltype(tail)::value, kInPlace>(
            g, smem, my_epi, my_products, full_a, empty_a, ring, w.e, w.n0, w.rows, w.first, fetch_next);
        if constexpr (C::kSignal)
          signal_item(item_counts + item, unit_columns<C, decltype(t)::value>(g, w.n0, threadIdx.x >> 7),
                      threadIdx.x >> 7);
      });
    }
  }
  if constexpr (C::kAwait) pdl_wait();  // GEMM1's grid has completed (see signal_item)
  pdl_launch_dependents();  // every thread that stays: the dependent launch waits for all of them (or their exit)
  // In a pair no block exits while its peer may still arrive on its barriers or write its channel.
  if constexpr (kCluster > 1) cluster_sync();
}

// fp8-block's X scales [KB, row_stride] (M-major, row_stride % 4 == 0) of `rows` rows with boxes of kScaleBox rows of
// one k group (zeros past the rows: the tensor's padding is never written).
CUtensorMap scales_map(const float* base, int64_t rows, int64_t row_stride, int64_t KB) {
  CUtensorMap map{};
  const cuuint64_t dims[2] = {cuuint64_t(rows), cuuint64_t(KB)};
  const cuuint64_t strides[1] = {cuuint64_t(row_stride) * 4};
  const cuuint32_t box[2] = {kScaleBox, 1};
  const cuuint32_t unit[2] = {1, 1};
  const CUresult r = tensor_map_encoder()(&map, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 2, const_cast<float*>(base), dims,
                                          strides, box, unit, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE,
                                          CU_TENSOR_MAP_L2_PROMOTION_NONE, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  FMOE_CHECK(r == CUDA_SUCCESS, "cuTensorMapEncodeTiled failed (", int(r), ") for scales [", KB, ", ", rows, "]");
  return map;
}

// The clusters of kCluster blocks the current device holds at once (one block per SM), asked once per device; also
// sets the kernel's shared-memory limit.
template <class C, int kCluster, bool kInPlace>
int resident_groups() {
  static std::atomic<int> known[kMaxDevices] = {};
  return once_per_device(known, "the wgmma grouped GEMM", [](int) {
    const auto kernel = wgmma_grouped_kernel<C, kCluster, kInPlace>;
    FMOE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kSmemBytes<C>)));
    cudaLaunchConfig_t config{};
    config.gridDim = dim3(kCluster);
    config.blockDim = dim3(kThreads);
    config.dynamicSmemBytes = kSmemBytes<C>;
    cudaLaunchAttribute cluster[1];
    cluster[0].id = cudaLaunchAttributeClusterDimension;
    cluster[0].val.clusterDim = {kCluster, 1, 1};
    config.attrs = cluster;
    config.numAttrs = 1;
    int n = 0;
    FMOE_CUDA_CHECK(cudaOccupancyMaxActiveClusters(&n, kernel, &config));
    return n;
  });
}

// Persistent: as many clusters as the device holds at once, or one per unit when there are fewer units.
template <class C, int kCluster, bool kInPlace = false>
void launch_kernel(const CUtensorMap& x_map, const CUtensorMap& x_tail_map, const CUtensorMap& w_map,
                   const CUtensorMap& xs_map, const SmallMGemm& g, const RowPlan& plan, cudaStream_t s) {
  const int64_t units = (g.N + kCluster * kSlabRows - 1) / (kCluster * kSlabRows) * plan.item_grid;
  const int groups = resident_groups<C, kCluster, kInPlace>();
  // The claims (32-bit) run one per cluster past the last unit.
  FMOE_CHECK(units + groups < (int64_t(1) << 31), "the wgmma grouped GEMM takes fewer than 2^31 units of work, got ",
             units);
  const auto blocks = static_cast<unsigned>(kCluster * std::min<int64_t>(units, groups));
  // Alone: a plain launch. (A cluster launch of one block with the pairs' cluster barriers, tried first, ran 1-3%
  // slower at 64-128 rows per expert; H200, session 32.)
  static const bool evict_last = [] {  // the kernel's x_evict_last; FUSEDMOE_X_EVICT_LAST=0 turns it off
    const char* v = std::getenv("FUSEDMOE_X_EVICT_LAST");
    return !(v && v[0] == '0');
  }();
  if constexpr (kCluster == 1)
    launch_with_smem(wgmma_grouped_kernel<C, 1, kInPlace>, dim3(blocks), dim3(kThreads), kSmemBytes<C>, s, x_map,
                     x_tail_map, w_map, xs_map, g, plan, evict_last);
  else
    launch_clustered(wgmma_grouped_kernel<C, kCluster, false>, dim3(blocks), dim3(kThreads), kCluster, kSmemBytes<C>, s,
                     x_map, x_tail_map, w_map, xs_map, g, plan, evict_last);
}

// The checks both element types share; `what` names the GEMM.
template <class C>
void check_gemm(const SmallMGemm& g, const RowPlan& plan, int64_t x_rows, int64_t num_experts, const char* what) {
  FMOE_CHECK(!g.act_epilogue || C::kGateUp, what, " takes no activation epilogue");
  FMOE_CHECK(!g.w_row_scales || C::kScaled, what, " takes weight row scales only with fp8 weights");
  FMOE_CHECK(g.K % C::kTileK == 0, what, " needs K % ", C::kTileK, " == 0, got K=", g.K);
  FMOE_CHECK(plan.items && plan.item_rows == C::kTileTokens, what, " needs a plan with work items of ",
             C::kTileTokens, " rows, got item_rows=", plan.item_rows);
  FMOE_CHECK(plan.work_counters, what, " needs the plan's work counters (RowPlan::work_counters)");
  FMOE_CHECK(g.N % 8 == 0, what, " needs N % 8 == 0 (16-byte output stores), got N=", g.N);
  FMOE_CHECK(!g.x_row || x_rows > 0, what, " reads rows in place (x_row) from x_rows > 0 rows of x, got ", x_rows);
  FMOE_CHECK(reinterpret_cast<uintptr_t>(g.y) % 16 == 0 && reinterpret_cast<uintptr_t>(g.x) % 16 == 0 &&
                 reinterpret_cast<uintptr_t>(g.w) % 16 == 0,
             what, " needs 16-byte aligned x, w and y");
  // (A pair's second slab may start up to 2 slabs of 256 rows past N.)
  FMOE_CHECK(x_rows + C::kTileTokens + kTailTokens < (int64_t(1) << 31) &&
                 num_experts * g.N + 4 * kSlabRows < (int64_t(1) << 31),
             what, " addresses rows with 32-bit TMA coordinates: got ", x_rows, " rows of x and ", num_experts * g.N,
             " weight rows");
}

// The bf16 instances of C on w_map: rows read in place, or gathered with the blocks alone or in pairs.
template <class C>
void launch_bf16(const CUtensorMap& w_map, const SmallMGemm& g, const RowPlan& plan, int64_t x_rows, bool pairs,
                 cudaStream_t s) {
  FMOE_CHECK(!(pairs && g.x_row), "the bf16 wgmma GEMM reads rows in place (x_row) with its blocks alone, not pairs");
  FMOE_CHECK(!(pairs && (C::kSignal || C::kAwait)),
             "the bf16 wgmma GEMMs run GEMM2 beside GEMM1 (WgmmaOverlap) with their blocks alone, not pairs");
  const CUtensorMap none{};
  if (g.x_row) {
    if constexpr (C::kAwait) FMOE_FAIL("the bf16 wgmma GEMM2 beside GEMM1 reads h2 in plan order, not rows in place");
    else launch_kernel<C, 1, true>(rows_map(g.x, x_rows, g.K, false, 1), none, w_map, none, g, plan, s);
    return;
  }
  const CUtensorMap x_map = rows_map(g.x, std::max<int64_t>(x_rows, 1), g.K, false, kXBox);
  const CUtensorMap x_tail_map = rows_map(g.x, std::max<int64_t>(x_rows, 1), g.K, false, kXTailBox);
  if constexpr (!C::kSignal && !C::kAwait)
    if (pairs) return launch_kernel<C, 2>(x_map, x_tail_map, w_map, none, g, plan, s);
  launch_kernel<C, 1>(x_map, x_tail_map, w_map, none, g, plan, s);
}

}  // namespace

void launch_bf16_wgmma_gemm(const SmallMGemm& g, const RowPlan& plan, int64_t x_rows, int64_t num_experts,
                            bool pairs, cudaStream_t s, WgmmaOverlap overlap) {
  if (plan.item_grid == 0) return;
  FMOE_CHECK(g.weights == SmallMWeights::bf16, "the bf16 wgmma GEMM takes bf16 weights");
  if (g.act_epilogue) {
    check_gemm<Bf16GateUpGemm>(g, plan, x_rows, num_experts, "the bf16 wgmma GEMM1 with the activation");
    FMOE_CHECK(is_sigmoid_gated(g.act.kind) && g.N % 16 == 0,
               "the bf16 wgmma GEMM1 with the activation takes a sigmoid-gated activation and N % 16 == 0, got N=",
               g.N);
    const CUtensorMap w_map =
        gated_rows_map(g.w, num_experts, g.N / 2, g.K, g.act.kind == ActivationKind::swiglu_oai, kWBox / 16);
    FMOE_CHECK(overlap != WgmmaOverlap::await, "the bf16 wgmma GEMM1 with the activation signals (WgmmaOverlap), "
               "it does not await");
    if (overlap == WgmmaOverlap::signal) launch_bf16<Bf16GateUpSignalGemm>(w_map, g, plan, x_rows, pairs, s);
    else launch_bf16<Bf16GateUpGemm>(w_map, g, plan, x_rows, pairs, s);
    return;
  }
  FMOE_CHECK(overlap != WgmmaOverlap::signal, "the bf16 wgmma GEMM signals its items' h2 (WgmmaOverlap) only with the "
             "activation in its epilogue");
  const CUtensorMap w_map = rows_map(g.w, num_experts * g.N, g.K, false, kWBox);
  check_gemm<Bf16Gemm>(g, plan, x_rows, num_experts, "the bf16 wgmma GEMM");
  if (overlap == WgmmaOverlap::await) launch_bf16<Bf16AwaitGemm>(w_map, g, plan, x_rows, pairs, s);
  else launch_bf16<Bf16Gemm>(w_map, g, plan, x_rows, pairs, s);
}

void launch_fp8_wgmma_gemm(const SmallMGemm& g, const RowPlan& plan, int64_t x_rows, int64_t num_experts,
                           cudaStream_t s) {
  if (plan.item_grid == 0) return;
  FMOE_CHECK(g.weights == SmallMWeights::fp8_block && g.x_scales && g.w_scales,
             "the fp8 wgmma GEMM takes fp8-block weights with their block scales and X's scales");
  check_gemm<Fp8BlockGemm>(g, plan, x_rows, num_experts, "the fp8 wgmma GEMM");
  const CUtensorMap w_map = rows_map(g.w, num_experts * g.N, g.K, true, kWBox);
  if (g.x_row) {
    const CUtensorMap none{};
    launch_kernel<Fp8BlockGemm, 1, true>(rows_map(g.x, x_rows, g.K, true, 1), none, w_map, none, g, plan, s);
    return;
  }
  FMOE_CHECK(reinterpret_cast<uintptr_t>(g.x_scales) % 16 == 0, "the fp8 wgmma GEMM needs 16-byte aligned x_scales");
  const int64_t rows = std::max<int64_t>(x_rows, 1);
  const CUtensorMap x_map = rows_map(g.x, rows, g.K, true, kXBox);
  const CUtensorMap x_tail_map = rows_map(g.x, rows, g.K, true, kXTailBox);
  const CUtensorMap xs_map = scales_map(g.x_scales, rows, m_major_scale_rows(rows), g.K / 128);
  launch_kernel<Fp8BlockGemm, 1>(x_map, x_tail_map, w_map, xs_map, g, plan, s);
}

}  // namespace fusedmoe::cuda
