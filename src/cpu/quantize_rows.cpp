// Activation quantization on the CPU: fp8 rows per scheme, and the input rows that prepare
// hands the experts (router weight on the input, then quantization).
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/check.h"
#include "cpu/cpu_backend.h"
#include "cpu/thread_pool.h"
#include "fusedmoe/error.h"
#include "fusedmoe/formats.h"
#include "fusedmoe/quant.h"

namespace fusedmoe {
namespace cpu {

static float dynamic_scale(const float* x, int64_t n) {
  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));  // NaN does not raise amax
  return std::max(amax, 1e-10f) / kFp8E4m3Max;
}

static void encode_fp8(const float* x, int64_t n, float scale, uint8_t* q) {
  for (int64_t i = 0; i < n; ++i) q[i] = float_to_fp8_e4m3(x[i] / scale);
}

void quantize_row_fp8(QuantScheme scheme, const float* x, int64_t cols, float static_scale, uint8_t* q,
                      float* scales) {
  switch (scheme) {
    case QuantScheme::fp8_per_tensor:
      scales[0] = static_scale;
      encode_fp8(x, cols, static_scale, q);
      break;
    case QuantScheme::fp8_per_channel:
      scales[0] = dynamic_scale(x, cols);
      encode_fp8(x, cols, scales[0], q);
      break;
    case QuantScheme::fp8_block:
      for (int64_t g = 0, c0 = 0; c0 < cols; ++g, c0 += kFp8BlockSize) {
        const int64_t n = std::min(kFp8BlockSize, cols - c0);
        scales[g] = dynamic_scale(x + c0, n);
        encode_fp8(x + c0, n, scales[g], q + c0);
      }
      break;
    default: FMOE_FAIL("quantize_row_fp8: scheme ", quant_scheme_name(scheme), " does not quantize activations");
  }
}

size_t quantized_rows_bytes(const MoEConfig& config, int64_t M) {
  const int64_t K = config.hidden_size, G = activation_scale_cols(config.quant, K);
  const bool quantize = scheme_quantizes_activations(config.quant);
  return workspace_tensor_bytes(quantize ? DType::fp8_e4m3 : DType::bf16, {M, K}) +
         (G > 0 ? workspace_tensor_bytes(DType::f32, {M, G}) : 0);
}

QuantizedRows quantize_input_rows(const MoEConfig& config, const Tensor& hidden, const Tensor& topk_weights,
                                  const Tensor& static_input_scale, Workspace& workspace) {
  const int64_t M = hidden.size(0), K = config.hidden_size, G = activation_scale_cols(config.quant, K);
  const bool on_input = config.apply_router_weight_on_input();
  const bool quantize = scheme_quantizes_activations(config.quant);
  if (!on_input && !quantize) return {hidden, {}};
  QuantizedRows rows;
  rows.data = workspace.take(quantize ? DType::fp8_e4m3 : DType::bf16, {M, K});
  if (G > 0) rows.scales = workspace.take(DType::f32, {M, G});
  const float static_scale =
      static_input_scale.defined() ? *static_input_scale.data_as<const float>() : 0.0f;
  parallel_for(M, [&](int64_t t) {
    thread_local std::vector<float> row;
    row.resize(static_cast<size_t>(K));
    const bfloat16* src = hidden.data_as<const bfloat16>() + t * K;
    const float w = on_input ? topk_weights.data_as<const float>()[t] : 1.0f;  // llama4: top_k == 1
    for (int64_t i = 0; i < K; ++i) {
      const float x = bf16_to_float(src[i]);
      row[i] = on_input ? round_to_bf16(x * w) : x;  // the weighted input is a bf16 tensor
    }
    if (quantize) {
      quantize_row_fp8(config.quant, row.data(), K, static_scale, rows.data.data_as<uint8_t>() + t * K,
                       rows.scales.data_as<float>() + t * G);
    } else {
      bfloat16* dst = rows.data.data_as<bfloat16>() + t * K;
      for (int64_t i = 0; i < K; ++i) dst[i] = float_to_bf16(row[i]);
    }
  });
  return rows;
}

}  // namespace cpu

void quantize_activations_fp8(QuantScheme scheme, const Tensor& x, float static_scale, const Tensor& q,
                              const Tensor& scales) {
  FMOE_CHECK(scheme_quantizes_activations(scheme), "quantize_activations_fp8: scheme must be fp8-tensor, ",
             "fp8-channel or fp8-block, got ", quant_scheme_name(scheme));
  FMOE_CHECK(x.defined() && x.ndim() == 2, "x must be a 2-D [M, cols] tensor, got ", x.describe());
  const int64_t M = x.size(0), cols = x.size(1), G = activation_scale_cols(scheme, cols);
  check_tensor(x, "x", DType::bf16, {M, cols}, Device::cpu());
  check_tensor(q, "q", DType::fp8_e4m3, {M, cols}, Device::cpu());
  check_tensor(scales, "scales", DType::f32, {M, G}, Device::cpu());
  if (scheme == QuantScheme::fp8_per_tensor)
    FMOE_CHECK(static_scale > 0.0f && std::isfinite(static_scale),
               "static_scale must be a positive finite scale for fp8-tensor, got ", static_scale);
  cpu::parallel_for(M, [&](int64_t t) {
    std::vector<float> row(static_cast<size_t>(cols));
    const bfloat16* src = x.data_as<const bfloat16>() + t * cols;
    for (int64_t i = 0; i < cols; ++i) row[i] = bf16_to_float(src[i]);
    cpu::quantize_row_fp8(scheme, row.data(), cols, static_scale, q.data_as<uint8_t>() + t * cols,
                          scales.data_as<float>() + t * G);
  });
}

}  // namespace fusedmoe
