// MoEConfig validation and scheme properties.
#include "fusedmoe/config.h"

#include <cmath>
#include <vector>

#include "core/check.h"
#include "core/route_token.h"
#include "fusedmoe/error.h"

namespace fusedmoe {

bool scheme_quantizes_activations(QuantScheme s) {
  return s == QuantScheme::fp8_per_tensor || s == QuantScheme::fp8_per_channel || s == QuantScheme::fp8_block;
}

bool scheme_is_fp4(QuantScheme s) { return s == QuantScheme::nvfp4 || s == QuantScheme::mxfp4; }

int64_t activation_scale_cols(QuantScheme s, int64_t cols) {
  switch (s) {
    case QuantScheme::fp8_per_tensor:
    case QuantScheme::fp8_per_channel: return 1;
    case QuantScheme::fp8_block: return (cols + kFp8BlockSize - 1) / kFp8BlockSize;
    default: return 0;
  }
}

int64_t MoEConfig::num_local_experts() const {
  if (!parallel.expert_map.defined()) return num_experts;
  const int32_t* map = parallel.expert_map.data_as<const int32_t>();
  int64_t n = 0;
  for (int64_t e = 0; e < parallel.expert_map.numel(); ++e) n += map[e] >= 0;
  return n;
}

static void validate_expert_map(const MoEConfig& c) {
  const Tensor& map = c.parallel.expert_map;
  if (!map.defined()) return;
  check_tensor(map, "parallel.expert_map", DType::i32, {c.num_experts}, Device::cpu());
  const int32_t* m = map.data_as<const int32_t>();
  const int64_t num_local = c.num_local_experts();
  FMOE_CHECK(num_local >= 1, "parallel.expert_map must map at least one expert to this rank, got none");
  std::vector<int64_t> owner(static_cast<size_t>(num_local), -1);
  for (int64_t e = 0; e < c.num_experts; ++e) {
    FMOE_CHECK(m[e] >= -1 && m[e] < num_local, "parallel.expert_map[", e, "] must be -1 or a local slot in [0, ",
               num_local, "), got ", m[e]);
    if (m[e] < 0) continue;
    FMOE_CHECK(owner[m[e]] < 0, "parallel.expert_map must map each local slot exactly once, got slot ", m[e],
               " for experts ", owner[m[e]], " and ", e);
    owner[m[e]] = e;
  }
}

static void validate_routing(const MoEConfig& c) {
  const RoutingConfig& r = c.routing;
  FMOE_CHECK(r.top_k >= 1 && r.top_k <= c.num_experts, "routing.top_k must be in [1, num_experts=", c.num_experts,
             "], got ", r.top_k);
  FMOE_CHECK(std::isfinite(r.routed_scaling_factor) && r.routed_scaling_factor > 0.0f,
             "routing.routed_scaling_factor must be finite and > 0, got ", r.routed_scaling_factor);
  if (r.method == RoutingMethod::deepseek_v3) {
    FMOE_CHECK(r.num_expert_group >= 1 && r.num_expert_group <= kMaxExpertGroups &&
                   c.num_experts % r.num_expert_group == 0,
               "routing.num_expert_group must be in [1, ", kMaxExpertGroups, "] and divide num_experts=", c.num_experts, ", got ",
               r.num_expert_group);
    FMOE_CHECK(r.topk_group >= 1 && r.topk_group <= r.num_expert_group, "routing.topk_group must be in [1, ",
               r.num_expert_group, "], got ", r.topk_group);
    const int64_t group_size = c.num_experts / r.num_expert_group;
    FMOE_CHECK(r.top_k <= r.topk_group * group_size, "routing.top_k must be <= topk_group * experts per group = ",
               r.topk_group * group_size, ", got ", r.top_k);
    if (r.correction_bias.defined()) {
      // On the device of the logits it routes; its values are checked when they are on the CPU
      // (reading device memory here would synchronise every routed call).
      check_tensor(r.correction_bias, "routing.correction_bias", DType::f32, {c.num_experts},
                   r.correction_bias.device());
      if (r.correction_bias.device().kind == DeviceKind::cpu) {
        const float* bias = r.correction_bias.data_as<const float>();
        for (int64_t e = 0; e < c.num_experts; ++e)
          FMOE_CHECK(std::isfinite(bias[e]), "routing.correction_bias[", e, "] must be finite, got ", bias[e]);
      }
      FMOE_CHECK(group_size >= 2 || r.num_expert_group == 1,
                 "routing.correction_bias scores groups by their top-2 experts, so groups need >= 2 experts, got ",
                 group_size);
    }
  } else {
    check_absent(r.correction_bias, "routing.correction_bias", "only deepseek-v3 routing uses it");
    FMOE_CHECK(r.num_expert_group == 1 && r.topk_group == 1,
               "routing.num_expert_group and topk_group must be 1 outside deepseek-v3 routing, got ",
               r.num_expert_group, " and ", r.topk_group);
  }
  if (r.method == RoutingMethod::llama4)
    FMOE_CHECK(r.top_k == 1, "llama4 routing applies the weight on the input and needs routing.top_k == 1, got ",
               r.top_k);
}

void validate_config(const MoEConfig& c) {
  FMOE_CHECK(c.num_experts >= 1 && c.num_experts <= 65536, "num_experts must be in [1, 65536], got ",
             c.num_experts);
  FMOE_CHECK(c.hidden_size >= 1, "hidden_size must be >= 1, got ", c.hidden_size);
  FMOE_CHECK(c.intermediate_size >= 1, "intermediate_size must be >= 1, got ", c.intermediate_size);
  if (c.quant == QuantScheme::nvfp4 || c.quant == QuantScheme::mxfp4) {
    const int64_t g = c.quant == QuantScheme::nvfp4 ? kNvfp4GroupSize : kMxfp4GroupSize;
    FMOE_CHECK(c.hidden_size % g == 0, "hidden_size must be a multiple of ", g, " for ", quant_scheme_name(c.quant),
               " (one scale per ", g, " values), got ", c.hidden_size);
    FMOE_CHECK(c.intermediate_size % g == 0, "intermediate_size must be a multiple of ", g, " for ",
               quant_scheme_name(c.quant), " (one scale per ", g, " values), got ", c.intermediate_size);
  }
  const Activation& a = c.activation;
  if (a.kind == ActivationKind::swiglu_oai) {
    FMOE_CHECK(std::isfinite(a.alpha), "activation.alpha must be finite, got ", a.alpha);
    FMOE_CHECK(std::isfinite(a.limit) && a.limit > 0.0f, "activation.limit must be finite and > 0, got ", a.limit);
  }
  validate_routing(c);
  const ParallelConfig& p = c.parallel;
  FMOE_CHECK(p.ep_size >= 1, "parallel.ep_size must be >= 1, got ", p.ep_size);
  FMOE_CHECK(p.ep_rank >= 0 && p.ep_rank < p.ep_size, "parallel.ep_rank must be in [0, ", p.ep_size, "), got ",
             p.ep_rank);
  FMOE_CHECK(p.dp_size >= 1, "parallel.dp_size must be >= 1, got ", p.dp_size);
  validate_expert_map(c);
  if (c.activation_format == ActivationFormat::batched)
    FMOE_CHECK(c.max_tokens_per_expert >= 1, "max_tokens_per_expert must be >= 1 for the batched format, got ",
               c.max_tokens_per_expert);
  if (p.ep_size > 1) {
    FMOE_CHECK(p.expert_map.defined(), "parallel.expert_map is required when ep_size > 1 (ep_size=", p.ep_size,
               "); contiguous_expert_map(num_experts, rank, size) gives the default placement");
    FMOE_CHECK(p.max_tokens_per_rank >= 1, "parallel.max_tokens_per_rank must be >= 1 when ep_size > 1, got ",
               p.max_tokens_per_rank);
  }
}

}  // namespace fusedmoe
