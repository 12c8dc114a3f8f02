// Finalize kernel: weighted top-k reduce of expert-grouped rows back into token order.
// out[t] = bf16(sum over slots j in order of w[t, j] * rows[slot_rows[t, j]]), f32 sums;
// slots with row -1 add nothing. Grid (token, 1024-column block), one 8-column (16-byte) chunk
// per thread, the slots' rows loaded 8 at a time before they are added (topk_sum.cuh): a decode
// batch pays two memory round trips, not one per slot.
// The f32 form (launch_finalize_f32) writes the sums unrounded: the partial sums an
// expert-parallel rank sends back to the tokens' home ranks.
// settled: slot_rows and weights were written two launches back or more (launch.cuh's load_settled),
// so a block reads them before its pdl_wait, while GEMM2 finishes; the rows need the wait.
// Deterministic: the order of the sum is fixed by the slot order alone. Limits: K % 8 == 0.
#include "cuda/cuda_util.h"
#include "cuda/kernels/kernels.h"
#include "cuda/kernels/launch.cuh"
#include "cuda/kernels/topk_sum.cuh"

namespace fusedmoe::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kColumnsPerBlock = kThreads * 8;
constexpr int kMaxTopK = 32;

__device__ inline void store8(const float (&acc)[8], bf16* out) { store_bf16x8(acc, out); }

__device__ inline void store8(const float (&acc)[8], float* out) {
  *reinterpret_cast<float4*>(out) = make_float4(acc[0], acc[1], acc[2], acc[3]);
  *reinterpret_cast<float4*>(out + 4) = make_float4(acc[4], acc[5], acc[6], acc[7]);
}

template <class Out>
__global__ void __launch_bounds__(kThreads) finalize_kernel(const bf16* rows, const int32_t* slot_rows,
                                                            const float* weights, int top_k, int64_t K, Out* out,
                                                            bool settled) {
  const int64_t t = blockIdx.x, c = int64_t(blockIdx.y) * kColumnsPerBlock + threadIdx.x * 8;
  __shared__ int32_t row_of[kMaxTopK];
  __shared__ float weight_of[kMaxTopK];
  const auto load_slots = [&] {
    if (threadIdx.x < top_k) {
      const int64_t i = t * top_k + threadIdx.x;
      row_of[threadIdx.x] = load_settled(slot_rows + i);
      weight_of[threadIdx.x] = weights ? load_settled(weights + i) : 1.0f;
    }
  };
  if (settled) load_slots();
  pdl_wait();
  pdl_launch_dependents();
  if (!settled) load_slots();
  __syncthreads();
  if (c >= K) return;
  float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  add_weighted_rows8<false>(row_of, weight_of, top_k, rows, K, c, acc);
  store8(acc, out + t * K + c);
}

template <class Out>
void launch_typed(const bf16* rows, const int32_t* slot_rows, const float* weights, int64_t M, int top_k, int64_t K,
                  Out* out, cudaStream_t s, bool settled = false) {
  FMOE_CHECK(top_k <= kMaxTopK, "the CUDA finalize handles top_k <= ", kMaxTopK, ", got ", top_k);
  if (M == 0) return;
  const dim3 grid(static_cast<unsigned>(M), static_cast<unsigned>((K + kColumnsPerBlock - 1) / kColumnsPerBlock));
  launch(finalize_kernel<Out>, grid, dim3(kThreads), s, rows, slot_rows, weights, top_k, K, out, settled);
}

}  // namespace

void launch_finalize(const bf16* rows, const int32_t* slot_rows, const float* weights, int64_t M, int top_k,
                     int64_t K, bf16* out, cudaStream_t s, bool settled) {
  launch_typed(rows, slot_rows, weights, M, top_k, K, out, s, settled);
}

void launch_finalize_f32(const bf16* rows, const int32_t* slot_rows, const float* weights, int64_t M, int top_k,
                         int64_t K, float* out, cudaStream_t s) {
  launch_typed(rows, slot_rows, weights, M, top_k, K, out, s);
}

}  // namespace fusedmoe::cuda
