// Weight layout table, validation, allocation and byte counts.
#include "core/weight_layout.h"

#include <utility>

#include "core/backend_registry.h"
#include "core/check.h"
#include "fusedmoe/error.h"

namespace fusedmoe {

static int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

std::array<WeightTensorSpec, 10> weight_layout(const MoEConfig& c, int64_t E) {
  using Use = WeightTensorSpec::Use;
  const int64_t N1 = c.w13_rows(), K = c.hidden_size, I = c.intermediate_size;
  DType data = DType::bf16, scale = DType::f32;
  std::vector<int64_t> w13{E, N1, K}, w2{E, K, I}, s13, s2;
  Use scale_use = Use::required, global_use = Use::unused, act_scale_use = Use::unused;
  switch (c.quant) {
    case QuantScheme::bf16: scale_use = Use::unused; break;
    case QuantScheme::fp8_per_tensor:
      data = DType::fp8_e4m3, s13 = {E}, s2 = {E}, act_scale_use = Use::required;
      break;
    case QuantScheme::fp8_per_channel: data = DType::fp8_e4m3, s13 = {E, N1}, s2 = {E, K}; break;
    case QuantScheme::fp8_block:
      data = DType::fp8_e4m3;
      s13 = {E, cdiv(N1, kFp8BlockSize), cdiv(K, kFp8BlockSize)};
      s2 = {E, cdiv(K, kFp8BlockSize), cdiv(I, kFp8BlockSize)};
      break;
    case QuantScheme::nvfp4:
      data = DType::fp4x2_e2m1, scale = DType::fp8_e4m3, global_use = Use::required;
      w13 = {E, N1, K / 2}, w2 = {E, K, I / 2};
      s13 = {E, N1, K / kNvfp4GroupSize}, s2 = {E, K, I / kNvfp4GroupSize};
      break;
    case QuantScheme::mxfp4:
      data = DType::fp4x2_e2m1, scale = DType::ue8m0;
      w13 = {E, N1, K / 2}, w2 = {E, K, I / 2};
      s13 = {E, N1, K / kMxfp4GroupSize}, s2 = {E, K, I / kMxfp4GroupSize};
      break;
  }
  return {{
      {"weights.w13", &ExpertWeights::w13, data, w13, Use::required},
      {"weights.w2", &ExpertWeights::w2, data, w2, Use::required},
      {"weights.w13_scale", &ExpertWeights::w13_scale, scale, s13, scale_use},
      {"weights.w2_scale", &ExpertWeights::w2_scale, scale, s2, scale_use},
      {"weights.w13_global_scale", &ExpertWeights::w13_global_scale, DType::f32, {E}, global_use},
      {"weights.w2_global_scale", &ExpertWeights::w2_global_scale, DType::f32, {E}, global_use},
      {"weights.a13_scale", &ExpertWeights::a13_scale, DType::f32, {1}, act_scale_use},
      {"weights.a2_scale", &ExpertWeights::a2_scale, DType::f32, {1}, act_scale_use},
      {"weights.w13_bias", &ExpertWeights::w13_bias, DType::f32, {E, N1}, Use::optional},
      {"weights.w2_bias", &ExpertWeights::w2_bias, DType::f32, {E, K}, Use::optional},
  }};
}

void validate_weights(const MoEConfig& config, const ExpertWeights& weights) {
  const int64_t E = config.num_local_experts();
  FMOE_CHECK(weights.w13.defined(), "weights.w13 must be defined");
  FMOE_CHECK(weights.fp4_packing == Fp4Packing::checkpoint || config.quant == QuantScheme::nvfp4 ||
                 config.quant == QuantScheme::mxfp4,
             "weights.fp4_packing = sm90 is for nvfp4 and mxfp4 weights, got the ", quant_scheme_name(config.quant),
             " scheme");
  const Device device = weights.w13.device();
  for (const WeightTensorSpec& spec : weight_layout(config, E)) {
    const Tensor& t = weights.*spec.member;
    if (spec.use == WeightTensorSpec::Use::unused) {
      check_absent(t, spec.name, quant_scheme_name(config.quant));
      continue;
    }
    if (spec.use == WeightTensorSpec::Use::optional && !t.defined()) continue;
    FMOE_CHECK(t.defined(), spec.name, " is required by the ", quant_scheme_name(config.quant), " scheme");
    check_tensor(t, spec.name, spec.dtype, spec.shape, device);
  }
  if (weights.a13_scale.defined() && device.kind == DeviceKind::cpu) {
    const float a1 = *weights.a13_scale.data_as<const float>(), a2 = *weights.a2_scale.data_as<const float>();
    FMOE_CHECK(a1 > 0.0f && a1 < 1e30f, "weights.a13_scale must be a positive finite scale, got ", a1);
    FMOE_CHECK(a2 > 0.0f && a2 < 1e30f, "weights.a2_scale must be a positive finite scale, got ", a2);
  }
}

OwnedExpertWeights allocate_expert_weights(const MoEConfig& config, int64_t num_local_experts, bool with_bias) {
  OwnedExpertWeights owned;
  for (const WeightTensorSpec& spec : weight_layout(config, num_local_experts)) {
    if (spec.use == WeightTensorSpec::Use::unused) continue;
    if (spec.use == WeightTensorSpec::Use::optional && !with_bias) continue;
    owned.storage.push_back(Buffer::empty(spec.dtype, spec.shape));
    owned.weights.*spec.member = owned.storage.back().view();
  }
  return owned;
}

int64_t expert_weight_bytes(const MoEConfig& config, int64_t num_experts) {
  int64_t bytes = 0;
  for (const WeightTensorSpec& spec : weight_layout(config, num_experts)) {
    if (spec.use != WeightTensorSpec::Use::required || spec.shape.empty()) continue;
    if (spec.member == &ExpertWeights::a13_scale || spec.member == &ExpertWeights::a2_scale) continue;
    int64_t n = static_cast<int64_t>(dtype_size(spec.dtype));
    for (int64_t d : spec.shape) n *= d;
    bytes += n;
  }
  return bytes;
}

OwnedExpertWeights copy_expert_weights(const ExpertWeights& weights, Device device) {
  OwnedExpertWeights owned;
  static constexpr Tensor ExpertWeights::*kMembers[] = {
      &ExpertWeights::w13,       &ExpertWeights::w2,        &ExpertWeights::w13_scale,        &ExpertWeights::w2_scale,
      &ExpertWeights::w13_global_scale, &ExpertWeights::w2_global_scale, &ExpertWeights::a13_scale,
      &ExpertWeights::a2_scale,  &ExpertWeights::w13_bias,  &ExpertWeights::w2_bias};
  for (Tensor ExpertWeights::*member : kMembers) {
    const Tensor& src = weights.*member;
    if (!src.defined()) continue;
    owned.storage.push_back(copy_to(src, device));
    owned.weights.*member = owned.storage.back().view();
  }
  owned.weights.fp4_packing = weights.fp4_packing;
  return owned;
}

void pack_fp4_weights_sm90(const MoEConfig& config, ExpertWeights& weights) {
  FMOE_CHECK(config.quant == QuantScheme::nvfp4 || config.quant == QuantScheme::mxfp4,
             "pack_fp4_weights_sm90 takes nvfp4 or mxfp4 weights, got the ", quant_scheme_name(config.quant),
             " scheme");
  validate_weights(config, weights);
  FMOE_CHECK(weights.fp4_packing == Fp4Packing::checkpoint,
             "pack_fp4_weights_sm90 takes weights in the checkpoint's order, got weights already in the sm90 packing");
  FMOE_CHECK(config.hidden_size % 32 == 0 && config.intermediate_size % 32 == 0,
             "the sm90 fp4 packing needs hidden_size and intermediate_size % 32 == 0, got ", config.hidden_size,
             " and ", config.intermediate_size);
  const BackendImpl& backend = backend_for_device(weights.w13.device());
  // Rows of hidden_size / 2 (w13) and intermediate_size / 2 (w2) bytes; N1 and hidden_size are multiples of 32, so
  // every expert's rows are whole tiles of 16.
  const std::pair<const Tensor*, int64_t> tensors[] = {{&weights.w13, config.hidden_size / 2},
                                                       {&weights.w2, config.intermediate_size / 2}};
  for (const auto& [t, row_bytes] : tensors)
    backend.pack_fp4_sm90(t->data(), t->nbytes(), static_cast<size_t>(row_bytes), t->device());
  weights.fp4_packing = Fp4Packing::sm90;
}

void check_checkpoint_fp4_packing(const ExpertWeights& weights, const char* who) {
  FMOE_CHECK(weights.fp4_packing == Fp4Packing::checkpoint, who,
             " read fp4 weights in the checkpoint's order, got weights.fp4_packing = sm90 (pack_fp4_weights_sm90 "
             "is for the CUDA experts)");
}

}  // namespace fusedmoe
