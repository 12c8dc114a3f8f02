// Activation kernels: GEMM1 output h bf16 [R, N1] (expert-grouped rows), plus the w13 bias of the
// row's expert when given, -> the GEMM2 input [R, I], bf16 or e4m3 with one f32 scale per 1x128
// group (grouped M-major, see kernels.h): the group's amax / 448, fp8-tensor's static scale, or
// (fp8-channel, a warp per row) the row's amax / 448.
// Eight lanes take one 128-column group of one planned row, two 16-byte pieces of h (8 columns each,
// 64 apart) per lane, 32 groups per block, one kernel per activation kind; rows past the plan's count
// and rows with row_expert -1 (a batched plan's unused rows) are skipped. (A block per row with 4
// columns per lane ran at 39% of DRAM peak for qwen3-30b-a3b at 8192 tokens: 154 us, ncu on H200.)
// Layouts of h: [gate | up] for the *_mul activations, interleaved (g0,u0,g1,u1,...) for
// swiglu_oai, I columns for relu2. Limits: I % 8 == 0 (bf16 out), I % 128 == 0 (fp8 out).
#include "core/activation_math.h"
#include "cuda/cuda_util.h"
#include "cuda/kernels/fp8_util.cuh"
#include "cuda/kernels/kernels.h"
#include "cuda/kernels/launch.cuh"
#include "cuda/kernels/topk_sum.cuh"  // store_bf16x8

namespace fusedmoe::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kGroupLanes = 8;  // lanes per 128-column group: 16 columns each
constexpr int kGroupsPerBlock = kThreads / kGroupLanes;

// The 16-byte pieces of a row of h behind activations c .. c + 7: gate and up (the *_mul activations), two
// interleaved pieces (swiglu_oai), or one (relu2; `second` unused). Loaded apart from the math so that a kernel can
// issue every load of a row before the first activation.
struct HPieces {
  uint4 first, second;
};
__device__ inline int64_t first_col(const Activation& act, int64_t c) {
  return act.kind == ActivationKind::swiglu_oai ? 2 * c : c;
}
__device__ inline int64_t second_col(const Activation& act, int64_t I, int64_t c) {
  return act.kind == ActivationKind::swiglu_oai ? 2 * c + 8 : I + c;
}
__device__ inline HPieces load_h(const Activation& act, const bf16* row, int64_t I, int64_t c) {
  HPieces p{*reinterpret_cast<const uint4*>(row + first_col(act, c)), {}};
  if (act.kind != ActivationKind::relu2) p.second = *reinterpret_cast<const uint4*>(row + second_col(act, I, c));
  return p;
}

// 8 values of h from the piece at column c, plus the bias at the same columns when there is one.
__device__ inline void to_float8(const uint4& raw, const float* bias, int64_t c, float (&f)[8]) {
  const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};  // bf16 pairs, the lower column in the low half
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(w[i] << 16);
    f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
  if (bias) {
    const float4 b0 = *reinterpret_cast<const float4*>(bias + c), b1 = *reinterpret_cast<const float4*>(bias + c + 4);
    f[0] += b0.x, f[1] += b0.y, f[2] += b0.z, f[3] += b0.w;
    f[4] += b1.x, f[5] += b1.y, f[6] += b1.z, f[7] += b1.w;
  }
}

