// See heuristics.h. Rows per expert on average decide: up to 12 the layer is bound by the
// weight stream and the small-M kernel reads each weight once per tile of rows; above, the
// CUTLASS grouped GEMM wins (measured on H200, bench/results: small-M with 32/64-row tiles
// ran at 12-38% of the floor where CUTLASS ran at 60-85%). fp4 weights stay on the small-M
// kernel up to 8 rows per expert and take the fp4 wgmma kernel above; their CUTLASS path (a bf16
// copy of the weights, 4 bytes written and read per value) is no longer chosen. bf16 weights take the
// bf16 wgmma kernel from 12 to 512 rows per expert (2048 for layers up to 2048 wide), fp8 weights the fp8
// wgmma kernel from 12 to 64; below 12, decode batches that stream enough weights take them too
// (wgmma_streams_decode), the small-M kernel the rest.
// The small-M kernel picks its shape (4 warps splitting k, or a tile per warp) by the routed rows (below).
#include "cuda/heuristics.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "cuda/kernels/kernels.h"
#include "fusedmoe/error.h"

namespace fusedmoe::cuda {
namespace {
bool g_overridden = false;
ExpertsPath g_override;
}  // namespace

void set_experts_path_override(const ExpertsPath* path) {
  g_overridden = path != nullptr;
  if (path) g_override = *path;
}

bool wgmma_streams_decode(int64_t num_tokens, int top_k, int64_t num_local_experts, QuantScheme weights,
                          int64_t hidden_size, int64_t w13_rows, int64_t intermediate_size) {
  if (hidden_size <= 0 || w13_rows <= 0 || intermediate_size <= 0 || num_local_experts <= 0) return false;
  const double miss = 1.0 - std::min(1.0, double(top_k) / double(num_local_experts));  // one token, one expert
  const double active = double(num_local_experts) * (1.0 - std::pow(miss, double(num_tokens)));
  const double value_bytes = weights == QuantScheme::bf16 ? 2.0 : 1.0;
  const double bytes = active * value_bytes * double(w13_rows + intermediate_size) * double(hidden_size);
  const double units = active * double(std::min((w13_rows + 127) / 128, (hidden_size + 127) / 128));
  const bool in_place = num_tokens <= kWgmmaInPlaceMaxTokens;  // (no gather pass)
  const double min_bytes = weights == QuantScheme::bf16
                               ? (in_place ? kWgmmaDecodeInPlaceMinBf16Bytes : kWgmmaDecodeMinBf16Bytes)
                               : (in_place ? kWgmmaDecodeInPlaceMinBytes : kWgmmaDecodeMinBytes);
  return bytes >= min_bytes && units >= kWgmmaDecodeMinUnits;
}

ExpertsPath choose_experts_path(int64_t num_tokens, int top_k, int64_t num_local_experts, QuantScheme weights,
                                int64_t intermediate_size, bool fp8_fast_accum, int64_t hidden_size,
                                int64_t w13_rows) {
  if (g_overridden) return g_override;
  const bool fp4_weights = weights == QuantScheme::nvfp4 || weights == QuantScheme::mxfp4;
  const double rows_per_expert = double(num_tokens) * top_k / double(num_local_experts > 0 ? num_local_experts : 1);
  ExpertsPath path;
  path.small_m = fp4_weights || rows_per_expert <= 12.0;  // fp4: small-M, or the fp4 wgmma kernel (below)
  path.tile_tokens = rows_per_expert <= 6.0 ? 8 : rows_per_expert <= 12.0 ? 16 : rows_per_expert <= 32.0 ? 32 : 64;
  // A 16-row tile per warp (64 rows per block, no split-k) from 16 routed rows on, for bf16 weights
  // only from 16-row tiles on (H200, bench/results, 2026-11-28). fp4: 10-30% faster at 16-1024 tokens
  // (gpt-oss-120b, qwen3-nvfp4); fp8-block: 5-6% at 16-64 tokens, 2% at 128, 18% at 256 (deepseek-v3);
  // bf16: 5% at qwen3's 128 tokens (16-row tiles), within +-2% at 8-row tiles. Below 16 routed rows a
  // layer with small experts (qwen3 at 1 token) gets too few blocks to fill the card: 4-8% slower.
  const bool quantized = weights != QuantScheme::bf16;
  // fp4 from 12 routed rows (session 83, H100, same-run A/B, 3 rounds, warp tiles from 8): gpt-oss-120b 1.067x at 3
  // tokens (12 rows), 0.948x at 2 (8 rows); qwen3-nvfp4 0.933x at 1 token (8 rows).
  const int64_t warp_tile_rows = fp4_weights ? 12 : 16;
  path.warp_tiles = path.small_m && num_tokens * top_k >= warp_tile_rows && (quantized || path.tile_tokens >= 16);
  // The bf16/fp8 kernel takes, per pass over an expert's weights, the smallest token tile that holds
  // its remaining rows, up to tile_tokens. fp8 warp tiles allow 32 rows: routed rows pile up on some
  // experts (deepseek-v3's grouped routing: ~7 rows per active expert at 128 tokens), and each pass
  // re-reads the weights — deepseek-v3 -12/-27/-15% at 64/128/256 tokens. bf16 and the split-k
  // blocks keep the tile above (the 32-row variant costs registers: +4% on qwen3 at 1 and 128
  // tokens, +10% on deepseek-v3 at 1 token; H200, bench/results, 2026-11-28).
  if (path.warp_tiles && scheme_quantizes_activations(weights)) path.tile_tokens = 32;  // every fp8 scheme
  // fp4 at 1 token: GEMM2's split-k blocks start in GEMM1's tail (Fp4DecodeOverlap: GEMM1's blocks let it launch right
  // after their pdl_wait, and it issues its first weight loads before its own, its plan written two launches back).
  // At 1 token GEMM2 runs 1.4 waves of blocks and GEMM1's tail leaves the DRAM idle (ncu at gpt-oss-120b: 1.0 TB/s).
  // Same-run A/B on H100 (session 78, 2 rounds; both GEMMs' split-k blocks overlapping at every batch that has them,
  // against main): 1.032x (gpt-oss-120b) and 1.033x (qwen3-nvfp4) at 1 token end to end, 1.003x / 0.998x at 2, 0.976x /
  // 1.016x at 3; the early trigger without the early loads 0.983-0.988x at 1 token. So 1-token batches take it.
  path.fp4_gemm2_overlap = fp4_weights && num_tokens == 1 && path.small_m && !path.warp_tiles;
  // fp4 split-k blocks of 8 warps (3 chunks a warp, 3 blocks an SM) instead of 4 (6 chunks, 4 blocks) at 1-2 tokens
  // where a row has more than 16 chunks (K > 2048): half the work a block, so the few waves of blocks a decode GEMM
  // makes leave a shorter tail. Same-run A/B on H100 (session 79, 2 rounds, both GEMMs forced to 8 warps): gpt-oss-120b
  // (K = 2880: 23 chunks) 1.072x at 1 token, 1.059x at 2, 0.992x at 3; qwen3-nvfp4 (K = 2048 and 768: 16 and 6 chunks,
  // 2 and 1 a warp) 0.959x at 1 token, 0.995-1.002x at 2-3.
  const auto split_k_warps = [&](int64_t k) {
    return fp4_weights && num_tokens <= 2 && path.small_m && !path.warp_tiles && path.tile_tokens == 8 && k > 2048
               ? 8
               : 4;
  };
  path.fp4_split_k_warps1 = split_k_warps(hidden_size);
  path.fp4_split_k_warps2 = split_k_warps(intermediate_size);
  // (fp4 warp tiles of 64 rows, session 13, ran above 32 rows per expert until the fp4 wgmma kernel below
  // replaced them; they stay a compiled, tested variant.)
  // The grouped GEMM's tile of token rows: up to 128 rows per expert, 64-row tiles (pingpong): 20% /
  // 14% / 6% faster for deepseek-v3 at 512 / 1024 / 2048 tokens (16 / 32 / 64 rows per expert), 11%
  // for mixtral at 512 (128 rows), 2-5% for qwen3-30b-a3b at 1024-2048; 3% slower only for mixtral at
  // 256 (64 rows). Above, 128-row tiles (cooperative): the 64-row ones cost 2% (bf16, qwen3) and 8%
  // (fp8-block, deepseek-v3) at 8192 tokens (256-512 rows per expert). H200, bench/results, 2026-11-29.
  // Session 28 moved two schemes' bounds (H200, same-run A/B, 2-3 rounds each). fp8-block takes the
  // 128-row tiles (clusters of two N tiles sharing A, since session 12) from 48 rows per expert on:
  // deepseek-v3 1.04-1.05x at 3072 tokens (96 rows), 1.08-1.13x at 4096 (128), 64-row tiles still ahead
  // at 1024 (1.5%) and 512 (6%); 2048 (64 rows) within its rounds' spread. fp8-tensor and fp8-channel on the
  // FP8FastAccum variants (64x256 and 128x256 tiles) keep 64-row tiles up to 512 rows per expert:
  // mixtral-8x7b-fp8 1.02-1.04x at 1024, 1536 and 2048 tokens (256-512 rows), the same at 3072-6144;
  // qwen3-30b-a3b-fp8-channel 1.026x / 1.019x / 1.002x at 3072 / 4096 / 8192 (192-512 rows). On the promoting
  // variants (64x128 and 128x128, the default since session 43) the bound is 128 rows, as bf16's: 128-row tiles
  // from 48 rows instead (same-run A/B, H200, 2 rounds) ran mixtral-8x7b-fp8 1.08x / 1.29x at 1024 / 2048
  // tokens (256 / 512 rows), 1.02x at 512 (128 rows), and qwen3-30b-a3b-fp8-channel 1.06x / 1.08x at 4096 / 8192
  // (256 / 512 rows) but 0.93x / 0.97x at 1024 / 2048 (64 / 128 rows).
  // Session 63 (H200, timing only; its sums were not yet right, and it was dropped): CUTLASS on each expert's whole
  // 128-row tiles and, in a second launch, the fp8 wgmma kernel on the rest of its rows, to save the padding of the
  // last tiles, ran 0.93x at deepseek-v3's 8192 tokens (1.004x / 0.987x at 3072 / 4096): in the kernel timeline the
  // second GEMM1 took 1.64 ms beside CUTLASS's 2.81 (4.35 ms alone), for it streams every expert's weights from DRAM
  // again.
  const bool fast_accum = fp8_fast_accum && (weights == QuantScheme::fp8_per_tensor ||
                                             weights == QuantScheme::fp8_per_channel);
  const double tile64_up_to = weights == QuantScheme::fp8_block ? 48.0 : fast_accum ? 512.0 : 128.0;
  path.gemm_tile_m = rows_per_expert <= tile64_up_to ? 64 : 128;
  // fp8-channel's GEMM2 over a short K (qwen3-30b-a3b: I = 768, 6 k blocks a tile) takes the 128-row tiles above
  // 128 rows per expert: a 64-row tile's mainloop there is too short to hide the epilogue's row broadcast of the
  // weight scales. Session 29 (H200, same-run A/B, 3 rounds, GEMM2 alone forced): 1.010x / 1.031x / 1.044x at
  // 2048 / 4096 / 8192 tokens (128-512 rows), 0.984x at 1024 (64). Not for K = 14336 (mixtral-8x7b-fp8-channel,
  // 0.984x / 0.997x at 256 / 512 rows) nor fp8-tensor on qwen3's shapes (0.97-0.98x, its epilogue a scalar);
  // the bound between 768 and 14336 is not measured.
  path.gemm2_tile_m = path.gemm_tile_m;
  if (weights == QuantScheme::fp8_per_channel && intermediate_size > 0 && intermediate_size <= 1024 &&
      rows_per_expert > 128.0)
    path.gemm2_tile_m = 128;
  // fp4 weights above 8 rows per expert: the wgmma kernel (fp4_wgmma_gemm.cu; 256-row plan items, the
  // small-M path's plan, gather and epilogue), which dequantizes in registers instead of writing a bf16
  // copy of the weights for CUTLASS. Same-run on H200 (session 14), against the path before it: gpt-oss-120b
  // 1.18x at 2048 tokens (64 rows per expert, small-M 64-row tiles), 1.67x at 4096, 1.33x at 8192;
  // qwen3-nvfp4 1.22x at 1024, 1.41-1.47x at 2048, 1.16-1.21x at 4096, 0.97-1.00x at 8192. Session 15:
  // with its 512-row blocks for items of up to 64 rows it beats the small-M kernel at 32 rows per expert
  // (gpt-oss-120b at 1024 tokens: 1.10-1.13x; qwen3-nvfp4 at 512: 1.02x).
  // Session 83 (H100, same-run A/Bs, 2 rounds; with the n = 32 shape for items of up to 32 rows) moved the bound
  // from 24 to 8 rows per expert: gpt-oss-120b 1.07x / 1.12x / 1.22x / 1.30x at 384 / 512 / 640 / 768 tokens (12-24
  // rows), qwen3-nvfp4 1.03x / 1.14x / 1.24x at 192 / 256 / 384 (12-24 rows); from 6 rows instead, 0.93x at both
  // models' 8 rows (gpt-oss-120b 256 tokens, qwen3-nvfp4 128).
  if (fp4_weights && rows_per_expert > kFp4WgmmaAboveRowsPerExpert) {
    path.small_m = true;
    path.warp_tiles = true;
    path.tile_tokens = 256;
    // Above 128 rows per expert, persistent blocks (fp4_wgmma_gemm.cu): same-run A/B on H200 (session 41), qwen3-nvfp4
    // 1.025x / 1.021x at 4096 / 8192 tokens, then with the producer's registers 1.024x more at 8192; gpt-oss-120b
    // 1.010x at 8192 (0.93x before that). Up to 128 rows (items of 64 and 128 rows run taller blocks in the one-unit
    // kernel, at n = 256 here) forcing it ran 0.55-0.63x (gpt-oss-120b) and 0.90x (qwen3-nvfp4) at 2048 tokens.
    path.fp4_persistent = rows_per_expert > 128.0;
  }
  // (Not at decode: forced from 1 to 256 tokens, the fp4 wgmma kernel ran 0.33-0.82x (gpt-oss-120b) and 0.33-0.85x
  // (qwen3-nvfp4) the small-M kernel, H200, session 44: its consumers dequantize 128 weight rows a unit for tokens
  // that fill a few of its 256 columns.)
  // bf16 weights from 24 (12 since session 44) to 512 rows per expert: the bf16 wgmma kernel (bf16_wgmma_gemm.cu;
  // the small-M path's plan and epilogue, X gathered first), whose token tiles follow each expert's rows in steps
  // of 32 where CUTLASS runs 64- or 128-row tiles. Same-run A/B on H200 against CUTLASS (session 30, 2 rounds):
  // mixtral-8x7b 1.065x / 1.042x / 1.091x at 256 / 512 / 1024 tokens (64 / 128 / 256 rows), 1.01x at 64-128;
  // qwen3-30b-a3b 1.01-1.03x at 512-1024 (within the rounds' spread), 1.00x at 1536, 1.045x at 2048 (128 rows).
  // Above 128 rows it runs in pairs of blocks that share each item's X rows (TMA multicast; session 32): L2
  // traffic as CUTLASS's 2-block clusters have it; mixtral 1.007-1.019x at 1024 tokens. Against CUTLASS above 256
  // rows (session 32, same-run A/Bs on several machines): qwen3 1.029-1.055x at 8192 tokens and mixtral
  // 0.990-1.014x at 2048 (512 rows); forced further, mixtral 0.93-1.00x at 4096 (1024 rows) and 0.90-0.97x at 8192
  // (2048 rows). At 64-128 rows the pairs lost (qwen3 0.96-0.98x at 2048 tokens: their items' X is the small
  // operand there).
  // Since session 44 from 12 rows per expert, where CUTLASS ran up to 24 (same-run A/B, H200, 2 rounds): mixtral-8x7b
  // 1.061x / 1.036x at 64 / 96 tokens (16 / 24 rows), qwen3-30b-a3b 1.079x at 256 (16); and below 12 rows by the decode
  // rule (wgmma_streams_decode, in place of the small-M kernel): mixtral-8x7b 1.12x / 1.12x / 1.23x at 24 / 32 / 48
  // tokens, qwen3-30b-a3b 1.00x / 1.03x / 1.02x at 14 / 16-17 / 20 tokens (731-884 MB of active weights) and 1.04-1.05x
  // at 64-128 (1.2 GB); below (qwen3 at 10-12 tokens, 574-651 MB) it was 0.994-1.019x, at 6-8 tokens 0.96x, at 2-4
  // 0.85-0.93x and at 1 0.72x. The final rule against the session's start (same run, 2 rounds): mixtral-8x7b 1.04x at
  // 12 and 16 tokens (the fused decode kernel gives way, choose_fused_decode), 1.10x at 32, 1.02x at 64; qwen3-30b-a3b
  // 1.02 / 1.03 / 1.04 / 1.04 / 1.05x at 16 / 32 / 64 / 128 / 256; every other point 0.997-1.003x.
  // Above 512 rows for narrow layers (hidden_size <= kBf16WgmmaNarrowHidden) too, up to 2048 rows: the kernel's
  // main loop runs a few percent behind CUTLASS's there, but its GEMM1 applies the activation, which saves the
  // activation kernel's pass over h — whose share of the step grows as the hidden size (the GEMMs' K and N per h
  // value) shrinks. Same-run A/B on H200 (session 61, 3 rounds; session 59 alike): qwen3-30b-a3b (hidden 2048)
  // 1.056 / 1.057 / 1.053 / 1.056x at 12288 / 16384 / 24576 / 32768 tokens (768-2048 rows), spreads 0.2-0.9%;
  // mixtral-8x7b (hidden 4096) 0.90-1.00x at 4096-16384 tokens (session 61: 0.90x at 12288, rounds 6% apart; 1.00x at
  // 16384), so it keeps CUTLASS there. A second narrow layer (session 62, gpu_bench's deepseek-v2-lite: 64 experts of
  // 2048 x 1408, top 6; 2 rounds): 1.056 / 1.028 / 1.043 / 1.055x at 8192 / 12288 / 16384 / 20480 tokens (768-1920
  // rows), spreads 0.1-0.3%.
  const double bf16_wgmma_up_to = hidden_size > 0 && hidden_size <= kBf16WgmmaNarrowHidden ? 2048.0 : 512.0;
  const bool decode_wgmma =
      rows_per_expert <= 12.0 &&
      wgmma_streams_decode(num_tokens, top_k, num_local_experts, weights, hidden_size, w13_rows, intermediate_size);
  if (weights == QuantScheme::bf16 && (rows_per_expert > 12.0 || decode_wgmma) && rows_per_expert <= bf16_wgmma_up_to) {
    path.small_m = true;
    path.warp_tiles = true;
    path.tile_tokens = 256;
    path.wgmma_pairs = rows_per_expert > 128.0;
    path.x_in_place = num_tokens <= kWgmmaInPlaceMaxTokens;  // (heuristics.h; wgmma_grouped_gemm.cu's numbers)
  }
  // fp8-block weights from 12 to 64 rows per expert: the fp8 wgmma kernel (wgmma_grouped_gemm.cu; 128-row plan items,
  // token tiles of 32-160 rows, each k tile's sums promoted with its scales). Same-run A/B on H200 against CUTLASS
  // (session 33, 2 rounds): deepseek-v3 1.03x / 1.08x / 1.10x / 1.04-1.05x at 512 / 1024 / 1536 / 2048 tokens (16-64
  // rows), 0.94x / 0.93-0.94x / 0.88-0.89x at 3072 / 4096 / 8192 (96-256 rows): CUTLASS's 128x128 tiles there are
  // 1.06-1.13x faster. Session 34 (profiled at 8192; wgmma_grouped_gemm.cu): the consumers' promotion bounds it; with
  // the scale products it runs at 0.97-0.99x CUTLASS at 4096 and 0.88x at 8192, so the bound stays at 64.
  // fp8-tensor too since session 43 (its weights run as block-scaled, every block of an expert one scale; same-run
  // A/B on H200, 2 rounds, against the promoting CUTLASS pair): mixtral-8x7b-fp8 1.11x / 1.06x / 1.28x at 64 / 128
  // / 256 tokens (16 / 32 / 64 rows), qwen3-30b-a3b-fp8 1.11x / 1.07x / 1.08x at 256 / 512 / 1024; faster than the
  // FP8FastAccum pair at each of those points too (1.01-1.07x), so whatever FUSEDMOE_FP8_FAST_ACCUM says.
  // fp8-channel too since session 44 (its weight row scales in the consumers' epilogue): qwen3-30b-a3b-fp8-channel
  // 1.10x / 1.07x / 1.07x at 256 / 512 / 1024 tokens, mixtral-8x7b-fp8-channel 1.06x at 128 and 256 (same-run A/B,
  // H200, 2 rounds; deepseek-v3's fp8-block kernel 1.00x with the larger epilogue).
  // Below 12 rows per expert by the decode rule since session 44 (same-run A/B against the small-M kernel, H200, 2
  // rounds): deepseek-v3 1.08x / 1.08x / 1.12x / 1.09x / 1.08x / 1.09x / 1.07x / 1.06x / 1.06x / 1.13x / 1.31x at 2 /
  // 3 / 4 / 6 / 8 / 10 / 12 / 16 / 64 / 128 / 256 tokens (1 token, 352 MB: 1.00x, left to small-M);
  // mixtral-8x7b-fp8 1.09x / 1.09x / 1.10x / 1.19x / 1.37x at 4 / 16 / 24 / 32 / 48 tokens, where at 1 and 2 tokens
  // (64 and 112 units of GEMM2) it lost 0.85x / 0.94x (fp8-channel alike); qwen3-30b-a3b-fp8 1.02x / 1.07x / 1.10x
  // at 32 / 96 / 128 tokens, 0.85-0.98x at 1-16 (389 MB and less; fp8-channel alike). The final rule against the
  // session's start (same run, 2 rounds): deepseek-v3 1.075 / 1.09 / 1.08 / 1.07 / 1.05 / 1.02 / 1.04 / 1.13 / 1.33x
  // at 2 / 4 / 8 / 12 / 16 / 32 / 64 / 128 / 256 tokens, mixtral-8x7b-fp8 1.08-1.09x at 4-16 and 1.16x at 32,
  // qwen3-30b-a3b-fp8-channel 1.04 / 1.04 / 1.11x at 32 / 64 / 128.
  const bool fp8_wgmma_weights = weights == QuantScheme::fp8_block || weights == QuantScheme::fp8_per_tensor ||
                                 weights == QuantScheme::fp8_per_channel;
  if (fp8_wgmma_weights && (rows_per_expert > 12.0 || decode_wgmma) && rows_per_expert <= 64.0) {
    path.small_m = true;
    path.warp_tiles = true;
    path.tile_tokens = 128;
    path.x_in_place = num_tokens <= kWgmmaInPlaceMaxTokens;
  }
  return path;
}

std::optional<bool> env_switch(const char* name) {
  const char* env = std::getenv(name);
  if (!env || !env[0]) return std::nullopt;
  FMOE_CHECK((env[0] == '0' || env[0] == '1') && env[1] == '\0', name, " must be 0 or 1, got '", env, "'");
  return env[0] == '1';
}

FusedDecodeMode fused_decode_mode_from_env() {
  const std::optional<bool> on = env_switch("FUSEDMOE_FUSED_DECODE");
  return !on ? FusedDecodeMode::automatic : *on ? FusedDecodeMode::on : FusedDecodeMode::off;
}

bool choose_fused_decode(int64_t num_tokens, int top_k, int64_t num_local_experts, int64_t expert_bytes,
                         FusedDecodeMode mode, bool wgmma_streams) {
  if (g_overridden) return g_override.fused_decode;
  if (mode == FusedDecodeMode::off) return false;
  if (mode == FusedDecodeMode::automatic && wgmma_streams && num_tokens > kFusedDecodeWgmmaFrom) return false;
  const ExpertsPath modular = choose_experts_path(num_tokens, top_k, num_local_experts, QuantScheme::bf16);
  const bool runs = num_tokens <= kMaxFusedDecodeTokens && modular.small_m && !modular.warp_tiles;
  return runs && (mode == FusedDecodeMode::on || expert_bytes >= kFusedDecodeMinExpertBytes);
}

bool choose_route_plan_kernel(int64_t num_tokens, int top_k, int64_t num_local_experts, int num_experts) {
  return num_tokens >= 1 && num_experts <= kMaxRoutePlanExperts &&
         route_plan_small_block(num_tokens, top_k, num_local_experts);
}

bool choose_block_router(int64_t num_tokens) {
  return !(g_overridden && g_override.warp_router) && num_tokens <= kBlockRouterMaxTokens;
}

int64_t choose_fp4_chunk_experts(int64_t expert_bf16_bytes, int64_t num_local_experts) {
  // FUSEDMOE_FP4_DEQUANT_MIB sets the budget (read on each call: the experts call this once, when built).
  // Fewer chunks make fewer, fuller grouped GEMMs: at 1024-8192 tokens (qwen3-nvfp4, gpt-oss-120b; H200,
  // 2026-11-29) 512 MiB was 1.03-1.07x faster than 256 MiB, and 1 GiB with the 32-bit dequantization
  // kernel 1.08-1.16x. At most 16 GiB: the dequantization kernel counts a chunk's words in 32 bits.
  int64_t budget = int64_t(1024) << 20;
  if (const char* env = std::getenv("FUSEDMOE_FP4_DEQUANT_MIB"); env && env[0]) {
    char* end = nullptr;
    const long long mib = std::strtoll(env, &end, 10);
    FMOE_CHECK(*end == '\0' && mib >= 1 && mib <= 16384,
               "FUSEDMOE_FP4_DEQUANT_MIB must be a whole number of MiB in [1, 16384], got '", env, "'");
    budget = int64_t(mib) << 20;
  }
  const int64_t n = g_overridden && g_override.fp4_chunk_experts > 0 ? g_override.fp4_chunk_experts
                                                                     : budget / std::max<int64_t>(expert_bf16_bytes, 1);
  return std::clamp<int64_t>(n, 1, std::max<int64_t>(num_local_experts, 1));
}

}  // namespace fusedmoe::cuda
