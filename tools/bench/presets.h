// Model presets of fusedmoe-bench: the real MoE-layer shapes and routing of each model.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "fusedmoe/config.h"

namespace fusedmoe::bench {

struct ModelPreset {
  std::string name;
  int64_t num_experts, hidden_size, intermediate_size;
  int top_k;
  RoutingMethod routing;
  int num_expert_group = 1, topk_group = 1;
  float routed_scaling_factor = 1.0f;
  bool correction_bias = false;
  ActivationKind activation = ActivationKind::silu_mul;
  bool biases = false;
  QuantScheme native_quant = QuantScheme::bf16;
};

const std::vector<ModelPreset>& model_presets();
std::optional<ModelPreset> find_preset(std::string_view name);

// The preset's MoEConfig for `num_experts` experts (groups shrink to divide it when needed).
MoEConfig preset_config(const ModelPreset& preset, QuantScheme quant, int64_t num_experts);

}  // namespace fusedmoe::bench
