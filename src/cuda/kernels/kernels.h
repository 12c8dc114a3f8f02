// Launchers of the CUDA backend's kernels (one .cu file per role). Plain host signatures:
// device pointers, sizes, the stream. Every launcher checks the launch.
//
// Row plan: the rows of one forward are the valid (token, slot) pairs, grouped by local
// expert. Expert e owns rows [offsets[e], offsets[e+1]); within an expert the order of rows is
// not fixed (atomics), which changes no result: every row is computed on its own and the
// finalize sums each token's slots in slot order.
// Scales of grouped rows ("grouped M-major", what the CUTLASS block-scaled GEMM reads): the
// scale of row r (expert e, m = r - offsets[e]) and 128-group g sits at
// offsets[e] * G + g * counts[e] + m.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "core/route_token.h"
#include "fusedmoe/config.h"

namespace fusedmoe::cuda {

using bf16 = __nv_bfloat16;
using fp8 = __nv_fp8_e4m3;

inline constexpr int kMaxRouterExperts = 1024;
inline constexpr int kMaxPlanExperts = 4096;

// router.cu. block_router: deepseek-v3's layouts of groups of 32 experts (route_groups_fit) take the block router
// (route_groups.cuh) rather than the one-warp router of every other layout — the same picks and bits (false: tests
// compare the two).
void launch_route(const RoutingParams& p, const void* logits, bool logits_bf16, int64_t M, int32_t* ids,
                  float* weights, cudaStream_t s, bool block_router = true);

// plan.cu — device arrays of one forward's row plan.
// A work item of the row plan: rows first .. first + item_rows - 1 (within the expert) of local expert
// `expert`, whose rows start at plan row `offset` and number `count` (offsets[expert], counts[expert]).
struct alignas(16) PlanItem {
  int32_t expert, first, offset, count;
};

struct RowPlan {
  int32_t* counts;      // [E_local]
  int32_t* offsets;     // [E_local + 1]
  int32_t* active;      // [E_local]: local experts with rows, ascending, then -1
  int32_t* slot_rows;   // [M * k]: row of each (token, slot), -1 if it contributes nothing
  int32_t* row_token;   // [M * k]: token of each row
  int32_t* row_expert;  // [M * k]: local expert of each row (-1: a batched plan's unused row)
  // The small-M kernels' work items, when item_rows > 0: each active expert's rows cut into chunks of
  // item_rows (the kernels' token tile), one PlanItem per chunk, in expert order (at most
  // plan_max_items). A hot expert's chunks go to different blocks instead of one block running them
  // one after another. The entries past the last item, up to item_grid - 1, hold expert -1, so a
  // kernel's block row reads its item alone (one dependent read before the weights, not three:
  // the item count, the item, the expert's offset and count).
  PlanItem* items;
  int item_rows;
  int item_grid;  // the small-M grids' rows: plan_max_items(slots, num_local, item_rows)
  // [kPlanCounterInts + item_grid] (may be null without work items), which a plan with work items writes:
  // [0, 1] the persistent wgmma kernels' unit claims and finished blocks (wgmma_grouped_gemm.cu,
  // fp4_wgmma_gemm.cu), zeroed; [2] the plan's item count; [3, 4] the claims and finished blocks of a
  // second wgmma GEMM that runs beside the first (WgmmaOverlap), zeroed; then one count per work item of
  // the h2 columns that GEMM1 has written (WgmmaOverlap), zeroed.
  int32_t* work_counters;
};
inline constexpr int kPlanCounterInts = 5;
// Bound on the work items of a plan of num_slots slots: A active experts (A <= min(num_local,
// num_slots)) with c_e >= 1 rows make sum(ceil(c_e / item_rows)) <= A + (num_slots - A) / item_rows
// items, which grows with A. No more grid rows than active experts when num_slots <= num_local.
int64_t plan_max_items(int64_t num_slots, int64_t num_local, int item_rows);
// ids [M, k]; expert_map (device, may be null) maps global -> local or -1. scratch: device ints,
// plan_scratch_ints(M * k, num_local) of them (0 for decode-size batches: may then be null).
int64_t plan_scratch_ints(int64_t num_slots, int64_t num_local);
// zero (may be null): n_zero ints it sets to 0 before it returns (the fused decode kernel's counters; nothing
// in the plan reads them).
void launch_plan(const int32_t* ids, int64_t M, int top_k, int num_experts, const int32_t* expert_map,
                 int num_local, const RowPlan& plan, int32_t* scratch, cudaStream_t s, int32_t* zero = nullptr,
                 int64_t n_zero = 0);

// batched.cu: the batched format [E_local, T, K] (see the file). batch_pos [M, k]: the batch row
// e*T + position of each (token, slot), -1 where the slot has no local expert; a token's repeated
// id shares one row. counts [E_local]: rows used per expert.
void launch_batch_slots(const int32_t* ids, int64_t M, int top_k, int num_experts, const int32_t* expert_map,
                        int num_local, int64_t T, int32_t* batch_pos, int32_t* counts, cudaStream_t s);
// rows [M, row_bytes] (+ scales [M, G], may be null) -> out_rows [E_local * T, row_bytes] (+ out_scales
// [E_local * T, G]) at batch_pos; rows past a batch's count are left as they were.
void launch_batch_pack(const void* rows, int64_t row_bytes, const float* scales, int64_t G, const int32_t* batch_pos,
                       int64_t M, int top_k, void* out_rows, float* out_scales, cudaStream_t s);
// The plan of a batch (expert_num_tokens device [E_local]): offsets[e] = e*T, counts clamped to
// [0, T], row_token[r] = r, row_expert[r] = -1 on the unused rows (the row-wise kernels skip them);
// slot_rows is not touched.
void launch_batched_plan(const int32_t* expert_num_tokens, int num_local, int64_t T, const RowPlan& plan,
                         cudaStream_t s);

// route_plan.cu: routing (as launch_route) and the row plan (as launch_plan) in one
// single-block launch, for decode-size batches: 1 <= M <= kMaxRoutePlanTokens, num_local <= 1024,
// num_experts <= kMaxRoutePlanExperts.
inline constexpr int64_t kMaxRoutePlanTokens = 256;
inline constexpr int kMaxRoutePlanExperts = 256;
// Whether route+plan runs its 256-thread block (a warp per token, a thread per local expert and per
// slot) rather than its 1024-thread one.
inline constexpr bool route_plan_small_block(int64_t M, int top_k, int64_t num_local) {
  return num_local <= 256 && 32 * M <= 256 && M * top_k <= 256;
}
// zero (may be null): n_zero ints it sets to 0 first (the fused decode kernel's counters). beside_previous: the
// kernel launched just before it on s is one of fusedmoe's that passed its pdl_wait() before it let this one start
// (the activation quantizers: quantize.cu), and neither reads nor writes what this one does; then it routes and plans
// while that kernel runs (the logits are settled: launch.cuh) and waits for it only before it ends. block_router:
// as launch_route's.
void launch_route_plan(const RoutingParams& p, const void* logits, bool logits_bf16, int64_t M,
                       const int32_t* expert_map, int num_local, int32_t* ids, float* weights, const RowPlan& plan,
                       cudaStream_t s, int32_t* zero = nullptr, int64_t n_zero = 0, bool beside_previous = false,
                       bool block_router = true);

// quantize.cu
// x bf16 [M, K] -> q e4m3 [M, K] with f32 scales [M, K/128] (one per 1x128 group).
// row_weight (may be null): each row is first multiplied by row_weight[row] and rounded to
// bf16 (llama4's router weight on the input).
// static_scale (device f32, may be null; fp8-tensor): every group's scale is *static_scale.
// beside_previous: the kernel launched just before it on s is fusedmoe's router, which passed its pdl_wait() before
// it let this one start and neither reads nor writes what this one does (row_weight must be null); then it
// quantizes while the router runs (x and static_scale are settled: launch.cuh) and waits for it only before it ends.
void launch_quantize_fp8_block(const bf16* x, int64_t M, int64_t K, const float* row_weight,
                               const float* static_scale, fp8* q, float* scales, cudaStream_t s,
                               bool beside_previous = false);
// fp8-channel's dynamic per-token quantization: each row's scale is its amax / 448, repeated in each of
// the row's K/128 group slots (scales row-major [M, K/128]). beside_previous as above.
void launch_quantize_fp8_rows(const bf16* x, int64_t M, int64_t K, const float* row_weight, fp8* q, float* scales,
                              cudaStream_t s, bool beside_previous = false);
// out = bf16(x * row_weight[row]).
void launch_scale_rows(const bf16* x, int64_t M, int64_t K, const float* row_weight, bf16* out, cudaStream_t s);
// Gathers the input row of every planned row: dst[r] = src[row_token[r]] (row_bytes each);
// with scales, src_scales [M, G] row-major -> dst_scales grouped M-major, or M-major [G, scale_rows] when
// scale_rows > 0 (the fp8 wgmma GEMM's). max_rows = M * k. A plan with slot_rows and top_k > 0: a pass per
// token, which reads each source row once and writes its k rows, and (fp8) a pass per 32 planned rows that writes
// their scales; otherwise (the batched format's plan) a pass per planned row.
void launch_gather_rows(const void* src, int64_t row_bytes, const float* src_scales, int64_t G, const RowPlan& plan,
                        int num_local, int64_t max_rows, int top_k, void* dst, float* dst_scales, cudaStream_t s,
                        int64_t scale_rows = 0);
// The rows of an M-major scale tensor [G, rows] over `rows` rows: a multiple of 4 (16-byte rows for TMA).
inline int64_t m_major_scale_rows(int64_t rows) { return (rows + 3) / 4 * 4; }

// activation.cu: h bf16 [R, N1] (grouped rows) (+ bias f32 [E, N1] of the row's expert, when not
// null) -> out [R, I]: bf16, or e4m3 with grouped M-major scales per 1x128 group when out.scales is
// set — each group's amax / 448, *static_scale (device f32, fp8-tensor) when that is set, or the row's
// amax / 448 (per_row, fp8-channel).
struct ActivationOut {
  void* out;                            // [R, I] bf16 or e4m3
  float* scales = nullptr;              // e4m3 out: grouped M-major [R, I/128]
  const float* static_scale = nullptr;  // e4m3 out: the static scale, else dynamic per group
  bool per_row = false;                 // e4m3 out: one dynamic scale per row (fp8-channel), I % 128 == 0
  int64_t scale_rows = 0;               // e4m3 out: > 0: scales M-major [I/128, scale_rows] instead (fp8 wgmma GEMM)
};
void launch_activation(const Activation& act, const bf16* h, const float* bias, int64_t I, const RowPlan& plan,
                       int num_local, int64_t max_rows, const ActivationOut& out, cudaStream_t s);

// small_m_gemm.cu / small_m_gemm_fp4.cu: the decode path. Y[r, n] = sum_k X[src(r), k] * W[e, n, k]
// (+ bias[e, n]) for the rows r of each active expert, streaming W once per tile_tokens rows,
// tensor cores via mma.sync.
enum class SmallMWeights : uint8_t {
  bf16,       // bf16 W, bf16 X
  fp8_block,  // e4m3 W with f32 scales per 128x128 block, e4m3 X with f32 scales per 1x128 group
  nvfp4,      // packed e2m1 W, e4m3 scale per 16 values of a row, f32 global scale per expert; bf16 X
  mxfp4,      // packed e2m1 W, ue8m0 scale per 32 values of a row; bf16 X
};
struct SmallMGemm {
  const void* x;              // bf16 or e4m3 rows [*, K]
  const int32_t* x_row;       // source row of each planned row (row_token), or null: row r itself
  const float* x_scales;      // fp8: [*, K/128] row-major when x_row is set, grouped M-major otherwise
  const void* w;              // [E, N, K] bf16 or e4m3; fp4: [E, N, K/2] bytes, element 2i in the low nibble
  const float* w_scales;      // fp8: [E, ceil(N/128), K/128]
  const uint8_t* w_fp4_scales;  // fp4: [E, N, K/16] e4m3 (nvfp4) or [E, N, K/32] ue8m0 (mxfp4)
  const float* w_global;      // nvfp4: [E]
  const float* bias;          // optional f32 [E, N]
  bf16* y;                    // [R, N] grouped rows
  int64_t N, K;
  SmallMWeights weights;
  bool warp_tiles = false;     // each warp its own 16-row tile over all of k (64 rows per block), no split-k
  bool persistent = false;     // the fp4 wgmma kernel: persistent blocks claiming units (fp4_wgmma_gemm.cu)
  int split_k_warps = 4;       // fp4 split-k blocks of 8-token tiles: 4 or 8 warps splitting k (small_m_gemm_fp4.cu)
  bool split_k_fit = false;    // fp4 split-k blocks of 4 warps: U fitted to rows of up to 8 or 16 chunks (more blocks)
  // GEMM1 with the activation in its epilogue (bf16 and fp4 weights, split-k 8-token tiles; the persistent fp4 wgmma
  // kernel and the bf16 wgmma kernel, sigmoid-gated activations): y is h2. A gated activation pairs rows — a tile's
  // rows gq and gq + 8 are the gate and up rows of h2 column n0 / 2 + gq (the wgmma kernels: + 8 per 16 rows), h2
  // [R, N / 2] —; relu2 keeps them, h2 [R, N] (act_epilogue.cuh; wgmma_pipeline.cuh's store_gated_tiles).
  bool act_epilogue = false;
  Activation act{};
  // fp8 weights with a scale per row (fp8-channel, f32 [E, N]; its block scales are 1): the sums are
  // multiplied by their row's scale before the bias.
  const float* w_row_scales = nullptr;
  // Rows of x when x_row is null (0: not given). The persistent fp4 wgmma kernel loads such x by TMA (its map).
  int64_t x_rows = 0;
};
// The token tile whose split-k small-M kernels carry the activation epilogue (act_epilogue.cuh).
inline constexpr int kActEpilogueTileTokens = 8;
// The tile_tokens (plan items of 256 rows) by which launch_small_m_gemm runs fp4 weights on the wgmma kernel.
inline constexpr int kFp4WgmmaTileTokens = 256;
// The fp4 split-k blocks' part in GEMM2 starting in GEMM1's tail (ExpertsPath::fp4_gemm2_overlap, 1-token batches):
// early_trigger: the blocks let the next launch start right after their pdl_wait (else after their pass);
// plan_settled: the plan was written two launches back or more (launch.cuh), as for GEMM2, so the blocks read their
// item and issue their first weight loads before they wait on the previous grid. Other kernels ignore both.
struct Fp4DecodeOverlap {
  bool early_trigger = false;
  bool plan_settled = false;
};
// A block row per work item of the plan (plan.item_rows == tile_tokens): plan.item_grid rows.
void launch_small_m_gemm(const SmallMGemm& g, const RowPlan& plan, int tile_tokens, cudaStream_t s,
                         Fp4DecodeOverlap overlap = {});
// small_m_gemm_fp4.cu (launch_small_m_gemm calls it for the fp4 formats). Limits: K % 32 == 0.
// tile_tokens kFp4WgmmaTileTokens (fp4 only) runs launch_fp4_wgmma_gemm.
void launch_small_m_gemm_fp4(const SmallMGemm& g, const RowPlan& plan, int tile_tokens, cudaStream_t s,
                             Fp4DecodeOverlap overlap = {});
// GEMM2 starting on the SMs that GEMM1's blocks leave (the bf16 wgmma GEMMs' blocks alone, the persistent fp4 wgmma
// kernel): GEMM1 (signal, with the gated activation in its epilogue) adds the h2 columns of each unit it has stored to
// its plan item's count (RowPlan::work_counters) and lets the next launch start at once; GEMM2 (await, X = h2 in plan
// order) loads an item's rows once the count has reached its K and waits for GEMM1's grid only before it ends.
enum class WgmmaOverlap { none, signal, await };
// fp4_wgmma_gemm.cu: the same product for many rows per expert, on wgmma (sm_90a), weights dequantized
// in registers; plan items of 256 rows. Limits: K % 64 == 0; overlap in the persistent kernel alone.
void launch_fp4_wgmma_gemm(const SmallMGemm& g, const RowPlan& plan, cudaStream_t s,
                           WgmmaOverlap overlap = WgmmaOverlap::none);
// wgmma_grouped_gemm.cu: the bf16 product on wgmma for many rows per expert, plan items of 256 rows, X's rows in
// plan order (x_row null) — x_rows of them —, or read where they lie (x_row set: planned row r reads X row x_row[r]
// of x_rows, one-row TMA boxes; decode batches, ExpertsPath::x_in_place), W [num_experts, N, K]; pairs (never with
// x_row): in clusters of two blocks that share each item's X rows (ExpertsPath::wgmma_pairs). Limits: K % 64 == 0,
// N % 8 == 0; overlap with the blocks alone, not pairs.
void launch_bf16_wgmma_gemm(const SmallMGemm& g, const RowPlan& plan, int64_t x_rows, int64_t num_experts, bool pairs,
                            cudaStream_t s, WgmmaOverlap overlap = WgmmaOverlap::none);
// The same for fp8-block weights: plan items of 128 rows, X e4m3 with its scales x_scales M-major,
// [K/128, m_major_scale_rows(x_rows)] (launch_gather_rows and launch_activation write them so when asked); with
// x_row, X's own rows and their scales row-major [x_rows, K/128].
// Limits: K % 128 == 0, N % 8 == 0.
void launch_fp8_wgmma_gemm(const SmallMGemm& g, const RowPlan& plan, int64_t x_rows, int64_t num_experts,
                           cudaStream_t s);

// fp4_dequant.cu: experts [e0, e0 + count) of packed fp4 weights W [E, N, K/2] -> bf16 [count, N, K]
// (the grouped-GEMM path of fp4 weights): value * group scale (* global scale for nvfp4), rounded
// once to bf16. Limits: K % 32 == 0.
void launch_dequant_fp4(SmallMWeights format, const uint8_t* w, const uint8_t* scales, const float* global, int64_t e0,
                        int64_t count, int64_t N, int64_t K, bf16* out, cudaStream_t s);
// fp4_pack.cu: packed fp4 weights (`bytes` of them, whole tiles of 16 rows of row_bytes, row_bytes % 16 == 0) from the
// checkpoint's order to the sm90 packing every fp4 kernel reads (formats.h, fp4_util.cuh), in place.
void launch_pack_fp4_sm90(void* w, int64_t bytes, int64_t row_bytes, cudaStream_t s);
// y[r, n] += bias[row_expert[r], n] for the planned rows (the w2 bias of the grouped-GEMM path).
void launch_add_expert_bias(bf16* y, int64_t N, const float* bias, const RowPlan& plan, int num_local,
                            int64_t max_rows, cudaStream_t s);

// decode_fused.cu: the decode forward of bf16 experts on a row plan with work items of
// fused_decode_item_rows(M) rows (the launch that builds the plan zeroes the counters) — GEMM1 with the
// activation in its epilogue, GEMM2 and, when out is set, the weighted top-k reduce, in one launch (see the
// file). Equal bit for bit to the small-M chain (GEMM1, activation, GEMM2, finalize).
struct FusedDecode {
  const bf16* x;               // [M, K] expert input (plan.row_token gives each row's token)
  const bf16* w13;             // [E, N1, K]
  const bf16* w2;              // [E, K, I]
  const float* b13;            // optional f32 [E, N1]
  const float* b2;             // optional f32 [E, K]
  const float* topk_weights;   // [M, k], or null: unweighted (applied on the input)
  Activation act;
  int64_t M, K, I;
  int top_k, max_items;        // max_items: plan.item_grid, the entries of plan.items that may be >= 0
  bf16* h2;                    // workspace [M * k, I]
  bf16* y;                     // workspace [M * k, K]: the experts' rows in plan order
  bf16* out;                   // [M, K], or null: no reduce (the modular experts return y)
  int32_t* counters;           // fused_decode_counters(max_items, K) ints, zero at launch
  int32_t* done_a;             // = counters + 1
  int32_t* done_b;             // = counters + 1 + max_items
};
int64_t fused_decode_counters(int max_items, int64_t K);
inline constexpr int64_t kMaxFusedDecodeRows = 64;  // tokens (M) the fused decode kernel takes
// The rows of the plan's work items for the kernel (RowPlan::item_rows): the token tiles it holds in
// registers for M tokens, 8, 16, 32 or 64. An expert with more rows (ids repeated in a token) takes
// several items, each streaming its weights.
int fused_decode_item_rows(int64_t M);
// sm_count sizes the grid (up to 4 blocks an SM, decode_fused.cu).
void launch_fused_decode(const FusedDecode& f, const RowPlan& plan, int sm_count, cudaStream_t s);

// finalize.cu: out[t] = bf16(sum_j w[t, j] * rows[slot_rows[t, j]]) in slot order (f32);
// weights == null means unweighted (the weight was applied on the input). settled: slot_rows and
// weights were written two launches back or more (launch.cuh), as after the experts' GEMMs.
void launch_finalize(const bf16* rows, const int32_t* slot_rows, const float* weights, int64_t M, int top_k,
                     int64_t K, bf16* out, cudaStream_t s, bool settled = false);
// The same sums, unrounded f32 (the partial sums of an expert-parallel rank).
void launch_finalize_f32(const bf16* rows, const int32_t* slot_rows, const float* weights, int64_t M, int top_k,
                         int64_t K, float* out, cudaStream_t s);

// ep_dispatch.cu: expert-parallel slabs (see the file's header). Record sections, in bytes.
struct EpRecord {
  int64_t row_bytes = 0, scale_cols = 0;  // activation row; f32 scales per record (0: none)
  int64_t scales_at = 0, ids_at = 0, weights_at = 0, bytes = 0;
  static EpRecord make(int64_t row_bytes, int64_t scale_cols, int top_k);
  // T records and the 16-byte header holding how many are used.
  __host__ __device__ int64_t slab_bytes(int64_t T) const { return T * bytes + 16; }
};
// The all-to-all over a PeerWindow (stores over NVLink instead of NCCL). Each rank's window holds
// 2n signal words (dispatch from rank r at word r, combine at word n + r), then two parities
// (alternate calls) of the dispatch slabs [n, slab] and of the partial sums [n, T, K] bf16; block
// r is written by rank r. state (this rank's, device): {dispatch calls, pack blocks done, combine
// calls, put blocks done}, zero at first. peers == null: NCCL carries the exchange instead.
struct EpPeer {
  void* const* peers = nullptr;  // [ranks] device array (PeerWindow::peers)
  int rank = 0, ranks = 0;
  int64_t dispatch_at = 0, combine_at = 0;                  // byte offsets in the window
  int64_t dispatch_parity_bytes = 0, combine_parity_bytes = 0;
  uint32_t* state = nullptr;
  int64_t timeout_ns = 0;  // a wait for a peer's signal longer than this traps the kernel
};
// pos [M, D]: slot of token t in destination d's slab or -1; counts [D]. owner (device [E],
// rank of each global expert) null: one destination taking every token in order.
void launch_ep_plan(const int32_t* ids, int64_t M, int top_k, int num_experts, const int32_t* owner, int D,
                    int32_t* pos, int32_t* counts, cudaStream_t s);
// rows [M, row_bytes], scales [M, scale_cols] (may be null when none), ids/weights [M, top_k]
// (weights may be null: 0) -> send [D, slab], or with peer.peers straight into every rank's
// window (this call's parity, block rank), then signals them.
void launch_ep_pack(const EpRecord& rec, const void* rows, const float* scales, const int32_t* ids,
                    const float* weights, int64_t M, int top_k, const int32_t* pos, const int32_t* counts, int D,
                    int64_t T, void* send, const EpPeer& peer, cudaStream_t s);
// A rank's own block of an exchange, which never travels: block `index` is read from `at`
// instead of the received buffer (index -1: none).
struct EpOwn {
  const void* at = nullptr;
  int index = -1;
};
// recv [num_sources, slab] (slab own.index at own.at; with peer.peers, this rank's window once
// each source has signalled) -> rows [num_sources * T, row_bytes], scales, ids (-1 past a slab's
// count), weights (0 there).
void launch_ep_unpack(const EpRecord& rec, const void* recv, EpOwn own, int num_sources, int64_t T, int top_k,
                      void* rows, float* scales, int32_t* ids, float* weights, const EpPeer& peer, cudaStream_t s);
// Peer windows: this rank's partial sums [n * T, K] (block d for rank d) into block `rank` of every
// other rank's window (rows past the count of tokens rank d sent are skipped), then signals them.
void launch_ep_put(const EpRecord& rec, const bf16* partial, int64_t T, int64_t K, const EpPeer& peer,
                   cudaStream_t s);
// out [M, K] bf16 = sum over d of partial[d * T + pos[t, d]] ([D * T, K], f32 or bf16; block
// own.index, [T, K], at own.at; with peer.peers, the partial sums are this rank's window once
// every other rank has signalled), f32 sums.
void launch_ep_combine(const float* partial, EpOwn own, const int32_t* pos, int64_t M, int D, int64_t T, int64_t K,
                       bf16* out, cudaStream_t s);
void launch_ep_combine(const bf16* partial, EpOwn own, const int32_t* pos, int64_t M, int D, int64_t T, int64_t K,
                       bf16* out, const EpPeer& peer, cudaStream_t s);
// Element-wise casts of n values (the monolithic expert-parallel partial outputs).
void launch_bf16_to_f32(const bf16* src, int64_t n, float* dst, cudaStream_t s);
void launch_f32_to_bf16(const float* src, int64_t n, bf16* dst, cudaStream_t s);

}  // namespace fusedmoe::cuda
