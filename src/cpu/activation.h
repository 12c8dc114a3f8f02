// Activation over one row, in f32: h [N1] (GEMM1 output) -> out [I]. The element math is the
// shared host/device code of core/activation_math.h.
#pragma once

#include <cstdint>

#include "core/activation_math.h"
#include "fusedmoe/config.h"

namespace fusedmoe::cpu {

inline void apply_activation(const Activation& act, const float* h, int64_t I, float* out) {
  switch (act.kind) {
    case ActivationKind::swiglu_oai:  // gate/up interleaved
      for (int64_t i = 0; i < I; ++i)
        out[i] = gated_activation(act.kind, h[2 * i], h[2 * i + 1], act.alpha, act.limit);
      break;
    case ActivationKind::relu2:
      for (int64_t i = 0; i < I; ++i) out[i] = relu2_activation(h[i]);
      break;
    default:  // [gate | up]
      for (int64_t i = 0; i < I; ++i) out[i] = gated_activation(act.kind, h[i], h[I + i], act.alpha, act.limit);
      break;
  }
}

}  // namespace fusedmoe::cpu
