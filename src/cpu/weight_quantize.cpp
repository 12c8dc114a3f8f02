// bf16 expert weights -> each scheme's checkpoint layout (see weights.h), bit-exact to the
// format definitions: fp8 scale = amax/448 per tensor/row/128x128 block; nvfp4 global scale
// = amax/(448*6), block scale e4m3(block amax/6/global); mxfp4 ue8m0 = OCP shared exponent.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/check.h"
#include "core/weight_layout.h"
#include "cpu/thread_pool.h"
#include "fusedmoe/error.h"
#include "fusedmoe/formats.h"
#include "fusedmoe/weights.h"

namespace fusedmoe {
namespace {

float amax_of(const float* x, int64_t n) {
  float m = 0.0f;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(x[i]));
  return m;
}

float fp8_scale_for(float amax) { return std::max(amax, 1e-10f) / kFp8E4m3Max; }

// Quantizes one [rows, cols] matrix `w` (f32 values of bf16 weights) of expert e into the
// scheme's data/scale tensors of that expert.
void quantize_matrix(QuantScheme scheme, const std::vector<float>& w, int64_t rows, int64_t cols, int64_t e,
                     const Tensor& data, const Tensor& scale, const Tensor& global) {
  const int64_t n = rows * cols;
  switch (scheme) {
    case QuantScheme::bf16: {
      bfloat16* dst = data.data_as<bfloat16>() + e * n;
      for (int64_t i = 0; i < n; ++i) dst[i] = float_to_bf16(w[i]);
      break;
    }
    case QuantScheme::fp8_per_tensor: {
      const float s = fp8_scale_for(amax_of(w.data(), n));
      scale.data_as<float>()[e] = s;
      uint8_t* dst = data.data_as<uint8_t>() + e * n;
      for (int64_t i = 0; i < n; ++i) dst[i] = float_to_fp8_e4m3(w[i] / s);
      break;
    }
    case QuantScheme::fp8_per_channel: {
      uint8_t* dst = data.data_as<uint8_t>() + e * n;
      for (int64_t r = 0; r < rows; ++r) {
        const float s = fp8_scale_for(amax_of(w.data() + r * cols, cols));
        scale.data_as<float>()[e * rows + r] = s;
        for (int64_t c = 0; c < cols; ++c) dst[r * cols + c] = float_to_fp8_e4m3(w[r * cols + c] / s);
      }
      break;
    }
    case QuantScheme::fp8_block: {
      const int64_t rb = (rows + kFp8BlockSize - 1) / kFp8BlockSize, cb = (cols + kFp8BlockSize - 1) / kFp8BlockSize;
      uint8_t* dst = data.data_as<uint8_t>() + e * n;
      for (int64_t br = 0; br < rb; ++br)
        for (int64_t bc = 0; bc < cb; ++bc) {
          const int64_t r0 = br * kFp8BlockSize, r1 = std::min(rows, r0 + kFp8BlockSize);
          const int64_t c0 = bc * kFp8BlockSize, c1 = std::min(cols, c0 + kFp8BlockSize);
          float amax = 0.0f;
          for (int64_t r = r0; r < r1; ++r) amax = std::max(amax, amax_of(w.data() + r * cols + c0, c1 - c0));
          const float s = fp8_scale_for(amax);
          scale.data_as<float>()[(e * rb + br) * cb + bc] = s;
          for (int64_t r = r0; r < r1; ++r)
            for (int64_t c = c0; c < c1; ++c) dst[r * cols + c] = float_to_fp8_e4m3(w[r * cols + c] / s);
        }
      break;
    }
    case QuantScheme::nvfp4:
    case QuantScheme::mxfp4: {
      const bool nv = scheme == QuantScheme::nvfp4;
      const int64_t group = nv ? kNvfp4GroupSize : kMxfp4GroupSize, groups = cols / group;
      float gs = 1.0f;
      if (nv) {
        gs = std::max(amax_of(w.data(), n), 1e-30f) / (kFp8E4m3Max * kFp4E2m1Max);
        global.data_as<float>()[e] = gs;
      }
      uint8_t* dst = data.data_as<uint8_t>() + e * n / 2;
      uint8_t* sdst = scale.data_as<uint8_t>() + e * rows * groups;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t g = 0; g < groups; ++g) {
          const float* x = w.data() + r * cols + g * group;
          const float amax = amax_of(x, group);
          float s;
          if (nv) {
            const uint8_t code = float_to_fp8_e4m3(amax / kFp4E2m1Max / gs);
            sdst[r * groups + g] = code;
            s = fp8_e4m3_to_float(code) * gs;
          } else {
            const uint8_t code = mx_e2m1_scale_from_amax(amax);
            sdst[r * groups + g] = code;
            s = ue8m0_to_float(code);
          }
          uint8_t* out = dst + (r * cols + g * group) / 2;
          for (int64_t i = 0; i < group; i += 2) {
            const uint8_t lo = s > 0.0f ? float_to_fp4_e2m1(x[i] / s) : 0;
            const uint8_t hi = s > 0.0f ? float_to_fp4_e2m1(x[i + 1] / s) : 0;
            out[i / 2] = uint8_t(lo | (hi << 4));
          }
        }
      break;
    }
  }
}

