// Float64 reference MoE. Deliberately simple and separate from the CPU fast path: blocks of tokens, and
// within a block expert by expert, each weight row dequantized element by element (each expert's matrix once
// per call while they fit a budget, RefMatrix) and multiplied with every (token, slot) of the block that routes
// to its expert; every sum in double, each token's slots added in slot order. It
// follows the schemes' recipe: input (weighted on the input for llama4) rounded to bf16,
// quantized per scheme with f32 scales; GEMM1's output (bias included) rounded to bf16; the
// activation's output re-quantized (fp8 schemes) or rounded to bf16 (the others); output left
// in double.
#include "fusedmoe/reference.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/check.h"
#include "core/weight_layout.h"
#include "fusedmoe/error.h"
#include "fusedmoe/formats.h"

namespace fusedmoe {
namespace {

struct RefMatrix {  // w13 or w2 of the local experts
  const ExpertWeights* w;
  QuantScheme scheme;
  bool is_w13;
  int64_t rows, cols;

  double at(int64_t e, int64_t n, int64_t k) const {
    const Tensor& data = is_w13 ? w->w13 : w->w2;
    const Tensor& scale = is_w13 ? w->w13_scale : w->w2_scale;
    const int64_t idx = (e * rows + n) * cols + k;
    switch (scheme) {
      case QuantScheme::bf16: return bf16_to_float(data.data_as<const bfloat16>()[idx]);
      case QuantScheme::fp8_per_tensor:
        return double(fp8_e4m3_to_float(data.data_as<const uint8_t>()[idx])) * scale.data_as<const float>()[e];
      case QuantScheme::fp8_per_channel:
        return double(fp8_e4m3_to_float(data.data_as<const uint8_t>()[idx])) *
               scale.data_as<const float>()[e * rows + n];
      case QuantScheme::fp8_block: {
        const int64_t rb = (rows + 127) / 128, cb = (cols + 127) / 128;
        return double(fp8_e4m3_to_float(data.data_as<const uint8_t>()[idx])) *
               scale.data_as<const float>()[(e * rb + n / 128) * cb + k / 128];
      }
      case QuantScheme::nvfp4: {
        const Tensor& global = is_w13 ? w->w13_global_scale : w->w2_global_scale;
        const uint8_t byte = data.data_as<const uint8_t>()[idx / 2];
        const double v = fp4_e2m1_to_float(idx % 2 ? byte >> 4 : byte & 0xf);
        const uint8_t s = scale.data_as<const uint8_t>()[(e * rows + n) * (cols / 16) + k / 16];
        // the recipe's effective group scale is the f32 product e4m3 * global
        return v * double(fp8_e4m3_to_float(s) * global.data_as<const float>()[e]);
      }
      case QuantScheme::mxfp4: {
        const uint8_t byte = data.data_as<const uint8_t>()[idx / 2];
        const double v = fp4_e2m1_to_float(idx % 2 ? byte >> 4 : byte & 0xf);
        return v * double(ue8m0_to_float(scale.data_as<const uint8_t>()[(e * rows + n) * (cols / 32) + k / 32]));
      }
    }
    return 0.0;
  }

