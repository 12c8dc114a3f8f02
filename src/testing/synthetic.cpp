#include "testing/synthetic.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu/thread_pool.h"
#include "fusedmoe/error.h"
#include "fusedmoe/formats.h"
#include "fusedmoe/reference.h"

namespace fusedmoe::testing {
namespace {

uint64_t splitmix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t stream_seed(uint64_t seed, uint64_t stream) { return splitmix(seed * 0x100000001b3ull + stream); }

}  // namespace

float uniform(uint64_t seed, uint64_t index) {
  const uint64_t bits = splitmix(seed ^ splitmix(index));
  return float(int64_t(bits >> 40) - (int64_t(1) << 23)) * 0x1p-23f;
}

float normal(uint64_t seed, uint64_t index) {
  const uint64_t a = splitmix(seed ^ splitmix(2 * index)), b = splitmix(seed ^ splitmix(2 * index + 1));
  const double u1 = (double(a >> 11) + 1.0) * 0x1p-53, u2 = double(b >> 11) * 0x1p-53;
  return float(std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2));
}

Buffer random_bf16(std::initializer_list<int64_t> shape, uint64_t seed, float stddev) {
  Buffer b = Buffer::empty(DType::bf16, shape);
  bfloat16* p = b.data_as<bfloat16>();
  for (int64_t i = 0; i < b.view().numel(); ++i) p[i] = float_to_bf16(stddev * normal(seed, uint64_t(i)));
  return b;
}

Buffer random_f32(std::initializer_list<int64_t> shape, uint64_t seed, float stddev) {
  Buffer b = Buffer::empty(DType::f32, shape);
  float* p = b.data_as<float>();
  for (int64_t i = 0; i < b.view().numel(); ++i) p[i] = stddev * normal(seed, uint64_t(i));
  return b;
}

OwnedExpertWeights synthetic_expert_weights(const MoEConfig& c, uint64_t seed, const SyntheticWeightOptions& opt) {
  validate_config(c);
  const int64_t E = c.num_local_experts(), N1 = c.w13_rows(), K = c.hidden_size, I = c.intermediate_size;
  OwnedExpertWeights owned = allocate_expert_weights(c, E, opt.with_bias);
  if (c.quant == QuantScheme::fp8_per_tensor) set_static_activation_scales(owned.weights, 1.0f, 1.0f);
  std::atomic<int64_t> done{0};
  cpu::parallel_for(E, [&](int64_t e) {
    thread_local std::vector<bfloat16> w13, w2;
    w13.resize(static_cast<size_t>(N1 * K));
    w2.resize(static_cast<size_t>(K * I));
    // Uniform with std 1/sqrt(fan-in): sqrt(3)/sqrt(fan-in) * U[-1, 1).
    const float s13 = std::sqrt(3.0f / float(K)), s2 = std::sqrt(3.0f / float(I));
    const uint64_t seed13 = stream_seed(seed, 2 * e), seed2 = stream_seed(seed, 2 * e + 1);
    for (int64_t i = 0; i < N1 * K; ++i) w13[i] = float_to_bf16(s13 * uniform(seed13, i));
    for (int64_t i = 0; i < K * I; ++i) w2[i] = float_to_bf16(s2 * uniform(seed2, i));
    quantize_expert_into(c, e, Tensor(w13.data(), DType::bf16, {N1, K}), Tensor(w2.data(), DType::bf16, {K, I}),
                         owned.weights);
    if (opt.with_bias) {
      const uint64_t bseed = stream_seed(seed ^ 0xb1a5ull, e);
      for (int64_t n = 0; n < N1; ++n) owned.weights.w13_bias.data_as<float>()[e * N1 + n] = 0.1f * uniform(bseed, n);
      for (int64_t n = 0; n < K; ++n) owned.weights.w2_bias.data_as<float>()[e * K + n] = 0.1f * uniform(bseed, N1 + n);
    }
    const int64_t finished = ++done;
    if (opt.progress) opt.progress(finished, E);
  });
  if (c.quant == QuantScheme::fp8_per_tensor) {
    const Tensor& h = opt.calibration_hidden;
    FMOE_CHECK(h.defined() && opt.calibration_ids.defined(),
               "fp8-tensor weights need a calibration batch for their static activation scales");
    float input_amax = 0.0f;
    for (int64_t i = 0; i < h.numel(); ++i) input_amax = std::max(input_amax, std::fabs(bf16_to_float(h.data_as<bfloat16>()[i])));
    std::vector<int64_t> tokens;
    for (int64_t t = 0; t < std::min<int64_t>(h.size(0), 8); ++t) tokens.push_back(t);
    const double inter_amax = reference_intermediate_amax(c, owned.weights, h, opt.calibration_ids, tokens);
    set_static_activation_scales(owned.weights, input_amax, float(std::max(inter_amax, 1e-6)));
  }
  return owned;
}

