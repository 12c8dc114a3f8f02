// Grouped GEMM for bf16 weights on Hopper's warpgroup tensor cores, the bf16 experts' path for many rows
// per expert when chosen (heuristics.h), in place of the CUTLASS grouped GEMM:
//   Y[r, n] = sum_k X[r, k] * W[e, n, k]  (+ bias[e, n]),  r in plan order (X's rows gathered beforehand)
// Swap-AB, as fp4_wgmma_gemm.cu, whose pipeline it shares (wgmma_pipeline.cuh): the weights are wgmma's A,
// the tokens of one plan item its B, both bf16 in shared memory (SS form). The token tile is wgmma's N, so
// an expert's last few rows take a 32-row tail beside a full item instead of a whole 128-row M tile of
// their own, as on the CUTLASS path (partly filled tiles cost it 7-36% of its GEMM time at the benchmark's
// routing, session 29).
// A block: one work item of the row plan (up to 256 rows of one expert, plus the expert's last 1-32 rows
// as a tail when they follow a full item) against 128 kT weight rows, in 3 warpgroups:
// - a thread of the producer warpgroup fills a 4-stage ring of k tiles (64 values) with TMA copies from two
//   tensor maps (X [rows, K] and W [E N, K]), K-major with the 128-byte swizzle wgmma reads;
// - two consumers, kT m64 tiles of weight rows each: m64nNk16 wgmma, N = the item's token tile, its rows
//   rounded up to 32 (at least 64; kT = 2 up to 128 rows, 1 above; + 32 for a tail);
// - the epilogue (store_tiles) reuses the ring once both consumers are done with it.
// Limits: K % 64 == 0, N % 8 == 0, x, w and y 16-byte aligned, rows addressed in 32 bits; plan items of 256
// rows.
#include <cuda.h>
#include <cudaTypedefs.h>

#include <algorithm>
#include <type_traits>

#include "cuda/cuda_util.h"
#include "cuda/kernels/kernels.h"
#include "cuda/kernels/launch.cuh"
#include "cuda/kernels/wgmma_pipeline.cuh"
#include "cuda/kernels/wgmma_util.cuh"