  // Row n of expert e, dequantized: from the expert's matrix, dequantized whole at its first use while this
  // matrix's experts so far fit kCacheBytes, else into scratch (the same values either way). Dequantized row by
  // row for every token and slot, CudaExperts.WgmmaKernelsDeepKPartialTiles spent about 3 minutes of GPU-machine
  // time in its references (nvfp4, 600 tokens, K = 704: 16.5 s a call; 1.1 s now).
  const double* row(int64_t e, int64_t n, std::vector<double>& scratch) const {
    static constexpr int64_t kCacheBytes = int64_t(256) << 20;
    const int64_t bytes = rows * cols * int64_t(sizeof(double));
    if (e >= int64_t(cached.size())) cached.resize(static_cast<size_t>(e + 1));
    std::vector<double>& m = cached[e];
    if (m.empty() && cached_bytes + bytes <= kCacheBytes) {
      m.resize(static_cast<size_t>(rows * cols));
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t k = 0; k < cols; ++k) m[r * cols + k] = at(e, r, k);
      cached_bytes += bytes;
    }
    if (!m.empty()) return m.data() + n * cols;
    scratch.resize(static_cast<size_t>(cols));
    for (int64_t k = 0; k < cols; ++k) scratch[k] = at(e, n, k);
    return scratch.data();
  }
  mutable std::vector<std::vector<double>> cached;  // [local expert]: rows x cols, or empty
  mutable int64_t cached_bytes = 0;
};

double dot(const std::vector<double>& a, const double* b) {
  double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
  size_t i = 0;
  for (; i + 4 <= a.size(); i += 4) {
    s0 += a[i] * b[i];
    s1 += a[i + 1] * b[i + 1];
    s2 += a[i + 2] * b[i + 2];
    s3 += a[i + 3] * b[i + 3];
  }
  for (; i < a.size(); ++i) s0 += a[i] * b[i];
  return (s0 + s1) + (s2 + s3);
}

// x quantized per the scheme and dequantized back, in place.
void quantize_dequantize(QuantScheme scheme, std::vector<double>& x, float static_scale) {
  auto fp8_qdq = [](double v, float s) {
    return double(fp8_e4m3_to_float(float_to_fp8_e4m3(float(v / s)))) * s;
  };
  auto dynamic_scale = [](const double* v, size_t n) {
    double amax = 0.0;
    for (size_t i = 0; i < n; ++i)
      if (std::fabs(v[i]) > amax) amax = std::fabs(v[i]);
    return std::max(float(amax), 1e-10f) / 448.0f;
  };
  switch (scheme) {
    case QuantScheme::fp8_per_tensor:
      for (double& v : x) v = fp8_qdq(v, static_scale);
      break;
    case QuantScheme::fp8_per_channel: {
      const float s = dynamic_scale(x.data(), x.size());
      for (double& v : x) v = fp8_qdq(v, s);
      break;
    }
    case QuantScheme::fp8_block:
      for (size_t g = 0; g < x.size(); g += 128) {
        const size_t n = std::min<size_t>(128, x.size() - g);
        const float s = dynamic_scale(x.data() + g, n);
        for (size_t i = g; i < g + n; ++i) x[i] = fp8_qdq(x[i], s);
      }
      break;
    default:
      for (double& v : x) v = round_to_bf16(float(v));
  }
}

double activate(const Activation& act, const std::vector<double>& h, int64_t i, int64_t I) {
  auto sigmoid = [](double v) { return 1.0 / (1.0 + std::exp(-v)); };
  switch (act.kind) {
    case ActivationKind::silu_mul: return h[i] * sigmoid(h[i]) * h[I + i];
    case ActivationKind::gelu_mul: return 0.5 * h[i] * (1.0 + std::erf(h[i] / std::sqrt(2.0))) * h[I + i];
    case ActivationKind::gelu_tanh_mul: {
      const double g = h[i];
      return 0.5 * g * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (g + 0.044715 * g * g * g))) * h[I + i];
    }
    case ActivationKind::swiglu_oai: {
      const double g = std::min(h[2 * i], double(act.limit));
      const double u = std::clamp(h[2 * i + 1], -double(act.limit), double(act.limit));
      return (u + 1.0) * g * sigmoid(double(act.alpha) * g);
    }
    case ActivationKind::relu2: {
      const double r = std::max(h[i], 0.0);
      return r * r;
    }
  }
  return 0.0;
}

struct RefSetup {
  std::vector<int64_t> tokens;
  RefMatrix w13, w2;
  const int32_t* map;
};

RefSetup setup(const MoEConfig& c, const ExpertWeights& w, const Tensor& hidden, const Tensor& ids,
               std::span<const int64_t> tokens) {
  validate_config(c);
  validate_weights(c, w);
  check_checkpoint_fp4_packing(w, "the reference");
  FMOE_CHECK(hidden.defined() && hidden.ndim() == 2, "hidden must be [M, K], got ", hidden.describe());
  const int64_t M = hidden.size(0);
  check_tensor(hidden, "hidden", DType::bf16, {M, c.hidden_size}, Device::cpu());
  check_tensor(ids, "topk_ids", DType::i32, {M, c.routing.top_k}, Device::cpu());
  RefSetup s{{tokens.begin(), tokens.end()},
             {&w, c.quant, true, c.w13_rows(), c.hidden_size},
             {&w, c.quant, false, c.hidden_size, c.intermediate_size},
             c.parallel.expert_map.defined() ? c.parallel.expert_map.data_as<const int32_t>() : nullptr};
  if (s.tokens.empty()) {
    s.tokens.resize(static_cast<size_t>(M));
    std::iota(s.tokens.begin(), s.tokens.end(), 0);
  }
  for (int64_t t : s.tokens) FMOE_CHECK(t >= 0 && t < M, "tokens must index rows of hidden [0, ", M, "), got ", t);
  return s;
}

