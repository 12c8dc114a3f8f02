// Expert bias on grouped rows: y[r, n] = bf16(y[r, n] + bias[row_expert[r], n]) for every planned
// row r (the w2 bias of the grouped-GEMM path; the small-M kernels add it in their epilogue and
// the activation kernel adds the w13 bias). One block per row, 8 columns per thread step.
// Limits: N % 8 == 0.
#include "cuda/cuda_util.h"
#include "cuda/kernels/kernels.h"
#include "cuda/kernels/launch.cuh"

namespace fusedmoe::cuda {
namespace {

constexpr int kThreads = 128;

__global__ void __launch_bounds__(kThreads) add_expert_bias_kernel(bf16* y, int64_t N, const float* bias,
                                                                   RowPlan plan, int num_local) {
  const int64_t r = blockIdx.x;
  pdl_wait();
  pdl_launch_dependents();
  if (r >= plan.offsets[num_local]) return;
  const int e = plan.row_expert[r];
  if (e < 0) return;  // an unused row of a batched plan
  const float* b = bias + int64_t(e) * N;
  bf16* row = y + r * N;
  for (int64_t c = int64_t(threadIdx.x) * 8; c < N; c += kThreads * 8) {
    __align__(16) bf16 v[8];
    *reinterpret_cast<uint4*>(v) = *reinterpret_cast<const uint4*>(row + c);
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = __float2bfloat16_rn(__bfloat162float(v[i]) + b[c + i]);
    *reinterpret_cast<uint4*>(row + c) = *reinterpret_cast<const uint4*>(v);
  }
}

}  // namespace

void launch_add_expert_bias(bf16* y, int64_t N, const float* bias, const RowPlan& plan, int num_local,
                            int64_t max_rows, cudaStream_t s) {
  if (max_rows == 0) return;
  launch(add_expert_bias_kernel, dim3(static_cast<unsigned>(max_rows)), dim3(kThreads), s, y, N, bias, plan,
         num_local);
}

}  // namespace fusedmoe::cuda
