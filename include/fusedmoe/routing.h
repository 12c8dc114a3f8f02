// Routing methods: router logits [M, E] -> top-k expert ids [M, k] (i32) and weights [M, k] (f32).
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include "fusedmoe/tensor.h"

namespace fusedmoe {

enum class RoutingMethod : uint8_t {
  softmax_topk,              // softmax over E, top-k of the probabilities (vLLM "Default")
  topk_softmax,              // top-k of the logits, softmax over the k chosen ("Renormalize")
  softmax_topk_renormalize,  // softmax, top-k, divide by the sum of the k ("RenormalizeNaive")
  deepseek_v3,               // sigmoid + correction bias, group top-k, renormalize, routed scaling
  llama4,                    // top-1 of the logits, weight sigmoid(logit) applied on the input
  sigmoid_topk,              // sigmoid, top-k
  sigmoid_topk_renormalize,  // sigmoid, top-k, divide by the sum of the k
  precomputed,               // the caller supplies ids and weights (modular path only)
};

struct RoutingConfig {
  RoutingMethod method = RoutingMethod::softmax_topk;
  int top_k = 1;
  // deepseek_v3: E splits into num_expert_group groups; the topk_group best groups stay eligible.
  int num_expert_group = 1;
  int topk_group = 1;
  bool renormalize = true;             // deepseek_v3 only (the other methods say it in their name)
  float routed_scaling_factor = 1.0f;  // multiplies the final weights, every method
  Tensor correction_bias;              // deepseek_v3: optional f32 [E], added for selection only
};

const char* routing_method_name(RoutingMethod method);
std::optional<RoutingMethod> parse_routing_method(std::string_view name);

// Semantics shared by every backend:
// - selection picks the k best scores; ties go to the lower expert index;
// - a NaN logit counts as -inf (it is picked last and weighs nothing), so every id is in [0, E);
// - a +inf logit takes the whole softmax mass (shared equally among +inf logits);
// - if every logit is -inf/NaN the softmax is uniform;
// - renormalization divides by the sum of the k weights only when that sum is > 0.
// `logits` is f32 or bf16 [M, E]; `topk_ids` i32 [M, k]; `topk_weights` f32 [M, k].
void route(const RoutingConfig& config, const Tensor& logits, const Tensor& topk_ids,
           const Tensor& topk_weights);

}  // namespace fusedmoe