int32_t local_of(const MoEConfig& c, const int32_t* map, int32_t id) {
  if (id < 0 || id >= c.num_experts) return -1;
  return map ? map[id] : id;
}

// GEMM1 (+bias) and the activation of inputs a[0..n) through local expert e, in double: each weight row read
// once for all of them. Returns their activation outputs.
std::vector<std::vector<double>> intermediate(const MoEConfig& c, const ExpertWeights& w, const RefMatrix& w13,
                                              const std::vector<const std::vector<double>*>& a, int32_t e) {
  const int64_t N1 = c.w13_rows(), I = c.intermediate_size;
  std::vector<std::vector<double>> h(a.size(), std::vector<double>(static_cast<size_t>(N1)));
  std::vector<double> wrow;
  for (int64_t n = 0; n < N1; ++n) {
    const double* row = w13.row(e, n, wrow);
    for (size_t i = 0; i < a.size(); ++i) {
      double acc = dot(*a[i], row);
      if (w.w13_bias.defined()) acc += w.w13_bias.data_as<const float>()[e * N1 + n];
      h[i][n] = round_to_bf16(float(acc));  // GEMM1's output is a bf16 tensor (vLLM's cache1)
    }
  }
  std::vector<std::vector<double>> x(a.size(), std::vector<double>(static_cast<size_t>(I)));
  for (size_t i = 0; i < a.size(); ++i)
    for (int64_t j = 0; j < I; ++j) x[i][j] = activate(c.activation, h[i], j, I);
  return x;
}

// Rows of the token list taken at a time: each weight row is read once per block (RealModelShapes' references,
// deepseek-v3's fp8 experts and mixtral's, had spent ~190 s of GPU-machine time dequantizing it per token and slot).
constexpr size_t kBlockRows = 64;

// The inputs of rows [r0, r0 + n) of the token list — with `recipe`, as GEMM1 reads them (weighted on the input
// for llama4, quantized per the scheme), else as hidden holds them — and which of their (row, slot) pairs each
// local expert takes, in row and slot order.
struct Block {
  std::vector<std::vector<double>> a;          // [n][K]
  std::vector<std::vector<int64_t>> pairs;     // [local expert]: (row - r0) * k + slot
};
Block block_inputs(const MoEConfig& c, const RefSetup& s, const Tensor& hidden, const Tensor& topk_ids,
                   const float* topk_weights, size_t r0, size_t n, float a1_scale, bool recipe) {
  const int64_t K = c.hidden_size, k = c.routing.top_k;
  const bool on_input = c.apply_router_weight_on_input();
  Block b;
  b.a.assign(n, std::vector<double>(static_cast<size_t>(K)));
  b.pairs.resize(static_cast<size_t>(c.num_local_experts()));
  for (size_t r = 0; r < n; ++r) {
    const int64_t t = s.tokens[r0 + r];
    std::vector<double>& a = b.a[r];
    for (int64_t i = 0; i < K; ++i) {
      const double x = bf16_to_float(hidden.data_as<const bfloat16>()[t * K + i]);
      a[i] = recipe && on_input ? round_to_bf16(float(x * topk_weights[t * k])) : x;
    }
    if (recipe && scheme_quantizes_activations(c.quant)) quantize_dequantize(c.quant, a, a1_scale);
    for (int64_t slot = 0; slot < k; ++slot) {
      const int32_t e = local_of(c, s.map, topk_ids.data_as<const int32_t>()[t * k + slot]);
      if (e >= 0) b.pairs[e].push_back(int64_t(r) * k + slot);
    }
  }
  return b;
}

// The inputs of the pairs, in the pairs' order.
std::vector<const std::vector<double>*> pair_inputs(const Block& b, const std::vector<int64_t>& pairs, int64_t k) {
  std::vector<const std::vector<double>*> a;
  for (int64_t p : pairs) a.push_back(&b.a[static_cast<size_t>(p / k)]);
  return a;
}

}  // namespace