std::vector<float> to_floats(const Tensor& t) {
  std::vector<float> v(static_cast<size_t>(t.numel()));
  const bfloat16* src = t.data_as<const bfloat16>();
  for (size_t i = 0; i < v.size(); ++i) v[i] = bf16_to_float(src[i]);
  return v;
}

}  // namespace

void quantize_expert_into(const MoEConfig& config, int64_t expert, const Tensor& w13_bf16, const Tensor& w2_bf16,
                          const ExpertWeights& dest) {
  validate_config(config);
  const int64_t N1 = config.w13_rows(), K = config.hidden_size, I = config.intermediate_size;
  check_tensor(w13_bf16, "w13_bf16", DType::bf16, {N1, K}, Device::cpu());
  check_tensor(w2_bf16, "w2_bf16", DType::bf16, {K, I}, Device::cpu());
  FMOE_CHECK(dest.w13.defined() && dest.w13.ndim() == 3 && expert >= 0 && expert < dest.w13.size(0),
             "expert must index a slot of dest.w13 (", dest.w13.describe(), "), got ", expert);
  quantize_matrix(config.quant, to_floats(w13_bf16), N1, K, expert, dest.w13, dest.w13_scale, dest.w13_global_scale);
  quantize_matrix(config.quant, to_floats(w2_bf16), K, I, expert, dest.w2, dest.w2_scale, dest.w2_global_scale);
}

void set_static_activation_scales(const ExpertWeights& weights, float input_amax, float intermediate_amax) {
  FMOE_CHECK(weights.a13_scale.defined() && weights.a2_scale.defined(),
             "weights.a13_scale and a2_scale must be allocated (fp8-tensor scheme)");
  FMOE_CHECK(input_amax > 0.0f && std::isfinite(input_amax), "input_amax must be positive and finite, got ",
             input_amax);
  FMOE_CHECK(intermediate_amax > 0.0f && std::isfinite(intermediate_amax),
             "intermediate_amax must be positive and finite, got ", intermediate_amax);
  *weights.a13_scale.data_as<float>() = input_amax / kFp8E4m3Max;
  *weights.a2_scale.data_as<float>() = intermediate_amax / kFp8E4m3Max;
}

OwnedExpertWeights quantize_expert_weights(const MoEConfig& config, const Tensor& w13_bf16, const Tensor& w2_bf16,
                                           const WeightQuantOptions& options) {
  validate_config(config);
  const int64_t E = config.num_local_experts();
  const int64_t N1 = config.w13_rows(), K = config.hidden_size, I = config.intermediate_size;
  check_tensor(w13_bf16, "w13_bf16", DType::bf16, {E, N1, K}, Device::cpu());
  check_tensor(w2_bf16, "w2_bf16", DType::bf16, {E, K, I}, Device::cpu());
  OwnedExpertWeights owned = allocate_expert_weights(config, E);
  if (config.quant == QuantScheme::fp8_per_tensor)
    set_static_activation_scales(owned.weights, options.input_amax, options.intermediate_amax);
  cpu::parallel_for(E, [&](int64_t e) {
    const Tensor w13(w13_bf16.data_as<bfloat16>() + e * N1 * K, DType::bf16, {N1, K});
    const Tensor w2(w2_bf16.data_as<bfloat16>() + e * K * I, DType::bf16, {K, I});
    quantize_expert_into(config, e, w13, w2, owned.weights);
  });
  return owned;
}

}  // namespace fusedmoe
