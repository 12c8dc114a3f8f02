// Router kernel: logits [M, E] (f32 or bf16) -> top-k ids i32 [M, k] and weights f32 [M, k].
// One warp per token (route_token_warp); E <= 1024, groups <= 64 (checked by the host). A kernel per J (experts a
// lane holds) and method family (RouteFamily: each kernel holds its own method's code alone). deepseek-v3's layout of
// groups of 32 experts (route_groups_fit) takes a block per token instead, a warp per group (route_groups.cuh), where
// the caller asks (block_router: up to heuristics.h's kBlockRouterMaxTokens tokens); only its group-0 warp picks the
// top k.
#include <cuda_bf16.h>

#include "cuda/cuda_util.h"
#include "cuda/kernels/kernels.h"
#include "cuda/kernels/launch.cuh"
#include "cuda/kernels/route_groups.cuh"
#include "cuda/kernels/route_warp.cuh"

namespace fusedmoe::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;

template <int J, RouteFamily F, class T>
__global__ void __launch_bounds__(kWarpsPerBlock * 32) route_kernel(RoutingParams p, const T* logits, int64_t M,
                                                                    int32_t* ids, float* weights) {
  __shared__ float group_scores[kWarpsPerBlock][kMaxExpertGroups];
  const int warp = threadIdx.x >> 5;
  const int64_t t = int64_t(blockIdx.x) * kWarpsPerBlock + warp;
  pdl_wait();
  pdl_launch_dependents();
  if (t >= M) return;
  route_and_store<J, F>(p, logits, t, group_scores[warp], ids, weights);
}

// A block of num_expert_group warps per token.
template <class T>
__global__ void __launch_bounds__(1024) route_groups_kernel(RoutingParams p, const T* logits, int32_t* ids,
                                                            float* weights) {
  __shared__ RouteGroupsScratch scratch;
  const int64_t t = blockIdx.x;
  pdl_wait();
  pdl_launch_dependents();
  int id;
  float weight;
  route_token_groups(p, logits + t * p.num_experts, scratch, static_cast<int>(threadIdx.x >> 5), BlockSync{}, id,
                     weight);
  if (threadIdx.x < p.top_k) {  // warp 0's picks
    ids[t * p.top_k + threadIdx.x] = id;
    weights[t * p.top_k + threadIdx.x] = weight;
  }
}

template <class T>
void launch_typed(const RoutingParams& p, const T* logits, int64_t M, int32_t* ids, float* weights, cudaStream_t s,
                  bool block_router) {
  if (block_router && route_groups_fit(p)) {
    launch(route_groups_kernel<T>, dim3(static_cast<unsigned>(M)), dim3(32 * p.num_expert_group), s, p, logits, ids,
           weights);
    return;
  }
  const dim3 grid(static_cast<unsigned>((M + kWarpsPerBlock - 1) / kWarpsPerBlock)), block(kWarpsPerBlock * 32);
  const int E = p.num_experts;
  with_route_family(p.method, [&](auto family) {
    constexpr RouteFamily F = decltype(family)::value;
    if (E <= 32) launch(route_kernel<1, F, T>, grid, block, s, p, logits, M, ids, weights);
    else if (E <= 64) launch(route_kernel<2, F, T>, grid, block, s, p, logits, M, ids, weights);
    else if (E <= 128) launch(route_kernel<4, F, T>, grid, block, s, p, logits, M, ids, weights);
    else if (E <= 256) launch(route_kernel<8, F, T>, grid, block, s, p, logits, M, ids, weights);
    else if (E <= 512) launch(route_kernel<16, F, T>, grid, block, s, p, logits, M, ids, weights);
    else launch(route_kernel<32, F, T>, grid, block, s, p, logits, M, ids, weights);
  });
}

}  // namespace

void launch_route(const RoutingParams& p, const void* logits, bool logits_bf16, int64_t M, int32_t* ids,
                  float* weights, cudaStream_t s, bool block_router) {
  FMOE_CHECK(p.num_experts <= kMaxRouterExperts, "the CUDA router handles num_experts <= ", kMaxRouterExperts,
             ", got ", p.num_experts);
  FMOE_CHECK(p.top_k <= 32, "the CUDA router handles top_k <= 32, got ", p.top_k);
  if (M == 0) return;
  if (logits_bf16)
    launch_typed(p, static_cast<const __nv_bfloat16*>(logits), M, ids, weights, s, block_router);
  else
    launch_typed(p, static_cast<const float*>(logits), M, ids, weights, s, block_router);
}

}  // namespace fusedmoe::cuda
