// Route + plan kernel, the first step of the monolithic decode path: one block (256 threads, or
// 1024 past 256 experts, 8 tokens or 256 slots) routes every token (a warp per token,
// route_token_warp: the modular router's code, so both pick the same experts) and then builds the
// row plan over the ids it just wrote (plan_block: the modular plan's code). One launch instead of two, for
// decode-size batches. deepseek-v3's groups of 32 experts take the modular router's block router instead
// (route_groups.cuh) where a 256- or 512-thread block holds a slot of a warp per group for each token (DeepSeek-V3's 8
// groups: 1 or 2 tokens; route+plan 6.0 -> 4.3 us at 1 token, 5.7 -> 4.5 at 2, H200, session 49; rounds of slots, a
// 1024-thread block of 4 slots and a two-phase scheme over the block were slower than the warp router at 4-8 tokens).
// It also zeroes the fused decode kernel's counters when asked. One token (the warp router's kernel): the plan from
// the routing warp's registers and one barrier (route_plan_one_token) instead of plan_block's barriers and block scan.
// Limits: M <= kMaxRoutePlanTokens, num_local <= kPlanThreads, E <= kMaxRoutePlanExperts (256:
// every routed model of the presets; larger E takes the route and plan kernels, so fewer variants are compiled
// here). A kernel per method family (RouteFamily), as the router's. Host-checked. With beside_previous it works
// before its pdl_wait and waits at its end (kernels.h says when that is allowed).
#include <cuda_bf16.h>

#include <type_traits>

#include "cuda/cuda_util.h"
#include "cuda/kernels/kernels.h"
#include "cuda/kernels/launch.cuh"
#include "cuda/kernels/plan_block.cuh"
#include "cuda/kernels/route_groups.cuh"
#include "cuda/kernels/route_warp.cuh"

