// Activation functions of the CPU fast path, in f32: h [N1] (GEMM1 output) -> out [I].
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "fusedmoe/config.h"

namespace fusedmoe::cpu {

inline float silu(float x) { return x / (1.0f + std::exp(-x)); }
inline float gelu(float x) { return 0.5f * x * (1.0f + std::erf(x * 0.70710678118654752f)); }
inline float gelu_tanh(float x) {
  return 0.5f * x * (1.0f + std::tanh(0.79788456080286536f * (x + 0.044715f * x * x * x)));
}

inline void apply_activation(const Activation& act, const float* h, int64_t I, float* out) {
  switch (act.kind) {
    case ActivationKind::silu_mul:
      for (int64_t i = 0; i < I; ++i) out[i] = silu(h[i]) * h[I + i];
      break;
    case ActivationKind::gelu_mul:
      for (int64_t i = 0; i < I; ++i) out[i] = gelu(h[i]) * h[I + i];
      break;
    case ActivationKind::gelu_tanh_mul:
      for (int64_t i = 0; i < I; ++i) out[i] = gelu_tanh(h[i]) * h[I + i];
      break;
    case ActivationKind::swiglu_oai:
      for (int64_t i = 0; i < I; ++i) {
        const float g = std::min(h[2 * i], act.limit);
        const float u = std::clamp(h[2 * i + 1], -act.limit, act.limit);
        out[i] = (u + 1.0f) * (g / (1.0f + std::exp(-act.alpha * g)));
      }
      break;
    case ActivationKind::relu2:
      for (int64_t i = 0; i < I; ++i) {
        const float r = std::max(h[i], 0.0f);
        out[i] = r * r;
      }
      break;
  }
}

}  // namespace fusedmoe::cpu