namespace fusedmoe::cuda {
namespace {

constexpr int kConsumers = kWgmmaConsumers;
constexpr int kThreads = 128 * (kConsumers + 1);  // + the producer warpgroup (the last)
constexpr int kSlabRows = 64 * kConsumers;        // weight rows of a block per m64 tile of each consumer
constexpr int kTileK = 64;                        // 128 bytes of a row: 4 k16 steps
constexpr int kStages = 4;
constexpr int kTileTokens = 256;
constexpr int kTailTokens = 32;
constexpr int kBlockTokens = kTileTokens + kTailTokens;
constexpr int kItemGroup = 8;  // plan items whose blocks run side by side (the block order below)
// Rows of the TMA boxes: X's (and 32-row boxes for a token tile's last 32 rows or a tail), W's (a block of kT = 1).
constexpr int kXBox = 64, kXTailBox = 32, kWBox = 128;

// A block's shape for items of up to kTok rows: kT m64 tiles of weight rows per consumer against kTok
// (+ kTail) tokens, every row 128 bytes of a k tile.
template <int kTok, int kT, int kTail = 0>
struct Shape {
  static constexpr int kBlockRows = kSlabRows * kT;
  static constexpr int kXBytes = (kTok + kTail) * kTileK * 2;
  static constexpr int kWBytes = kBlockRows * kTileK * 2;
  static constexpr int kStageBytes = kXBytes + kWBytes;
  static_assert(kXBytes % 1024 == 0 && kWBytes % 1024 == 0, "swizzled tiles start 1024-byte aligned");
};
constexpr int kStageBytes = Shape<kTileTokens, 1, kTailTokens>::kStageBytes;  // 52 KiB
static_assert(Shape<256, 1>::kStageBytes <= kStageBytes && Shape<128, 2>::kStageBytes <= kStageBytes);
// The stages, their full and empty barriers, 1024 bytes of alignment: 209 KiB.
constexpr size_t kSmemBytes = size_t(kStages) * kStageBytes + 2 * kStages * 8 + 1024;
static_assert(kSmemBytes <= 227 * 1024);
// A consumer's output tiles in the epilogue: (kTok + kTail) x 64 kT bf16, at most 36 KiB.
constexpr int kEpiBytes = kBlockTokens * 128;
static_assert(kConsumers * kEpiBytes <= kStages * kStageBytes && 128 * 2 * 128 <= kEpiBytes);
// setmaxnreg budgets: 40 x 128 + 232 x 256 <= 168 x 384, the launch's.
constexpr uint32_t kProducerRegs = 40, kConsumerRegs = 232;

template <int kTok>
__device__ inline void wgmma_ss(float (&d)[kTok / 2], uint64_t desc_a, uint64_t desc_b) {
  if constexpr (kTok == 256) wgmma_m64n256k16_ss(d, desc_a, desc_b);
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
// (x_row0 on, boxes of 64 rows, then 32) and the block's weight rows (w_row0 on, boxes of 128). Rows past the
// item or N hold other experts' rows, or zeros past the tensors: they meet accumulator columns or rows that are
// never stored.
template <int kTok, int kT, int kTail>
__device__ __forceinline__ void produce(const CUtensorMap& x_map, const CUtensorMap& x_tail_map,
                                        const CUtensorMap& w_map, int num_kt,
                                        uint8_t* smem, uint32_t full, uint32_t empty, int32_t x_row0,
                                        int32_t w_row0) {
  using S = Shape<kTok, kT, kTail>;
  const uint32_t base = smem_addr(smem);
  int st = 0;
  uint32_t empty_parity = 1;  // the parity of the stage's previous release, from the second round on
  for (int kt = 0; kt < num_kt; ++kt) {
    if (kt >= kStages) mbar_wait(empty + 8 * st, empty_parity);
    const uint32_t bar = full + 8 * st, xs = base + st * kStageBytes, ws = xs + S::kXBytes;
    mbar_arrive_expect_tx(bar, S::kStageBytes);
    const int32_t k = kt * kTileK;
#pragma unroll
    for (int j = 0; j < kTok / kXBox; ++j) tma_load_2d(xs + j * kXBox * 128, &x_map, k, x_row0 + kXBox * j, bar);
    // The rows past the last whole box (kTok % 64 == 32), then the tail's: 32-row boxes.
#pragma unroll
    for (int r = kTok / kXBox * kXBox; r < kTok + kTail; r += kXTailBox)
      tma_load_2d(xs + r * 128, &x_tail_map, k, x_row0 + r, bar);
#pragma unroll
    for (int j = 0; j < S::kBlockRows / kWBox; ++j)
      tma_load_2d(ws + j * kWBox * 128, &w_map, k, w_row0 + kWBox * j, bar);
    if (++st == kStages) {
      st = 0;
      empty_parity ^= 1;
    }
  }
}

// A consumer warpgroup: its kT m64 tiles of the block's weight rows against the item's kTok (+ kTail)
// token rows, all of k, then the epilogue into Y rows first_row .. first_row + rows - 1. A k tile's wgmma
// are one group; once the previous tile's group is done, its stage goes back to the producer: one arrival
// per consumer warp, as the consumers read the stages through wgmma alone (an arrival per thread timed the
// same, session 30).
template <int kTok, int kT, int kTail>
__device__ __forceinline__ void consume(const SmallMGemm& g, uint8_t* smem, uint32_t full, uint32_t empty, int e,
                                        int64_t n0, int64_t rows, int64_t first_row) {
  using S = Shape<kTok, kT, kTail>;
  const int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31;
  const int num_kt = static_cast<int>(g.K / kTileK);
  float acc[kT][kTok / 2];
  constexpr int kTailAcc = kTail ? kTail / 2 : 1;
  float tail[kT][kTailAcc];  // tokens kTok .. kTok + kTail - 1, laid out as acc's first kTail tokens
  zero_accumulators<kTok, kTail, kT, kTailAcc>(acc, tail);
  // Stage 0's descriptors: X, and this consumer's first m64 tile of W (tile t: 64 rows of 128 bytes on).
  // Stage s, k16 step i: + s kStageBytes / 16 + 2 i (the address field's unit is 16 bytes, and no address in
  // shared memory carries out of it).
  const uint32_t base = smem_addr(smem);
  const uint64_t x_desc0 = smem_desc_k_major_sw128(base);
  const uint64_t w_desc0 = smem_desc_k_major_sw128(base + S::kXBytes + 64 * kT * wg * 128);
  constexpr uint64_t kTileDesc = 64 * 128 / 16;
  int st = 0, prev_st = 0;
  uint32_t parity = 0;
  for (int kt = 0; kt < num_kt; ++kt) {
    mbar_wait(full + 8 * st, parity);
    const uint64_t off = uint64_t(st) * (kStageBytes >> 4);
    wgmma_fence();
#pragma unroll
    for (int i = 0; i < kTileK / 16; ++i)
#pragma unroll
      for (int t = 0; t < kT; ++t) {
        const uint64_t a = w_desc0 + off + t * kTileDesc + 2 * i;
        wgmma_ss<kTok>(acc[t], a, x_desc0 + off + 2 * i);
        // The tail's token rows follow the kTok rows in the stage (kTok 128-byte rows further).
        if constexpr (kTail > 0) wgmma_ss<kTail>(tail[t], a, x_desc0 + off + 2 * i + kTok * 8);
      }
    wgmma_commit();
    wgmma_wait<1>();  // tile kt - 1's group is done: the warpgroup's wgmma no longer read its stage
    if (kt > 0 && lane == 0) mbar_arrive(empty + 8 * prev_st);
    prev_st = st;
    if (++st == kStages) {
      st = 0;
      parity ^= 1;
    }
  }
  // The bias of the lane's rows, loaded while the last wgmma run.
  float bias[kT][2];
  load_row_bias<kT>(g, e, n0, 64 * kT * wg + 16 * warp + (lane >> 2), bias);
  drain_accumulators<kTok, kTail, kT, kTailAcc>(acc, tail);
  pdl_launch_dependents();
  consumers_bar();  // both consumers are done with the stages (and every copy into them has landed)
  store_tiles<kTok, kTail, kT, kTailAcc>(g, acc, tail, bias, 1.0f, smem + wg * kEpiBytes, n0 + 64 * kT * wg, rows,
                                        first_row);
}

template <int kTok, int kT, int kTail = 0>
__device__ __forceinline__ void bf16_wgmma_item(const CUtensorMap& x_map, const CUtensorMap& x_tail_map,
                                                const CUtensorMap& w_map,
                                                const SmallMGemm& g, uint8_t* smem, uint32_t full, uint32_t empty,
                                                int e, int64_t n0, int64_t rows, int64_t first_row) {
  if (threadIdx.x >= 128 * kConsumers) {
    setmaxnreg_dec<kProducerRegs>();
    if (threadIdx.x == 128 * kConsumers)
      produce<kTok, kT, kTail>(x_map, x_tail_map, w_map, static_cast<int>(g.K / kTileK), smem, full, empty,
                               static_cast<int32_t>(first_row), static_cast<int32_t>(e * g.N + n0));
  } else {
    setmaxnreg_inc<kConsumerRegs>();
    consume<kTok, kT, kTail>(g, smem, full, empty, e, n0, rows, first_row);
  }
}

__global__ void __launch_bounds__(kThreads, 1)
    bf16_wgmma_kernel(const __grid_constant__ CUtensorMap x_map, const __grid_constant__ CUtensorMap x_tail_map,
                      const __grid_constant__ CUtensorMap w_map, SmallMGemm g, RowPlan plan) {
  extern __shared__ uint8_t smem_raw[];
  // 1024-byte aligned (the swizzled tiles); an offset into smem_raw, so that the compiler knows every
  // pointer below addresses shared memory.
  uint8_t* smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + kStages * kStageBytes);
  uint64_t* empty = full + kStages;
  // Block order: groups of kItemGroup consecutive plan items, and within a group the N tiles outer, so that the
  // blocks running at once share their items' X rows and their weight rows in L2.
  const int n_tiles = static_cast<int>((g.N + kSlabRows - 1) / kSlabRows);
  const int group = static_cast<int>(blockIdx.x / unsigned(kItemGroup * n_tiles));
  const int in_group = static_cast<int>(blockIdx.x - unsigned(group * kItemGroup * n_tiles));
  const int group_items = min(kItemGroup, plan.item_grid - group * kItemGroup);
  const int item_index = group * kItemGroup + in_group % group_items, n_tile = in_group / group_items;
  pdl_wait();
  const auto [e, first, rows] = item_rows(plan.items[item_index], kTileTokens, kTailTokens);
  if (rows == 0) return;
  // Items of up to 128 rows take blocks of 256 weight rows.
  const int tiles = rows > 128 ? 1 : 2;
  const int64_t n0 = int64_t(n_tile) * kSlabRows * tiles;
  if (n0 >= g.N) return;
  if (threadIdx.x < kStages) {
    mbar_init(&full[threadIdx.x], 1);                  // the producer's expect_tx, then the TMA bytes
    mbar_init(&empty[threadIdx.x], 4 * kConsumers);    // each consumer warp, after its wgmma
  }
  if (threadIdx.x == 128 * kConsumers) {
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(&x_map) : "memory");
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(&x_tail_map) : "memory");
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(&w_map) : "memory");
  }
  // The barriers' initialization is visible to the TMA unit (the async proxy) and to every thread.
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  __syncthreads();
  const uint32_t full_a = smem_addr(full), empty_a = smem_addr(empty);
  // The token tile: the item's rows rounded up to 32 (64 up to 128 rows: blocks of 256 weight rows).
  const auto run = [&](auto tok, auto t, auto tail) {
    bf16_wgmma_item<decltype(tok)::value, decltype(t)::value, decltype(tail)::value>(
        x_map, x_tail_map, w_map, g, smem, full_a, empty_a, e, n0, rows, first);
  };
  using std::integral_constant;
  using I0 = integral_constant<int, 0>;
  using I1 = integral_constant<int, 1>;
  using I2 = integral_constant<int, 2>;
  if (rows > kTileTokens) run(integral_constant<int, kTileTokens>{}, I1{}, integral_constant<int, kTailTokens>{});
  else if (rows > 224) run(integral_constant<int, 256>{}, I1{}, I0{});
  else if (rows > 192) run(integral_constant<int, 224>{}, I1{}, I0{});
  else if (rows > 160) run(integral_constant<int, 192>{}, I1{}, I0{});
  else if (rows > 128) run(integral_constant<int, 160>{}, I1{}, I0{});
  else if (rows > 96) run(integral_constant<int, 128>{}, I2{}, I0{});
  else if (rows > 64) run(integral_constant<int, 96>{}, I2{}, I0{});
  else run(integral_constant<int, 64>{}, I2{}, I0{});
}

