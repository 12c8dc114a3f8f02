// Activation kernels: GEMM1 output h bf16 [R, N1] (expert-grouped rows), plus the w13 bias of the
// row's expert when given, -> the GEMM2 input [R, I], bf16 or e4m3 with one f32 scale per 1x128
// group (grouped M-major, see kernels.h): the group's amax / 448, fp8-tensor's static scale, or
// (fp8-channel, a warp per row) the row's amax / 448.
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

// 8 values of h at column c, plus the bias at the same columns when there is one.
__device__ inline void load8(const bf16* p, const float* bias, int64_t c, float (&f)[8]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p + c);
  const bf16* v = reinterpret_cast<const bf16*>(&raw);
#pragma unroll
  for (int i = 0; i < 8; ++i) f[i] = __bfloat162float(v[i]);
  if (bias) {
    const float4 b0 = *reinterpret_cast<const float4*>(bias + c), b1 = *reinterpret_cast<const float4*>(bias + c + 4);
    f[0] += b0.x, f[1] += b0.y, f[2] += b0.z, f[3] += b0.w;
    f[4] += b1.x, f[5] += b1.y, f[6] += b1.z, f[7] += b1.w;
  }
}

// The activations of columns c .. c + 7 of a row of h (N1 columns, and the row's bias or null).
__device__ inline void activate8(const Activation& act, const bf16* row, const float* row_bias, int64_t I, int64_t c,
                                 float (&a)[8]) {
  if (act.kind == ActivationKind::relu2) {
    float x[8];
    load8(row, row_bias, c, x);
#pragma unroll
    for (int i = 0; i < 8; ++i) a[i] = relu2_activation(x[i]);
    return;
  }
  float gate[8], up[8];
  if (act.kind == ActivationKind::swiglu_oai) {
    float p0[8], p1[8];
    load8(row, row_bias, 2 * c, p0);
    load8(row, row_bias, 2 * c + 8, p1);
#pragma unroll
    for (int i = 0; i < 4; ++i)
      gate[i] = p0[2 * i], up[i] = p0[2 * i + 1], gate[4 + i] = p1[2 * i], up[4 + i] = p1[2 * i + 1];
  } else {
    load8(row, row_bias, c, gate);
    load8(row, row_bias, I + c, up);
  }
#pragma unroll
  for (int i = 0; i < 8; ++i) a[i] = gated_activation(act.kind, gate[i], up[i], act.alpha, act.limit);
}

// The row's expert and its rows of h and bias: e = -1 past the plan's rows and for a batched plan's unused rows.
struct ActRow {
  int e;
  const bf16* h;
  const float* bias;
};
__device__ inline ActRow act_row(const Activation& act, const bf16* h, const float* bias, int64_t I,
                                 const RowPlan& plan, int num_local, int64_t r) {
  const int e = r < plan.offsets[num_local] ? plan.row_expert[r] : -1;
  const int64_t N1 = act.kind != ActivationKind::relu2 ? 2 * I : I;
  return {e, h + r * N1, bias && e >= 0 ? bias + int64_t(e) * N1 : nullptr};
}

// Scales grouped M-major: group g of planned row r (expert e) at
// offsets[e] * groups + g * counts[e] + (r - offsets[e]).
__device__ inline void store_group_scale(float* out_scales, const RowPlan& plan, int e, int64_t r, int64_t groups,
                                         int64_t g, float scale) {
  const int64_t off = plan.offsets[e];
  out_scales[off * groups + g * plan.counts[e] + (r - off)] = scale;
}

