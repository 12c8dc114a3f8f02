// Activation kernel: GEMM1 output h bf16 [R, N1] (expert-grouped rows), times the row's expert's
// column scales (fp8-channel's w13 scales) and plus its w13 bias when given, -> the GEMM2 input
// [R, I], bf16 or e4m3 with one f32 scale per 1x128 group (grouped M-major, see kernels.h): the
// group's amax / 448, or fp8-tensor's static scale.
// Each half-warp takes one 128-column group of one planned row, 8 columns per lane (16-byte loads
// of h), 16 groups per block; rows past the plan's count and rows with row_expert -1 (a batched
// plan's unused rows) are skipped. (A block per row with 4 columns per lane ran at 39% of DRAM
// peak for qwen3-30b-a3b at 8192 tokens: 154 us, ncu on H200.)
// Layouts of h: [gate | up] for the *_mul activations, interleaved (g0,u0,g1,u1,...) for
// swiglu_oai, I columns for relu2. Limits: I % 8 == 0 (bf16 out), I % 128 == 0 (fp8 out).
#include "core/activation_math.h"
#include "cuda/cuda_util.h"
#include "cuda/kernels/fp8_util.cuh"
#include "cuda/kernels/kernels.h"
#include "cuda/kernels/launch.cuh"

namespace fusedmoe::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kGroupsPerBlock = kThreads / 16;

// 8 values of h at column c, times the column scales and plus the bias at the same columns when given.
__device__ inline void load8(const bf16* p, const float* col_scale, const float* bias, int64_t c, float (&f)[8]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p + c);
  const bf16* v = reinterpret_cast<const bf16*>(&raw);
#pragma unroll
  for (int i = 0; i < 8; ++i) f[i] = __bfloat162float(v[i]);
  if (col_scale) {
    const float4 s0 = *reinterpret_cast<const float4*>(col_scale + c);
    const float4 s1 = *reinterpret_cast<const float4*>(col_scale + c + 4);
    f[0] *= s0.x, f[1] *= s0.y, f[2] *= s0.z, f[3] *= s0.w;
    f[4] *= s1.x, f[5] *= s1.y, f[6] *= s1.z, f[7] *= s1.w;
  }
  if (bias) {
    const float4 b0 = *reinterpret_cast<const float4*>(bias + c), b1 = *reinterpret_cast<const float4*>(bias + c + 4);
    f[0] += b0.x, f[1] += b0.y, f[2] += b0.z, f[3] += b0.w;
    f[4] += b1.x, f[5] += b1.y, f[6] += b1.z, f[7] += b1.w;
  }
}

__global__ void __launch_bounds__(kThreads)
    activation_kernel(Activation act, const bf16* h, const float* col_scale, const float* bias, int64_t I,
                      RowPlan plan, int num_local, ActivationOut o) {
  void* out = o.out;
  float* out_scales = o.scales;
  pdl_wait();
  pdl_launch_dependents();
  const int64_t groups = (I + 127) / 128;
  const int64_t item = int64_t(blockIdx.x) * kGroupsPerBlock + (threadIdx.x >> 4);
  const int64_t r = item / groups, g = item % groups;
  const int sub = threadIdx.x & 15;
  const int e = r < plan.offsets[num_local] ? plan.row_expert[r] : -1;  // -1: an unused row of a batched plan
  const int64_t c = g * 128 + sub * 8;
  const bool live = e >= 0 && c < I;
  const int64_t N1 = act.kind != ActivationKind::relu2 ? 2 * I : I;
  const bf16* row = h + r * N1;
  const float* row_bias = bias && e >= 0 ? bias + int64_t(e) * N1 : nullptr;
  const float* row_scale = col_scale && e >= 0 ? col_scale + int64_t(e) * N1 : nullptr;
  float a[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  if (live) {
    if (act.kind == ActivationKind::relu2) {
      float x[8];
      load8(row, row_scale, row_bias, c, x);
#pragma unroll
      for (int i = 0; i < 8; ++i) a[i] = relu2_activation(x[i]);
    } else {
      float gate[8], up[8];
      if (act.kind == ActivationKind::swiglu_oai) {
        float p0[8], p1[8];
        load8(row, row_scale, row_bias, 2 * c, p0);
        load8(row, row_scale, row_bias, 2 * c + 8, p1);
#pragma unroll
        for (int i = 0; i < 4; ++i)
          gate[i] = p0[2 * i], up[i] = p0[2 * i + 1], gate[4 + i] = p1[2 * i], up[4 + i] = p1[2 * i + 1];
      } else {
        load8(row, row_scale, row_bias, c, gate);
        load8(row, row_scale, row_bias, I + c, up);
      }
#pragma unroll
      for (int i = 0; i < 8; ++i) a[i] = gated_activation(act.kind, gate[i], up[i], act.alpha, act.limit);
    }
  }
  if (out_scales) {  // every lane takes part in the shuffles
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) amax = fmaxf(amax, fabsf(a[i]));
    const float dynamic = fp8_scale_from_amax(half_warp_max(amax));
    if (!live) return;
    const float scale = o.static_scale ? *o.static_scale : dynamic;
    uint2 packed = make_uint2(0, 0);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      packed.x |= uint32_t(to_e4m3(a[i] / scale)) << (8 * i);
      packed.y |= uint32_t(to_e4m3(a[4 + i] / scale)) << (8 * i);
    }
    *reinterpret_cast<uint2*>(static_cast<uint8_t*>(out) + r * I + c) = packed;
    if (sub == 0) {
      const int64_t off = plan.offsets[e];
      out_scales[off * groups + g * plan.counts[e] + (r - off)] = scale;
    }
  } else if (live) {
    __align__(16) bf16 o[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) o[i] = __float2bfloat16_rn(a[i]);
    *reinterpret_cast<uint4*>(static_cast<bf16*>(out) + r * I + c) = *reinterpret_cast<const uint4*>(o);
  }
}

}  // namespace

void launch_activation(const Activation& act, const bf16* h, const float* col_scale, const float* bias, int64_t I,
                       const RowPlan& plan, int num_local, int64_t max_rows, const ActivationOut& out,
                       cudaStream_t s) {
  if (max_rows == 0) return;
  const int64_t items = max_rows * ((I + 127) / 128);
  launch(activation_kernel, dim3(static_cast<unsigned>((items + kGroupsPerBlock - 1) / kGroupsPerBlock)),
         dim3(kThreads), s, act, h, col_scale, bias, I, plan, num_local, out);
}

}  // namespace fusedmoe::cuda
