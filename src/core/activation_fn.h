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

#if defined(__CUDA_ARCH__)
// 2^x by ex2.approx, subnormal results flushed to zero: no range fix-up around each ex2 (three instructions a value).
// Where it differs from __expf's (e^x below 2^-126), 1 + e^x rounds to 1 either way, so the sigmoid keeps its bits.
__device__ inline float exp2_flush_subnormal(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
#endif

// x * sigmoid(alpha * x). On the device e^(-alpha x) is 2^(x * (-alpha log2(e))): one multiply a value, the factor
// made once per kernel (same bits as __expf's (-alpha x) * log2(e) for silu, alpha = 1; for swiglu_oai's alpha the
// argument may differ in its last bit).
FMOE_ACT_HD inline float act_sigmoid_mul(float x, float alpha) {
#if defined(__CUDA_ARCH__)
  return __fdividef(x, 1.0f + exp2_flush_subnormal(x * (alpha * -1.44269502f)));
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