__global__ void __launch_bounds__(kThreads)
    activation_kernel(Activation act, const bf16* h, const float* bias, int64_t I, RowPlan plan, int num_local,
                      ActivationOut o) {
  pdl_wait();
  pdl_launch_dependents();
  const int64_t groups = (I + 127) / 128;
  const int64_t item = int64_t(blockIdx.x) * kGroupsPerBlock + (threadIdx.x >> 4);
  const int64_t r = item / groups, g = item % groups;
  const int sub = threadIdx.x & 15;
  const ActRow row = act_row(act, h, bias, I, plan, num_local, r);
  const int64_t c = g * 128 + sub * 8;
  const bool live = row.e >= 0 && c < I;
  float a[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  if (live) activate8(act, row.h, row.bias, I, c, a);
  if (o.scales) {  // every lane takes part in the shuffles
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) amax = fmaxf(amax, fabsf(a[i]));
    const float dynamic = fp8_scale_from_amax(half_warp_max(amax));
    if (!live) return;
    const float scale = o.static_scale ? *o.static_scale : dynamic;
    *reinterpret_cast<uint2*>(static_cast<uint8_t*>(o.out) + r * I + c) = pack_e4m3x8(a, scale);
    if (sub == 0) store_group_scale(o.scales, plan, row.e, r, groups, g, scale);
  } else if (live) {
    __align__(16) bf16 v[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = __float2bfloat16_rn(a[i]);
    *reinterpret_cast<uint4*>(static_cast<bf16*>(o.out) + r * I + c) = *reinterpret_cast<const uint4*>(v);
  }
}

// fp8-channel's GEMM2 input: a warp per planned row, 8 rows a block; the row's activations' amax first,
// then the activations again (recomputed from h, which L1 still holds) over amax / 448, and the row's
// scale in each group slot. (A block of 256 threads per row ran 3% slower than a bf16 activation plus a
// separate per-row quantization at qwen3's 1024-8192 tokens: I = 768 left 160 of its threads idle.)
constexpr int kRowsPerBlock = kThreads / 32;

__global__ void __launch_bounds__(kThreads)
    activation_rows_kernel(Activation act, const bf16* h, const float* bias, int64_t I, RowPlan plan,
                           int num_local, int64_t max_rows, ActivationOut o) {
  const int64_t r = int64_t(blockIdx.x) * kRowsPerBlock + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  pdl_wait();
  pdl_launch_dependents();
  if (r >= max_rows) return;
  const ActRow row = act_row(act, h, bias, I, plan, num_local, r);
  if (row.e < 0) return;  // the whole warp
  float amax = 0.0f;
  for (int64_t c = int64_t(lane) * 8; c < I; c += 32 * 8) {
    float a[8];
    activate8(act, row.h, row.bias, I, c, a);
#pragma unroll
    for (int i = 0; i < 8; ++i) amax = fmaxf(amax, fabsf(a[i]));
  }
  const float scale = fp8_scale_from_amax(half_warp_max(fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 16))));
  for (int64_t c = int64_t(lane) * 8; c < I; c += 32 * 8) {
    float a[8];
    activate8(act, row.h, row.bias, I, c, a);
    *reinterpret_cast<uint2*>(static_cast<uint8_t*>(o.out) + r * I + c) = pack_e4m3x8(a, scale);
  }
  const int64_t groups = I / 128;
  for (int64_t g = lane; g < groups; g += 32) store_group_scale(o.scales, plan, row.e, r, groups, g, scale);
}

}  // namespace

void launch_activation(const Activation& act, const bf16* h, const float* bias, int64_t I, const RowPlan& plan,
                       int num_local, int64_t max_rows, const ActivationOut& out, cudaStream_t s) {
  if (max_rows == 0) return;
  if (out.per_row) {
    launch(activation_rows_kernel, dim3(static_cast<unsigned>((max_rows + kRowsPerBlock - 1) / kRowsPerBlock)),
           dim3(kThreads), s, act, h, bias, I, plan, num_local, max_rows, out);
    return;
  }
  const int64_t items = max_rows * ((I + 127) / 128);
  launch(activation_kernel, dim3(static_cast<unsigned>((items + kGroupsPerBlock - 1) / kGroupsPerBlock)),
         dim3(kThreads), s, act, h, bias, I, plan, num_local, out);
}

}  // namespace fusedmoe::cuda
