// Finalize kernel: weighted top-k reduce of expert-grouped rows back into token order.
// out[t] = bf16(sum over slots j in order of w[t, j] * rows[slot_rows[t, j]]), f32 sums;
// slots with row -1 add nothing. One block per token, 8 columns (16 bytes) per thread step.
// Deterministic: the order of the sum is fixed by the slot order alone. Limits: K % 8 == 0.
#include "cuda/cuda_util.h"
#include "cuda/kernels/kernels.h"
#include "cuda/kernels/launch.cuh"

namespace fusedmoe::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kMaxTopK = 32;

__global__ void __launch_bounds__(kThreads) finalize_kernel(const bf16* rows, const int32_t* slot_rows,
                                                            const float* weights, int top_k, int64_t K, bf16* out) {
  const int64_t t = blockIdx.x;
  __shared__ int32_t row_of[kMaxTopK];
  __shared__ float weight_of[kMaxTopK];
  pdl_wait();
  pdl_launch_dependents();
  if (threadIdx.x < top_k) {
    row_of[threadIdx.x] = slot_rows[t * top_k + threadIdx.x];
    weight_of[threadIdx.x] = weights ? weights[t * top_k + threadIdx.x] : 1.0f;
  }
  __syncthreads();
  for (int64_t c = int64_t(threadIdx.x) * 8; c < K; c += kThreads * 8) {
    float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    for (int j = 0; j < top_k; ++j) {
      const int32_t r = row_of[j];
      if (r < 0) continue;
      const uint4 raw = *reinterpret_cast<const uint4*>(rows + int64_t(r) * K + c);
      const bf16* v = reinterpret_cast<const bf16*>(&raw);
      const float w = weight_of[j];
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[i] += w * __bfloat162float(v[i]);
    }
    __align__(16) bf16 o[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) o[i] = __float2bfloat16_rn(acc[i]);
    *reinterpret_cast<uint4*>(out + t * K + c) = *reinterpret_cast<const uint4*>(o);
  }
}

}  // namespace

void launch_finalize(const bf16* rows, const int32_t* slot_rows, const float* weights, int64_t M, int top_k,
                     int64_t K, bf16* out, cudaStream_t s) {
  FMOE_CHECK(top_k <= kMaxTopK, "the CUDA finalize handles top_k <= ", kMaxTopK, ", got ", top_k);
  if (M == 0) return;
  launch(finalize_kernel, dim3(static_cast<unsigned>(M)), dim3(kThreads), s, rows, slot_rows, weights, top_k, K, out);
}

}  // namespace fusedmoe::cuda