// The activations of columns c .. c + 7 from their pieces of h (load_h) and the row's bias (or null).
__device__ inline void activate8(const Activation& act, const HPieces& h, const float* row_bias, int64_t I, int64_t c,
                                 float (&a)[8]) {
  float p0[8], p1[8];
  to_float8(h.first, row_bias, first_col(act, c), p0);
  if (act.kind == ActivationKind::relu2) {
#pragma unroll
    for (int i = 0; i < 8; ++i) a[i] = relu2_activation(p0[i]);
    return;
  }
  to_float8(h.second, row_bias, second_col(act, I, c), p1);
  float gate[8], up[8];
  if (act.kind == ActivationKind::swiglu_oai) {
#pragma unroll
    for (int i = 0; i < 4; ++i)
      gate[i] = p0[2 * i], up[i] = p0[2 * i + 1], gate[4 + i] = p1[2 * i], up[4 + i] = p1[2 * i + 1];
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i) gate[i] = p0[i], up[i] = p1[i];
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
// offsets[e] * groups + g * counts[e] + (r - offsets[e]); or M-major, at g * scale_rows + r (scale_rows > 0).
__device__ inline void store_group_scale(const ActivationOut& o, const RowPlan& plan, int e, int64_t r, int64_t groups,
                                         int64_t g, float scale) {
  if (o.scale_rows > 0) {
    o.scales[g * o.scale_rows + r] = scale;
    return;
  }
  const int64_t off = plan.offsets[e];
  o.scales[off * groups + g * plan.counts[e] + (r - off)] = scale;
}

// One 128-column group of one planned row per kGroupLanes lanes; lane `sub` takes the pieces at columns
// g * 128 + sub * 8 and 64 further on. Item arithmetic in 32 bits (the host checks rows x groups < 2^32).
// dense (a plan with slot_rows: every row below the plan's count has an expert) lets the loads of h go out
// beside the read of the row's expert; a batched plan's rows read their expert first (its unused rows are
// never written).
template <ActivationKind kKind>
__global__ void __launch_bounds__(kThreads)
    activation_kernel(Activation act, const bf16* h, const float* bias, uint32_t I, uint32_t groups, RowPlan plan,
                      int num_local, ActivationOut o) {
  act.kind = kKind;
  pdl_wait();
  pdl_launch_dependents();
  const uint32_t item = blockIdx.x * kGroupsPerBlock + threadIdx.x / kGroupLanes;
  const uint32_t r = item / groups, g = item - r * groups, sub = threadIdx.x % kGroupLanes;
  const uint32_t c0 = g * 128 + sub * 8, c1 = c0 + 64;
  const bool dense = plan.slot_rows != nullptr;
  const bool planned = r < uint32_t(plan.offsets[num_local]);
  const uint32_t N1 = kKind != ActivationKind::relu2 ? 2 * I : I;  // h's and the bias's columns
  const bf16* row = h + uint64_t(r) * N1;
  int e = planned && !dense ? plan.row_expert[r] : -1;
  const bool load = planned && (dense || e >= 0);
  HPieces p0, p1;  // read only where loaded
  if (load && c0 < I) p0 = load_h(act, row, I, c0);
  if (load && c1 < I) p1 = load_h(act, row, I, c1);
  if (planned && dense) e = plan.row_expert[r];
  const float* row_bias = bias && e >= 0 ? bias + uint64_t(e) * N1 : nullptr;
  const bool live0 = e >= 0 && c0 < I, live1 = e >= 0 && c1 < I;
  float a0[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  float a1[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  if (live0) activate8(act, p0, row_bias, I, c0, a0);
  if (live1) activate8(act, p1, row_bias, I, c1, a1);
  if (o.scales) {  // every lane takes part in the shuffles; fp8 out has I % 128 == 0: both pieces or none
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) amax = fmaxf(amax, fmaxf(fabsf(a0[i]), fabsf(a1[i])));
    const float dynamic = fp8_scale_from_amax(lanes_max<kGroupLanes>(amax));
    if (!live0) return;
    const float scale = o.static_scale ? *o.static_scale : dynamic;
    uint8_t* out = static_cast<uint8_t*>(o.out) + uint64_t(r) * I;
    *reinterpret_cast<uint2*>(out + c0) = pack_e4m3x8(a0, scale);
    *reinterpret_cast<uint2*>(out + c1) = pack_e4m3x8(a1, scale);
    if (sub == 0) store_group_scale(o, plan, e, r, groups, g, scale);
    return;
  }
  bf16* out = static_cast<bf16*>(o.out) + uint64_t(r) * I;
  if (live0) store_bf16x8(a0, out + c0);
  if (live1) store_bf16x8(a1, out + c1);
}

// fp8-channel's GEMM2 input: a warp per planned row, 8 rows a block; the row's activations' amax, then the
// activations over amax / 448, and the row's scale in each group slot. kChunks > 0 (I <= kChunks * 256): each lane
// keeps its kChunks pieces of 8 activations in registers, and every load of the row's h is issued before the first
// activation is computed. kChunks = 0 (any I): the second pass recomputes the activations from h, which L1 still
// holds (on H200 that took 128 us at 40% of DRAM peak for qwen3-30b-a3b at 8192 tokens, ncu). (A block of 256
// threads per row ran 3% slower than a bf16 activation plus a separate per-row quantization at qwen3's 1024-8192
// tokens: I = 768 left 160 of its threads idle.)
constexpr int kRowsPerBlock = kThreads / 32;

template <int kChunks>
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
  uint8_t* out = static_cast<uint8_t*>(o.out) + r * I;
  float amax = 0.0f;
  float a[kChunks > 0 ? kChunks : 1][8];  // kChunks > 0: the lane's activations
  if constexpr (kChunks > 0) {
    HPieces pieces[kChunks];
#pragma unroll
    for (int j = 0; j < kChunks; ++j) {
      const int64_t c = (int64_t(j) * 32 + lane) * 8;
      if (c < I) pieces[j] = load_h(act, row.h, I, c);
    }
#pragma unroll
    for (int j = 0; j < kChunks; ++j) {
      const int64_t c = (int64_t(j) * 32 + lane) * 8;
      if (c >= I) continue;
      activate8(act, pieces[j], row.bias, I, c, a[j]);
#pragma unroll
      for (int i = 0; i < 8; ++i) amax = fmaxf(amax, fabsf(a[j][i]));
    }
  } else {
    for (int64_t c = int64_t(lane) * 8; c < I; c += 32 * 8) {
      activate8(act, load_h(act, row.h, I, c), row.bias, I, c, a[0]);
#pragma unroll
      for (int i = 0; i < 8; ++i) amax = fmaxf(amax, fabsf(a[0][i]));
    }
  }
  const float scale = fp8_scale_from_amax(lanes_max<32>(amax));
  if constexpr (kChunks > 0) {
#pragma unroll
    for (int j = 0; j < kChunks; ++j) {
      const int64_t c = (int64_t(j) * 32 + lane) * 8;
      if (c < I) *reinterpret_cast<uint2*>(out + c) = pack_e4m3x8(a[j], scale);
    }
  } else {
    for (int64_t c = int64_t(lane) * 8; c < I; c += 32 * 8) {
      activate8(act, load_h(act, row.h, I, c), row.bias, I, c, a[0]);
      *reinterpret_cast<uint2*>(out + c) = pack_e4m3x8(a[0], scale);
    }
  }
  const int64_t groups = I / 128;
  for (int64_t g = lane; g < groups; g += 32) store_group_scale(o, plan, row.e, r, groups, g, scale);
}

}  // namespace

