// deepseek-v3's grouped routing of one token by a block: a warp per group of 32 experts (lane l of warp w holds expert
// 32 w + l), for the layout of DeepSeek-V3/R1 (256 experts in 8 groups, the best 4 groups, top 8). The one-warp
// router (route_warp.cuh) runs the same steps as a chain of one warp's dependent instructions — its top-k alone is k
// rounds of warp maxima over sorted lane lists, ~1500 instructions at 6.6 cycles each for one token (H200, session 47).
// Here the groups score in parallel and every top-k is a rank count: a lane counts the keys above its own, 32
// shuffles with no dependence between them. Same semantics and the same bits as route_token_warp: the group score is
// the sum of the group's two largest choices (its largest without a correction bias; NaN skipped), groups and experts
// rank by rank_key (ties to the lower index), the weights are the picks' sigmoids summed for renormalization in the
// same warp order. deepseek-v3's one-token route 5.1 -> 3.2 us in the forward (H200, session 48). Limits
// (route_groups_fit): num_experts = 32 * num_expert_group, num_expert_group <= 32, topk_group * top_k <= 32.
#pragma once

#include "cuda/kernels/route_warp.cuh"

namespace fusedmoe::cuda {

// Whether route_token_groups routes this layout.
inline bool route_groups_fit(const RoutingParams& p) {
  return p.method == RoutingMethod::deepseek_v3 && p.num_expert_group >= 1 && p.num_expert_group <= 32 &&
         p.num_experts == 32 * p.num_expert_group && p.topk_group >= 1 && p.topk_group <= p.num_expert_group &&
         p.topk_group * p.top_k <= 32;
}

// How many lanes of the warp hold a key above `key` (keys are unique or 0).
__device__ inline int warp_rank(uint64_t key) {
  int rank = 0;
#pragma unroll
  for (int j = 0; j < 32; ++j) rank += __shfl_sync(kFullMask, key, j) > key ? 1 : 0;
  return rank;
}

// The same count for keys whose low halves rank the lanes in lane order (a group's experts): `high` alone travels.
__device__ inline int warp_rank_lane_ordered(uint32_t high) {
  const int lane = threadIdx.x & 31;
  int rank = 0;
#pragma unroll
  for (int j = 0; j < 32; ++j) {
    const uint32_t other = __shfl_sync(kFullMask, high, j);
    rank += other > high || (other == high && j < lane) ? 1 : 0;
  }
  return rank;
}

// Shared scratch of route_token_groups.
struct RouteGroupsScratch {
  float group_score[32];
  uint64_t candidate_key[32];  // group slot s (its rank among the chosen groups) holds its top_k at s * top_k + rank
  float candidate_weight[32];
  int pick_id[32];
  float pick_weight[32];
};

// Routes one token (every thread of a block of num_expert_group warps calls; logits: the token's row). Lane r < top_k
// of every warp returns pick r in (id, weight) (the caller stores warp 0's), the other lanes id -1.
template <class T>
__device__ inline void route_token_groups(const RoutingParams& p, const T* logits, RouteGroupsScratch& sh, int& id,
                                          float& weight) {
  using namespace routing_detail;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, k = p.top_k, e = warp * 32 + lane;
  const float s = sigmoid(sanitize(load_logit(logits + e)));
  const float choice = s + (p.correction_bias ? p.correction_bias[e] : 0.0f);
  // The group's score: its largest choice and, with a bias, the largest of the other lanes' (NaN skipped).
  const uint32_t mine = ordered_bits(choice != choice ? -INFINITY : choice), top = __reduce_max_sync(kFullMask, mine);
  const int holder = __ffs(__ballot_sync(kFullMask, mine == top)) - 1;
  const uint32_t second = __reduce_max_sync(kFullMask, lane == holder ? ordered_bits(-INFINITY) : mine);
  if (lane == 0)
    sh.group_score[warp] =
        p.correction_bias ? from_ordered_bits(top) + from_ordered_bits(second) : from_ordered_bits(top);
  __syncthreads();
  // The group's rank among the groups; the best topk_group are chosen.
  const uint64_t group_key = rank_key(sh.group_score[warp], warp);
  int group_rank = 0;
  for (int g = 0; g < p.num_expert_group; ++g) group_rank += rank_key(sh.group_score[g], g) > group_key ? 1 : 0;
  // A chosen group's top_k experts, placed by the group's rank and their own.
  const uint64_t key = rank_key(choice, e);
  const int rank = warp_rank_lane_ordered(uint32_t(key >> 32));
  if (group_rank < p.topk_group && rank < k) {
    sh.candidate_key[group_rank * k + rank] = key;
    sh.candidate_weight[group_rank * k + rank] = s;
  }
  __syncthreads();
  // The top_k of the topk_group * top_k candidates, in every warp alike (no warp leaves: the compiler then keeps the
  // shuffles free of divergence handling); warp 0 moves pick r to lane r.
  const bool held = lane < p.topk_group * k;
  const uint64_t ckey = held ? sh.candidate_key[lane] : 0;
  const int crank = warp_rank(ckey);
  if (warp == 0 && held && crank < k) {
    sh.pick_id[crank] = key_expert(ckey);
    sh.pick_weight[crank] = sh.candidate_weight[lane];
  }
  __syncthreads();
  id = -1;
  weight = 0.0f;
  if (lane < k) id = sh.pick_id[lane], weight = sh.pick_weight[lane];
  if (p.renormalize) {
    const float sum = warp_sum(lane < k ? weight : 0.0f);
    if (sum > 0.0f) weight /= sum;
  }
  if (p.routed_scaling_factor != 1.0f) weight *= p.routed_scaling_factor;
}

}  // namespace fusedmoe::cuda
