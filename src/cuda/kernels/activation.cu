// Activation kernel: GEMM1 output h bf16 [R, N1] (expert-grouped rows), plus the w13 bias of the
// row's expert when given, -> the GEMM2 input [R, I], bf16 or e4m3 with one f32 scale per 1x128
// group (grouped M-major, see kernels.h).
// One block per planned row (rows with row_expert -1, a batched plan's unused rows, are skipped);
// each warp takes 128 columns at a time, 4 per lane.
// Layouts of h: [gate | up] for the *_mul activations, interleaved (g0,u0,g1,u1,...) for
// swiglu_oai, I columns for relu2. Limits: I % 4 == 0 (bf16 out), I % 128 == 0 (fp8 out).
#include "core/activation_math.h"
#include "cuda/cuda_util.h"
#include "cuda/kernels/fp8_util.cuh"
#include "cuda/kernels/kernels.h"
#include "cuda/kernels/launch.cuh"

namespace fusedmoe::cuda {
namespace {

constexpr int kThreads = 256;

// 4 values of h at column c, plus the bias at the same columns when there is one.
__device__ inline void load4(const bf16* p, const float* bias, int64_t c, float (&f)[4]) {
  const uint2 raw = *reinterpret_cast<const uint2*>(p + c);
  const bf16* v = reinterpret_cast<const bf16*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) f[i] = __bfloat162float(v[i]);
  if (bias) {
    const float4 b = *reinterpret_cast<const float4*>(bias + c);
    f[0] += b.x, f[1] += b.y, f[2] += b.z, f[3] += b.w;
  }
}

__global__ void __launch_bounds__(kThreads) activation_kernel(Activation act, const bf16* h, const float* bias, int64_t I,
                                                              RowPlan plan, int num_local, void* out,
                                                              float* out_scales) {
  const int64_t r = blockIdx.x;
  pdl_wait();
  pdl_launch_dependents();
  if (r >= plan.offsets[num_local]) return;
  const int e = plan.row_expert[r];
  if (e < 0) return;  // an unused row of a batched plan
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t N1 = act.kind != ActivationKind::relu2 ? 2 * I : I;
  const bf16* row = h + r * N1;
  const float* row_bias = bias ? bias + int64_t(e) * N1 : nullptr;
  const int64_t groups = (I + 127) / 128;
  for (int64_t g = warp; g < groups; g += kThreads / 32) {
    const int64_t c = g * 128 + lane * 4;
    float a[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (c < I) {
      if (act.kind == ActivationKind::relu2) {
        float x[4];
        load4(row, row_bias, c, x);
#pragma unroll
        for (int i = 0; i < 4; ++i) a[i] = relu2_activation(x[i]);
      } else {
        float gate[4], up[4];
        if (act.kind == ActivationKind::swiglu_oai) {
          float p0[4], p1[4];
          load4(row, row_bias, 2 * c, p0);
          load4(row, row_bias, 2 * c + 4, p1);
          gate[0] = p0[0], up[0] = p0[1], gate[1] = p0[2], up[1] = p0[3];
          gate[2] = p1[0], up[2] = p1[1], gate[3] = p1[2], up[3] = p1[3];
        } else {
          load4(row, row_bias, c, gate);
          load4(row, row_bias, I + c, up);
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) a[i] = gated_activation(act.kind, gate[i], up[i], act.alpha, act.limit);
      }
    }
    if (out_scales) {
      float amax = 0.0f;
#pragma unroll
      for (int i = 0; i < 4; ++i) amax = fmaxf(amax, fabsf(a[i]));
      const float scale = fp8_scale_from_amax(warp_max_abs(amax));
      uint32_t packed = 0;
#pragma unroll
      for (int i = 0; i < 4; ++i) packed |= uint32_t(to_e4m3(a[i] / scale)) << (8 * i);
      *reinterpret_cast<uint32_t*>(static_cast<uint8_t*>(out) + r * I + c) = packed;
      if (lane == 0) {
        const int64_t off = plan.offsets[e];
        out_scales[off * groups + g * plan.counts[e] + (r - off)] = scale;
      }
    } else if (c < I) {
      __align__(8) bf16 o[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) o[i] = __float2bfloat16_rn(a[i]);
      *reinterpret_cast<uint2*>(static_cast<bf16*>(out) + r * I + c) = *reinterpret_cast<const uint2*>(o);
    }
  }
}

}  // namespace

void launch_activation(const Activation& act, const bf16* h, const float* bias, int64_t I, const RowPlan& plan,
                       int num_local, int64_t max_rows, void* out, float* out_scales, cudaStream_t s) {
  if (max_rows == 0) return;
  launch(activation_kernel, dim3(static_cast<unsigned>(max_rows)), dim3(kThreads), s, act, h, bias, I, plan,
         num_local, out, out_scales);
}

}  // namespace fusedmoe::cuda