std::vector<double> reference_moe(const MoEConfig& c, const ExpertWeights& w, const Tensor& hidden,
                                  const Tensor& topk_ids, const Tensor& topk_weights, std::span<const int64_t> tokens) {
  const RefSetup s = setup(c, w, hidden, topk_ids, tokens);
  const int64_t K = c.hidden_size, k = c.routing.top_k;
  check_tensor(topk_weights, "topk_weights", DType::f32, {hidden.size(0), k}, Device::cpu());
  const float a1_scale = w.a13_scale.defined() ? *w.a13_scale.data_as<const float>() : 0.0f;
  const float a2_scale = w.a2_scale.defined() ? *w.a2_scale.data_as<const float>() : 0.0f;
  const bool on_input = c.apply_router_weight_on_input();
  const float* tw = topk_weights.data_as<const float>();
  std::vector<double> out(s.tokens.size() * static_cast<size_t>(K), 0.0);
  for (size_t r0 = 0; r0 < s.tokens.size(); r0 += kBlockRows) {
    const size_t n = std::min(kBlockRows, s.tokens.size() - r0);
    const Block b = block_inputs(c, s, hidden, topk_ids, tw, r0, n, a1_scale, /*recipe=*/true);
    std::vector<std::vector<double>> y(n * static_cast<size_t>(k));  // GEMM2's output of each (row, slot)
    std::vector<double> wrow;
    for (int32_t e = 0; e < int32_t(b.pairs.size()); ++e) {
      const std::vector<int64_t>& pairs = b.pairs[e];
      if (pairs.empty()) continue;
      std::vector<std::vector<double>> x = intermediate(c, w, s.w13, pair_inputs(b, pairs, k), e);
      for (std::vector<double>& xi : x) quantize_dequantize(c.quant, xi, a2_scale);
      for (int64_t p : pairs) y[static_cast<size_t>(p)].resize(static_cast<size_t>(K));
      for (int64_t j = 0; j < K; ++j) {
        const double* row = s.w2.row(e, j, wrow);
        for (size_t i = 0; i < pairs.size(); ++i) {
          double acc = dot(x[i], row);
          if (w.w2_bias.defined()) acc += w.w2_bias.data_as<const float>()[e * K + j];
          y[static_cast<size_t>(pairs[i])][j] = acc;
        }
      }
    }
    for (size_t r = 0; r < n; ++r) {
      const int64_t t = s.tokens[r0 + r];
      for (int64_t slot = 0; slot < k; ++slot) {
        const std::vector<double>& ys = y[r * k + slot];
        if (ys.empty()) continue;  // no local expert
        const double weight = on_input ? 1.0 : tw[t * k + slot];
        for (int64_t j = 0; j < K; ++j) out[(r0 + r) * K + j] += weight * ys[j];
      }
    }
  }
  return out;
}

double reference_intermediate_amax(const MoEConfig& c, const ExpertWeights& w, const Tensor& hidden,
                                   const Tensor& topk_ids, std::span<const int64_t> tokens) {
  const RefSetup s = setup(c, w, hidden, topk_ids, tokens);
  const int64_t k = c.routing.top_k;
  double amax = 0.0;
  for (size_t r0 = 0; r0 < s.tokens.size(); r0 += kBlockRows) {
    const size_t n = std::min(kBlockRows, s.tokens.size() - r0);
    // (the raw rows: the calibration of fp8-tensor's static scales)
    const Block b = block_inputs(c, s, hidden, topk_ids, nullptr, r0, n, 0.0f, /*recipe=*/false);
    for (int32_t e = 0; e < int32_t(b.pairs.size()); ++e)
      if (!b.pairs[e].empty())
        for (const std::vector<double>& x : intermediate(c, w, s.w13, pair_inputs(b, b.pairs[e], k), e))
          for (double v : x) amax = std::max(amax, std::fabs(v));
  }
  return amax;
}

Tolerance tolerance_for(QuantScheme scheme) {
  switch (scheme) {
    case QuantScheme::fp8_per_tensor:
    case QuantScheme::fp8_per_channel:
    case QuantScheme::fp8_block: return {4e-2, 5e-2};
    default: return {1e-2, 2e-2};
  }
}

}  // namespace fusedmoe
