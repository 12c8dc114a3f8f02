// See heuristics.h. Rows per expert on average decide: up to 12 the layer is bound by the
// weight stream and the small-M kernel reads each weight once per tile of rows; above, the
// CUTLASS grouped GEMM wins (measured on H200, bench/results: small-M with 32/64-row tiles
// ran at 12-38% of the floor where CUTLASS ran at 60-85%). fp4 weights stay on the small-M
// kernel up to 32 rows per expert (32-row tiles): the grouped path's dequantization pass writes
// and reads 4 bytes per weight value, which at 1024 tokens cost more than the GEMMs (H200).
// fp4 small-M picks its tile shape by the routed rows (below).
#include "cuda/heuristics.h"

#include <algorithm>

namespace fusedmoe::cuda {
namespace {
bool g_overridden = false;
ExpertsPath g_override;
}  // namespace

void set_experts_path_override(const ExpertsPath* path) {
  g_overridden = path != nullptr;
  if (path) g_override = *path;
}

ExpertsPath choose_experts_path(int64_t num_tokens, int top_k, int64_t num_local_experts, bool fp4_weights) {
  if (g_overridden) return g_override;
  const double rows_per_expert = double(num_tokens) * top_k / double(num_local_experts > 0 ? num_local_experts : 1);
  ExpertsPath path;
  path.small_m = rows_per_expert <= (fp4_weights ? 32.0 : 12.0);
  path.tile_tokens = rows_per_expert <= 6.0 ? 8 : rows_per_expert <= 12.0 ? 16 : 32;
  // fp4: a 16-row tile per warp (64 rows per block, no split-k) from 16 routed rows on: 10-30% faster
  // at 16-1024 tokens on gpt-oss-120b and qwen3-nvfp4, but 8% slower at 1 token on qwen3 (8 rows), whose
  // small experts then give too few blocks to fill the card (H200, bench/results, 2026-11-28).
  path.fp4_warp_tiles = fp4_weights && num_tokens * top_k >= 16;
  return path;
}

bool choose_fused_decode(int64_t num_tokens, int top_k, int64_t num_local_experts) {
  if (g_overridden) return g_override.fused_decode;
  return num_tokens <= kMaxFusedDecodeTokens && choose_experts_path(num_tokens, top_k, num_local_experts).small_m;
}

int64_t choose_fp4_chunk_experts(int64_t expert_bf16_bytes, int64_t num_local_experts) {
  constexpr int64_t kBudget = int64_t(256) << 20;
  const int64_t n = g_overridden && g_override.fp4_chunk_experts > 0 ? g_override.fp4_chunk_experts
                                                                     : kBudget / std::max<int64_t>(expert_bf16_bytes, 1);
  return std::clamp<int64_t>(n, 1, std::max<int64_t>(num_local_experts, 1));
}

}  // namespace fusedmoe::cuda