// A 2-D tensor map of bf16 rows [rows, K] (row-major) with boxes of box_rows x kTileK values, 128-byte swizzle.
CUtensorMap bf16_rows_map(const void* base, int64_t rows, int64_t K, uint32_t box_rows) {
  static const auto encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    FMOE_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found));
    FMOE_CHECK(found == cudaDriverEntryPointSuccess && fn, "the CUDA driver has no cuTensorMapEncodeTiled");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  CUtensorMap map{};
  const cuuint64_t dims[2] = {cuuint64_t(K), cuuint64_t(rows)};
  const cuuint64_t strides[1] = {cuuint64_t(K) * 2};
  const cuuint32_t box[2] = {kTileK, box_rows};
  const cuuint32_t unit[2] = {1, 1};
  const CUresult r = encode(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void*>(base), dims, strides, box,
                            unit, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  FMOE_CHECK(r == CUDA_SUCCESS, "cuTensorMapEncodeTiled failed (", int(r), ") for bf16 rows [", rows, ", ", K, "]");
  return map;
}

}  // namespace

void launch_bf16_wgmma_gemm(const SmallMGemm& g, const RowPlan& plan, int64_t x_rows, int64_t num_experts,
                            cudaStream_t s) {
  const int64_t max_items = plan.item_grid;
  if (max_items == 0) return;
  FMOE_CHECK(g.weights == SmallMWeights::bf16 && !g.act_epilogue && !g.w_row_scales,
             "the bf16 wgmma GEMM takes bf16 weights without an activation epilogue or row scales");
  FMOE_CHECK(!g.x_row, "the bf16 wgmma GEMM reads its rows in plan order (x_row must be null; gather them first)");
  FMOE_CHECK(g.K % kTileK == 0, "the bf16 wgmma GEMM needs K % ", kTileK, " == 0, got K=", g.K);
  FMOE_CHECK(plan.items && plan.item_rows == kTileTokens, "the bf16 wgmma GEMM needs a plan with work items of ",
             kTileTokens, " rows, got item_rows=", plan.item_rows);
  FMOE_CHECK(g.N % 8 == 0, "the bf16 wgmma GEMM needs N % 8 == 0 (16-byte output stores), got N=", g.N);
  FMOE_CHECK(reinterpret_cast<uintptr_t>(g.y) % 16 == 0 && reinterpret_cast<uintptr_t>(g.x) % 16 == 0 &&
                 reinterpret_cast<uintptr_t>(g.w) % 16 == 0,
             "the bf16 wgmma GEMM needs 16-byte aligned x, w and y");
  FMOE_CHECK(x_rows + kBlockTokens < (int64_t(1) << 31) && num_experts * g.N < (int64_t(1) << 31),
             "the bf16 wgmma GEMM addresses rows with 32-bit TMA coordinates: got ", x_rows, " rows of x and ",
             num_experts * g.N, " weight rows");
  const int64_t blocks = (g.N + kSlabRows - 1) / kSlabRows * max_items;
  FMOE_CHECK(blocks < (int64_t(1) << 31), "the bf16 wgmma GEMM takes fewer than 2^31 blocks, got ", blocks);
  const CUtensorMap x_map = bf16_rows_map(g.x, std::max<int64_t>(x_rows, 1), g.K, kXBox);
  const CUtensorMap x_tail_map = bf16_rows_map(g.x, std::max<int64_t>(x_rows, 1), g.K, kXTailBox);
  const CUtensorMap w_map = bf16_rows_map(g.w, num_experts * g.N, g.K, kWBox);
  FMOE_CUDA_CHECK(
      cudaFuncSetAttribute(bf16_wgmma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kSmemBytes)));
  launch_with_smem(bf16_wgmma_kernel, dim3(static_cast<unsigned>(blocks)), dim3(kThreads), kSmemBytes, s, x_map,
                   x_tail_map, w_map, g, plan);
}

}  // namespace fusedmoe::cuda
