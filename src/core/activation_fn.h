// The scalar activation functions, host and device, free of fusedmoe types so that the CUTLASS
// translation units (C++17) share them with the rest: the activation kernel, the fused decode kernel
// and GEMM1's gated epilogue compute the same bits; the CPU pipeline the same formulas.
// On the device, silu and swiglu_oai's sigmoid use the fast exp and divide (ex2.approx, rcp.approx:
// no slow-path branch, so a GEMM epilogue keeps its instruction-level parallelism); their error,
// a few fp32 ulp, is far below the bf16/fp8 rounding of every output.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define FMOE_ACT_HD __host__ __device__
#else
#define FMOE_ACT_HD
#endif

namespace fusedmoe {

// x * sigmoid(alpha * x)
FMOE_ACT_HD inline float act_sigmoid_mul(float x, float alpha) {
#if defined(__CUDA_ARCH__)
  return __fdividef(x, 1.0f + __expf(-alpha * x));
#else
  return x / (1.0f + std::exp(-alpha * x));
#endif
}
FMOE_ACT_HD inline float act_silu(float x) { return act_sigmoid_mul(x, 1.0f); }
FMOE_ACT_HD inline float act_gelu(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }
FMOE_ACT_HD inline float act_gelu_tanh(float x) {
  return 0.5f * x * (1.0f + tanhf(0.79788456080286536f * (x + 0.044715f * x * x * x)));
}

}  // namespace fusedmoe
