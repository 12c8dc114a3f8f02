// CPU router: route_token over the rows of the logits, in parallel over tokens.
#include <vector>

#include "core/route_token.h"
#include "cpu/cpu_backend.h"
#include "cpu/thread_pool.h"
#include "fusedmoe/error.h"
#include "fusedmoe/formats.h"

namespace fusedmoe::cpu {

void route_rows(const RoutingParams& params, const Tensor& logits, int64_t row_begin, int64_t row_end,
                int32_t* topk_ids, float* topk_weights) {
  const int64_t E = params.num_experts, k = params.top_k;
  std::vector<float> row(static_cast<size_t>(E)), scratch(static_cast<size_t>(2 * E));
  for (int64_t t = row_begin; t < row_end; ++t) {
    const float* logits_row;
    if (logits.dtype() == DType::bf16) {
      const bfloat16* src = logits.data_as<const bfloat16>() + t * E;
      for (int64_t e = 0; e < E; ++e) row[e] = bf16_to_float(src[e]);
      logits_row = row.data();
    } else {
      logits_row = logits.data_as<const float>() + t * E;
    }
    route_token(params, logits_row, scratch.data(), topk_ids + t * k, topk_weights + t * k);
  }
}

void route(const RoutingConfig& config, const Tensor& logits, const Tensor& topk_ids, const Tensor& topk_weights) {
  FMOE_CHECK(!config.correction_bias.defined() || config.correction_bias.device() == Device::cpu(),
             "correction_bias must be on the logits' device cpu, got ", config.correction_bias.describe());
  const RoutingParams params = make_routing_params(config, logits.size(1));
  const int64_t M = logits.size(0);
  constexpr int64_t kRowsPerItem = 64;
  parallel_for((M + kRowsPerItem - 1) / kRowsPerItem, [&](int64_t item) {
    const int64_t begin = item * kRowsPerItem, end = std::min(M, begin + kRowsPerItem);
    route_rows(params, logits, begin, end, topk_ids.data_as<int32_t>(), topk_weights.data_as<float>());
  });
}

}  // namespace fusedmoe::cpu