void launch_activation(const Activation& act, const bf16* h, const float* bias, int64_t I, const RowPlan& plan,
                       int num_local, int64_t max_rows, const ActivationOut& out, cudaStream_t s) {
  if (max_rows == 0) return;
  if (out.per_row) {
    const int64_t chunks = (I + 255) / 256;  // 256 activations per warp step
    const auto kernel = chunks <= 1   ? activation_rows_kernel<1>
                        : chunks <= 2 ? activation_rows_kernel<2>
                        : chunks <= 3 ? activation_rows_kernel<3>
                        : chunks <= 4 ? activation_rows_kernel<4>
                        : chunks <= 6 ? activation_rows_kernel<6>
                        : chunks <= 8 ? activation_rows_kernel<8>
                                      : activation_rows_kernel<0>;
    launch(kernel, dim3(static_cast<unsigned>((max_rows + kRowsPerBlock - 1) / kRowsPerBlock)), dim3(kThreads), s, act,
           h, bias, I, plan, num_local, max_rows, out);
    return;
  }
  const int64_t groups = (I + 127) / 128, items = max_rows * groups;
  FMOE_CHECK(items < (int64_t(1) << 32) - kGroupsPerBlock,
             "launch_activation: rows x (I / 128) must stay below 2^32, got ", max_rows, " x ", groups);
  const auto kernel = act.kind == ActivationKind::silu_mul        ? activation_kernel<ActivationKind::silu_mul>
                      : act.kind == ActivationKind::gelu_mul      ? activation_kernel<ActivationKind::gelu_mul>
                      : act.kind == ActivationKind::gelu_tanh_mul ? activation_kernel<ActivationKind::gelu_tanh_mul>
                      : act.kind == ActivationKind::swiglu_oai    ? activation_kernel<ActivationKind::swiglu_oai>
                                                                  : activation_kernel<ActivationKind::relu2>;
  launch(kernel, dim3(static_cast<unsigned>((items + kGroupsPerBlock - 1) / kGroupsPerBlock)), dim3(kThreads), s, act,
         h, bias, static_cast<uint32_t>(I), static_cast<uint32_t>(groups), plan, num_local, out);
}

}  // namespace fusedmoe::cuda
