#include "bench/presets.h"

#include <algorithm>

namespace fusedmoe::bench {

const std::vector<ModelPreset>& model_presets() {
  using R = RoutingMethod;
  static const std::vector<ModelPreset> presets = {
      {"mixtral-8x7b", 8, 4096, 14336, 2, R::softmax_topk_renormalize},
      {"qwen3-30b-a3b", 128, 2048, 768, 8, R::softmax_topk_renormalize},
      {"qwen3-235b-a22b", 128, 4096, 1536, 8, R::softmax_topk_renormalize},
      {"deepseek-v3", 256, 7168, 2048, 8, R::deepseek_v3, 8, 4, 2.5f, true, ActivationKind::silu_mul, false,
       QuantScheme::fp8_block},
      {"gpt-oss-120b", 128, 2880, 2880, 4, R::topk_softmax, 1, 1, 1.0f, false, ActivationKind::swiglu_oai, true,
       QuantScheme::mxfp4},
      {"llama4-scout", 16, 5120, 8192, 1, R::llama4},
  };
  return presets;
}

std::optional<ModelPreset> find_preset(std::string_view name) {
  for (const ModelPreset& p : model_presets())
    if (p.name == name) return p;
  return std::nullopt;
}

MoEConfig preset_config(const ModelPreset& p, QuantScheme quant, int64_t num_experts) {
  MoEConfig c;
  c.num_experts = num_experts;
  c.hidden_size = p.hidden_size;
  c.intermediate_size = p.intermediate_size;
  c.activation.kind = p.activation;
  c.quant = quant;
  c.routing.method = p.routing;
  c.routing.top_k = static_cast<int>(std::min<int64_t>(p.top_k, num_experts));
  c.routing.routed_scaling_factor = p.routed_scaling_factor;
  if (p.routing == RoutingMethod::deepseek_v3) {
    int groups = p.num_expert_group;
    while (groups > 1 && (num_experts % groups != 0 || num_experts / groups < 2)) --groups;
    c.routing.num_expert_group = groups;
    c.routing.topk_group = std::min(p.topk_group, groups);
    const int64_t eligible = c.routing.topk_group * (num_experts / groups);
    c.routing.top_k = static_cast<int>(std::min<int64_t>(c.routing.top_k, eligible));
  }
  return c;
}

}  // namespace fusedmoe::bench
