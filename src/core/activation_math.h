// Element-wise activation math shared by the CPU pipeline and the CUDA kernels (host/device): the
// gated and relu2 activations by kind, on the scalar functions of activation_fn.h.
#pragma once

#include "core/activation_fn.h"
#include "fusedmoe/config.h"
#include "fusedmoe/formats.h"

namespace fusedmoe {

// Gated activations: f(gate) * up. swiglu_oai clamps as gpt-oss does.
FMOE_HOST_DEVICE inline float gated_activation(ActivationKind kind, float gate, float up, float alpha, float limit) {
  switch (kind) {
    case ActivationKind::silu_mul: return act_silu(gate) * up;
    case ActivationKind::gelu_mul: return act_gelu(gate) * up;
    case ActivationKind::gelu_tanh_mul: return act_gelu_tanh(gate) * up;
    case ActivationKind::swiglu_oai: {
      const float g = gate < limit ? gate : limit;
      const float u = up < -limit ? -limit : (up > limit ? limit : up);
      return (u + 1.0f) * act_sigmoid_mul(g, alpha);
    }
    case ActivationKind::relu2: break;
  }
  return 0.0f;
}

// The two gated activations of the form x * sigmoid(a x) — silu_mul and swiglu_oai —, the bits of gated_activation,
// without its switch: selects, so that a GEMM epilogue that unrolls it stays small (the fp4 wgmma kernel's).
FMOE_HOST_DEVICE inline bool is_sigmoid_gated(ActivationKind kind) {
  return kind == ActivationKind::silu_mul || kind == ActivationKind::swiglu_oai;
}
FMOE_HOST_DEVICE inline float sigmoid_gated_activation(ActivationKind kind, float gate, float up, float alpha,
                                                       float limit) {
  const bool oai = kind == ActivationKind::swiglu_oai;
  const float g = oai && !(gate < limit) ? limit : gate;
  const float u = !oai ? up : (up < -limit ? -limit : (up > limit ? limit : up)) + 1.0f;
  return act_sigmoid_mul(g, oai ? alpha : 1.0f) * u;
}

FMOE_HOST_DEVICE inline float relu2_activation(float x) {
  const float r = x > 0.0f ? x : 0.0f;
  return r * r;
}

}  // namespace fusedmoe
