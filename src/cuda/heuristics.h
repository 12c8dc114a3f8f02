// Path and tile choice of the CUDA modular experts, from what the host knows without a sync:
// the token count, top-k and the number of local experts. Kept apart from the kernels so it
// can be tuned from measurements alone. Correctness never depends on it: both paths handle
// any distribution of rows over experts.
#pragma once

#include <cstdint>
#include <optional>

#include "fusedmoe/quant.h"

namespace fusedmoe::cuda {

struct ExpertsPath {
  bool small_m = false;  // the row-plan kernels (mma.sync small-M; wgmma: fp4 and bf16 at 256, fp8 at 128) or CUTLASS
  int tile_tokens = 8;   // small-M: most rows per weight pass (8, 16, 32; 64: fp4 warp tiles; 128, 256: wgmma kernels)
  int64_t fp4_chunk_experts = 0;  // fp4 grouped path: experts dequantized at a time (0: by the budget)
  bool warp_tiles = false;        // small-M: a 16-row tile per warp instead of 4 warps splitting k
  bool fused_decode = false;      // bf16 decode: the fused decode kernel instead of the small-M chain
  int gemm_tile_m = 128;          // grouped path: 128-row cooperative tiles or 64-row pingpong tiles
  int gemm2_tile_m = 128;         // grouped path: GEMM2's tiles (gemm_tile_m, but for fp8-channel's short GEMM2)
  bool wgmma_pairs = false;       // the bf16 wgmma kernel: in pairs of blocks sharing each item's X rows
  bool fp4_persistent = false;    // the fp4 wgmma kernel: persistent blocks claiming units (SmallMGemm::persistent)
  bool warp_router = false;       // tests: the one-warp router even where the block router fits (choose_block_router)
  bool x_in_place = false;        // the bf16 / fp8 wgmma GEMM1 reads each row's token row where it lies, no gather
  bool fp4_gemm2_overlap = false;  // fp4 split-k GEMM2 starting in GEMM1's tail (Fp4DecodeOverlap; 1-token batches)
  int fp4_split_k_warps1 = 4;      // fp4 split-k blocks of 8-token tiles: warps splitting GEMM1's k (4 or 8)
  int fp4_split_k_warps2 = 4;      // ... GEMM2's k (SmallMGemm::split_k_warps)
};

// Decode batches of up to this many tokens on the bf16 and fp8 wgmma kernels: GEMM1 reads each planned row's token row
// where it lies (SmallMGemm::x_row, one-row TMA boxes) instead of after a gather pass, which at decode costs a launch
// and a dependent step for a few KiB (ExpertsPath::x_in_place; FUSEDMOE_X_IN_PLACE=0/1 overrides it). An expert has
// at most this many rows unless a token repeats it among its ids; the one-row boxes cost the TMA unit a request
// each, which at the batches of session 35's attempt (1024-8192 tokens, up to 288 rows an item) ran 2.0-4.6x slower.
// Session 58 (H200, same-run A/B against the gather): deepseek-v3 1.002-1.011x at 2-16 tokens; forced above 16,
// 0.98-1.00x at 24-64 tokens and 0.82x at mixtral-8x7b's 128 (16 rows an item). A bound on the average rows an
// expert instead gained 1.006-1.013x on H100 (qwen3-30b-a3b at 32-256 tokens, uniform routing) but lost 0.837x at
// 256 tokens under a skewed router (sessions 71-72): tokens bound every item's rows whatever the routing.
inline constexpr int64_t kWgmmaInPlaceMaxTokens = 16;

// fp4 weights run the fp4 wgmma kernel above this many rows per expert on average, the small-M kernel up to it
// (choose_experts_path; heuristics.cpp has the measurements).
inline constexpr double kFp4WgmmaAboveRowsPerExpert = 8.0;

// bf16 layers of at most this hidden size keep the bf16 wgmma kernel up to 2048 rows per expert, the others up to 512
// (choose_experts_path; heuristics.cpp has the measurements).
inline constexpr int64_t kBf16WgmmaNarrowHidden = 2048;

// weights: the scheme of the expert weights. fp4 weights never take the CUTLASS path (it needs a bf16
// copy of each expert): the small-M kernel up to 8 rows per expert, the fp4 wgmma kernel above. bf16
// weights take the bf16 wgmma kernel from 12 to 512 rows per expert (2048 where hidden_size <=
// kBf16WgmmaNarrowHidden), CUTLASS above; fp8-block, fp8-tensor and
// fp8-channel weights the fp8 wgmma kernel from 12 to 64 rows per expert, CUTLASS above. Below 12 rows per
// expert both take their wgmma kernel where the decode batch streams enough weights (wgmma_streams_decode), the
// small-M kernel otherwise.
// intermediate_size: GEMM2's K (0: unknown, GEMM2 takes GEMM1's tile). fp8_fast_accum: fp8-tensor and
// fp8-channel run CUTLASS's FP8FastAccum variants (FUSEDMOE_FP8_FAST_ACCUM=1), which keep 64-row tiles longer.
// hidden_size and w13_rows (GEMM1's output columns: 2 I gated, I otherwise): the layer's shape for the decode
// rule (0: unknown, small-M below 12 rows per expert).
ExpertsPath choose_experts_path(int64_t num_tokens, int top_k, int64_t num_local_experts,
                                QuantScheme weights = QuantScheme::bf16, int64_t intermediate_size = 0,
                                bool fp8_fast_accum = false, int64_t hidden_size = 0, int64_t w13_rows = 0);

// Decode batches (up to 12 rows per expert) of bf16 and fp8 weights run the wgmma kernels, whose TMA rings stream the
// weights at ~4.1 TB/s where the small-M kernels reach ~3.7 (H200, session 44), once the batch's expected active
// experts (E (1 - (1 - k/E)^tokens), routing taken as uniform) hold at least kWgmmaDecodeMinBytes of weights (bf16:
// kWgmmaDecodeMinBf16Bytes) and give each GEMM at least kWgmmaDecodeMinUnits units of 128 weight rows (a wave of blocks
// on an H100/H200 SXM). Below either, the gather and activation passes the wgmma path adds, and its blocks' coarser
// units, cost more than the faster stream gains. Where GEMM1 reads its rows in place (up to kWgmmaInPlaceMaxTokens
// tokens, no gather pass) the bounds are lower (session 58, same-run A/B against the small-M kernels, H200, 2 rounds):
// deepseek-v3 1.013x at 1 token (352 MB), qwen3-30b-a3b 1.055x / 1.038x at 10 / 12 tokens (574 / 651 MB),
// qwen3-30b-a3b-fp8 1.010x at 16 (389 MB) but 0.976x at 12 (341 MB) and 0.996x at 10 (291 MB). (The batched format,
// which keeps its gather, and FUSEDMOE_X_IN_PLACE=0 take the same bounds.)
inline constexpr double kWgmmaDecodeMinBytes = 500e6;      // fp8 weights
inline constexpr double kWgmmaDecodeMinBf16Bytes = 700e6;  // bf16: their small-M GEMM1 applies the activation too
inline constexpr double kWgmmaDecodeInPlaceMinBytes = 345e6;
inline constexpr double kWgmmaDecodeInPlaceMinBf16Bytes = 550e6;
inline constexpr double kWgmmaDecodeMinUnits = 132;
bool wgmma_streams_decode(int64_t num_tokens, int top_k, int64_t num_local_experts, QuantScheme weights,
                          int64_t hidden_size, int64_t w13_rows, int64_t intermediate_size);

// The experts of a scheme the fused decode kernel runs (bf16), monolithic and (since session 42) modular: that
// kernel for decode batches (up to kMaxFusedDecodeTokens tokens) where the chain would take the small-M kernel
// with split-k blocks (its tiles and order of k are the same, so the bits are the chain's), the chain otherwise.
// (Modular, session 42, same run against the chain: mixtral-8x7b 1.04 / 1.08 / 1.12 / 1.08 / 1.03x at 1 / 2 / 4 /
// 8 / 16 tokens; the modular forward keeps its plan and finalize kernels around it.)
// By default only for experts of at least kFusedDecodeMinExpertBytes of weights: its items are 16 weight rows, and
// short rows leave each block too little to stream per item (H200, session 37, same run against the chain:
// mixtral-8x7b, 336 MiB an expert, 1.05-1.12x at 1-8 tokens, 1.05x / 1.03x at 12 / 16; qwen3-30b-a3b, 9 MiB,
// 0.84-0.98x). Above 16 tokens its blocks hold 4 or 8 token tiles in registers, 3 an SM: mixtral 0.90x / 0.84x at
// 20 / 24 tokens, so the bound is 16. The mode comes from FUSEDMOE_FUSED_DECODE, read when the experts are built:
// "1" on wherever it can run, "0" off. A forced path (tests) overrides all.
inline constexpr int64_t kMaxFusedDecodeTokens = 16;
inline constexpr int64_t kFusedDecodeMinExpertBytes = int64_t(128) << 20;
enum class FusedDecodeMode { automatic, on, off };
FusedDecodeMode fused_decode_mode_from_env();
// An on/off switch from the environment: "1" true, "0" false, unset or empty nullopt (the path decides); anything
// else is a fusedmoe::Error naming the variable.
std::optional<bool> env_switch(const char* name);
// expert_bytes: one expert's weights (w13 and w2). wgmma_streams: wgmma_streams_decode holds for the batch; then,
// from kFusedDecodeWgmmaFrom + 1 tokens, the chain on the bf16 wgmma kernel takes the batch unless the mode is on
// (H200, session 44, same-run A/B against the fused decode kernel: mixtral-8x7b 1.032x / 1.022x / 1.024x / 1.045x /
// 1.035x at 9 / 10 / 11 / 12 / 16 tokens, 0.999x at 8, 0.93-0.98x at 2-4).
inline constexpr int64_t kFusedDecodeWgmmaFrom = 8;
bool choose_fused_decode(int64_t num_tokens, int top_k, int64_t num_local_experts, int64_t expert_bytes,
                         FusedDecodeMode mode, bool wgmma_streams = false);

// The monolithic chain's routing: route+plan in one launch (launch_route_plan) where its 256-thread
// block covers the batch — a warp per token, a thread per local expert and slot: up to 8 tokens —, the
// router and plan kernels otherwise, as the modular experts run them: route+plan's 1024-thread block was
// 0.4-6.5% slower than those two at 16 and 64 tokens (H200, session 21); the switch made the monolithic
// forward 1.007-1.062x faster at 64 tokens and within 1% of the modular one at 16 and 64 (session 22).
bool choose_route_plan_kernel(int64_t num_tokens, int top_k, int64_t num_local_experts, int num_experts);

// The router and route+plan kernels' block_router argument: true (deepseek-v3's groups of 32 experts take the block
// router, every other layout the one-warp router) up to kBlockRouterMaxTokens tokens, unless a forced path asks for
// the one-warp router. The block router's 8 warps a token finish one token sooner (3.2 against 5.1 us at 64 tokens)
// but issue about three times the one-warp router's instructions, which large batches pay for: deepseek-v3's router
// kernel alone (H200, session 61, kernel timelines, 20 replays each) took 3.3 / 4.3 / 5.4 / 8.5 / 14.6 / 27.3 / 52.2 us
// on the block router (since that session only its group-0 warp picks the top k; before, all 8 warps did it: 3.2 /
// 4.6 / 6.1 / 9.5 / 16.6 / 35.4 / 69.6 us) and 5.1 / 5.9 / 6.6 / 7.8 / 11.2 / 18.9 / 30.5 us on the one-warp router
// at 64 / 256 / 512 / 1024 / 2048 / 4096 / 8192 tokens. The two cross between 512 and 1024 tokens.
inline constexpr int64_t kBlockRouterMaxTokens = 640;
bool choose_block_router(int64_t num_tokens);

// fp4 weights on the grouped path: how many experts to dequantize to bf16 at a time, given one
// expert's bf16 bytes (the larger of w13 and w2) — whole experts within a 1 GiB scratch
// (FUSEDMOE_FP4_DEQUANT_MIB=n sets n MiB, 1 <= n <= 16384, else a clear error), at least one, at most
// all. Fixed per layer (it sizes the workspace): called at construction.
int64_t choose_fp4_chunk_experts(int64_t expert_bf16_bytes, int64_t num_local_experts);

// Tests and benchmarks force a path (both must be right for every input); null restores the
// heuristic. Not thread-safe: set it while no forward runs.
void set_experts_path_override(const ExpertsPath* path);

}  // namespace fusedmoe::cuda