namespace fusedmoe::cuda {
namespace {

// One token: plan_block's plan without its barriers, block scan and atomics. Warp 0 routes the token and ranks its
// local picks — top-k picks are distinct experts and expert_map sends at most one expert to a local slot, so each
// local pick is one row and one work item, rows in expert order —, writes the rows, and hands the sorted picks to
// the block through one barrier; the block writes the per-expert arrays and the items from them.
template <int J, RouteFamily F, class T>
__device__ void route_plan_one_token(const RoutingParams& p, const T* logits, const int32_t* expert_map, int num_local,
                                     int32_t* ids, float* weights, const RowPlan& plan, float* group_scores) {
  __shared__ int picks[33];  // the local picks in ascending order; [32]: how many
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x, k = p.top_k;
    int id;
    float weight;
    route_token_warp<J, F>(p, logits, group_scores, id, weight);
    const int e = lane < k ? local_expert(id, p.num_experts, expert_map) : -1;
    int below = 0;  // the local picks smaller than this lane's: its row and its item
    for (int j = 0; j < k; ++j) {
      const int o = __shfl_sync(kFullMask, e, j);
      below += o >= 0 && o < e;
    }
    if (lane < k) {
      ids[lane] = id;
      weights[lane] = weight;
      plan.slot_rows[lane] = e >= 0 ? below : -1;
    }
    if (e >= 0) {
      picks[below] = e;
      plan.row_token[below] = 0;
      plan.row_expert[below] = e;
    }
    const int total = __popc(__ballot_sync(kFullMask, e >= 0));
    if (lane == 0) picks[32] = total;
  }
  __syncthreads();
  const int total = picks[32];
  for (int e = threadIdx.x; e < num_local; e += blockDim.x) {
    int below = 0, picked = 0;
    for (int i = 0; i < total; ++i) {
      below += picks[i] < e;
      picked += picks[i] == e;
    }
    plan.counts[e] = picked;
    plan.offsets[e] = below;
    plan.active[e] = e < total ? picks[e] : -1;  // the active list's entry e
  }
  if (threadIdx.x == 0) plan.offsets[num_local] = total;
  if (plan.item_rows > 0) {
    for (int i = threadIdx.x; i < total; i += blockDim.x) plan.items[i] = PlanItem{picks[i], 0, i, 1};
    finish_items(plan, total);
  }
}

template <int J, RouteFamily F, class T, int kThreads>
__global__ void __launch_bounds__(kThreads, 1) route_plan_kernel(RoutingParams p, const T* logits, int64_t M,
                                                                 const int32_t* expert_map, int num_local,
                                                                 int32_t* ids, float* weights, RowPlan plan,
                                                                 int32_t* zero, int64_t n_zero,
                                                                 bool beside_previous) {
  constexpr int kWarps = kThreads / 32;
  __shared__ float group_scores[kWarps][kMaxExpertGroups];
  const int warp = threadIdx.x >> 5;
  if (!beside_previous) pdl_wait();
  for (int64_t i = threadIdx.x; i < n_zero; i += kThreads) zero[i] = 0;
  if (M == 1) {
    route_plan_one_token<J, F>(p, logits, expert_map, num_local, ids, weights, plan, group_scores[0]);
  } else {
    for (int64_t t = warp; t < M; t += kWarps) route_and_store<J, F>(p, logits, t, group_scores[warp], ids, weights);
    __syncthreads();  // the ids are visible to the whole block
    plan_block<1, kThreads>(ids, M * p.top_k, p.top_k, p.num_experts, expert_map, num_local, plan);
  }
  if (beside_previous) pdl_wait();  // this grid completes after the one before it: the kernels after it may count on
                                    // that kernel's writes as they did when this one waited first
  pdl_launch_dependents();
}

// deepseek-v3's groups of 32 experts (route_groups_fit): the block router's steps, a slot of num_expert_group warps
// per token (its named barrier: 1 + slot), in a block of 256 or 512 threads that holds a slot for every token (up to
// 8: route_plan_small_block's batches).
constexpr int kGroupPlanTokens = 8;
static_assert(kGroupPlanTokens <= kGroupSlotBarriers);
template <class T, int kThreads>
__global__ void __launch_bounds__(kThreads, 1)
    route_groups_plan_kernel(RoutingParams p, const T* logits, int64_t M, const int32_t* expert_map, int num_local,
                             int32_t* ids, float* weights, RowPlan plan, int32_t* zero, int64_t n_zero,
                             bool beside_previous) {
  __shared__ RouteGroupsScratch scratch[kGroupPlanTokens];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, t = warp / p.num_expert_group;
  if (!beside_previous) pdl_wait();
  for (int64_t i = threadIdx.x; i < n_zero; i += kThreads) zero[i] = 0;
  if (t < M) {  // the slots past the batch's tokens idle
    int id;
    float weight;
    route_token_groups(p, logits + t * p.num_experts, scratch[t], warp - t * p.num_expert_group,
                       SlotSync{1 + t, 32 * p.num_expert_group}, id, weight);
    if (warp == t * p.num_expert_group && lane < p.top_k) {
      ids[t * p.top_k + lane] = id;
      weights[t * p.top_k + lane] = weight;
    }
  }
  __syncthreads();  // the ids are visible to the whole block
  plan_block<1, kThreads>(ids, M * p.top_k, p.top_k, p.num_experts, expert_map, num_local, plan);
  if (beside_previous) pdl_wait();  // as route_plan_kernel
  pdl_launch_dependents();
}

template <class T>
void launch_typed(const RoutingParams& p, const T* logits, int64_t M, const int32_t* map, int num_local,
                  int32_t* ids, float* weights, const RowPlan& plan, cudaStream_t s, int32_t* zero, int64_t n_zero,
                  bool beside_previous, bool block_router) {
  const int E = p.num_experts;
  // Two block sizes (each route_plan_kernel is large): 256 threads when they give every local expert,
  // token (a warp each) and slot a thread, else 1024.
  const bool small = route_plan_small_block(M, p.top_k, num_local);
  // deepseek-v3's groups of 32 experts: the block router where 256 or 512 threads hold a slot for every token (the
  // 1024-thread block's plan runs at 64 registers and spills; measured slower, session 49).
  const int64_t slot_threads = 32 * M * p.num_expert_group;
  if (block_router && small && route_groups_fit(p) && slot_threads <= 512) {
    const int threads = slot_threads <= 256 ? 256 : 512;
    launch(threads == 256 ? route_groups_plan_kernel<T, 256> : route_groups_plan_kernel<T, 512>, 1, threads, s, p,
           logits, M, map, num_local, ids, weights, plan, zero, n_zero, beside_previous);
    return;
  }
  with_route_family(p.method, [&](auto family) {
    constexpr RouteFamily F = decltype(family)::value;
    auto go = [&](auto j) {
      constexpr int J = decltype(j)::value;
      const auto kernel = small ? route_plan_kernel<J, F, T, 256> : route_plan_kernel<J, F, T, kPlanThreads>;
      launch(kernel, 1, small ? 256 : kPlanThreads, s, p, logits, M, map, num_local, ids, weights, plan, zero,
             n_zero, beside_previous);
    };
    if (E <= 32) go(std::integral_constant<int, 1>{});
    else if (E <= 64) go(std::integral_constant<int, 2>{});
    else if (E <= 128) go(std::integral_constant<int, 4>{});
    else go(std::integral_constant<int, 8>{});
  });
}

}  // namespace

void launch_route_plan(const RoutingParams& p, const void* logits, bool logits_bf16, int64_t M,
                       const int32_t* expert_map, int num_local, int32_t* ids, float* weights, const RowPlan& plan,
                       cudaStream_t s, int32_t* zero, int64_t n_zero, bool beside_previous, bool block_router) {
  FMOE_CHECK(M >= 1 && M <= kMaxRoutePlanTokens, "the CUDA route+plan kernel takes 1 to ", kMaxRoutePlanTokens,
             " tokens, got ", M);
  FMOE_CHECK(num_local <= kPlanThreads, "the CUDA route+plan kernel handles up to ", kPlanThreads,
             " local experts, got ", num_local);
  FMOE_CHECK(p.num_experts <= kMaxRoutePlanExperts, "the CUDA route+plan kernel handles num_experts <= ",
             kMaxRoutePlanExperts, ", got ", p.num_experts);
  FMOE_CHECK(p.top_k <= 32, "the CUDA router handles top_k <= 32, got ", p.top_k);
  if (logits_bf16)
    launch_typed(p, static_cast<const __nv_bfloat16*>(logits), M, expert_map, num_local, ids, weights, plan, s, zero,
                 n_zero, beside_previous, block_router);
  else
    launch_typed(p, static_cast<const float*>(logits), M, expert_map, num_local, ids, weights, plan, s, zero, n_zero,
                 beside_previous, block_router);
}

}  // namespace fusedmoe::cuda