OwnedExpertWeights slice_experts(const ExpertWeights& full, int64_t num_experts, const std::vector<int32_t>& experts) {
  OwnedExpertWeights out;
  const int64_t n = int64_t(experts.size());
  for (Tensor ExpertWeights::*m :
       {&ExpertWeights::w13, &ExpertWeights::w2, &ExpertWeights::w13_scale, &ExpertWeights::w2_scale,
        &ExpertWeights::w13_global_scale, &ExpertWeights::w2_global_scale, &ExpertWeights::w13_bias,
        &ExpertWeights::w2_bias, &ExpertWeights::a13_scale, &ExpertWeights::a2_scale}) {
    const Tensor& src = full.*m;
    if (!src.defined()) continue;
    FMOE_CHECK(src.device() == Device::cpu() && src.is_contiguous(), "slice_experts needs contiguous CPU weights");
    const bool per_expert = src.size(0) == num_experts && m != &ExpertWeights::a13_scale && m != &ExpertWeights::a2_scale;
    if (!per_expert) {  // shared (static activation scales)
      out.storage.push_back(copy_to(src, Device::cpu()));
    } else {
      std::vector<int64_t> shape(src.shape().begin(), src.shape().end());
      shape[0] = n;
      out.storage.push_back(Buffer::empty(src.dtype(), shape));
      const size_t bytes = src.nbytes() / size_t(num_experts);
      for (int64_t slot = 0; slot < n; ++slot)
        std::memcpy(out.storage.back().data_as<uint8_t>() + slot * bytes,
                    src.data_as<const uint8_t>() + experts[slot] * bytes, bytes);
    }
    out.weights.*m = out.storage.back().view();
  }
  return out;
}

Buffer expert_map_of(int64_t num_experts, const std::vector<int32_t>& experts) {
  Buffer map = Buffer::empty(DType::i32, {num_experts});
  std::fill_n(map.data_as<int32_t>(), num_experts, -1);
  for (size_t slot = 0; slot < experts.size(); ++slot) map.data_as<int32_t>()[experts[slot]] = int32_t(slot);
  return map;
}

std::vector<int32_t> experts_of_map(const Tensor& expert_map) {
  std::vector<std::pair<int32_t, int32_t>> slots;
  for (int64_t e = 0; e < expert_map.numel(); ++e)
    if (expert_map.data_as<const int32_t>()[e] >= 0) slots.emplace_back(expert_map.data_as<const int32_t>()[e], int32_t(e));
  std::sort(slots.begin(), slots.end());
  std::vector<int32_t> experts;
  for (const auto& s : slots) experts.push_back(s.second);
  return experts;
}

LayerInputs layer_inputs_on(Device device, const MoEConfig& config, const ExpertWeights& weights,
                            const Buffer& hidden, const Buffer& logits, const Buffer& ids, const Buffer& topk_weights) {
  LayerInputs d;
  d.config = config;
  if (device == Device::cpu()) {
    d.weights.weights = weights;
    d.hidden = hidden, d.logits = logits, d.ids = ids, d.topk_weights = topk_weights;
    return d;
  }
  d.weights = copy_expert_weights(weights, device);
  d.hidden = copy_to(hidden, device);
  d.logits = copy_to(logits, device);
  d.ids = copy_to(ids, device);
  d.topk_weights = copy_to(topk_weights, device);
  if (config.routing.correction_bias.defined()) {
    d.bias = copy_to(config.routing.correction_bias, device);
    d.config.routing.correction_bias = d.bias.view();
  }
  return d;
}

}  // namespace fusedmoe::testing
