// deepseek-v3's grouped routing of one token by a block: a warp per group of 32 experts (lane l of warp w holds expert
// 32 w + l), for the layout of DeepSeek-V3/R1 (256 experts in 8 groups, the best 4 groups, top 8). The one-warp
// router (route_warp.cuh) runs the same steps as a chain of one warp's dependent instructions — its top-k alone is k
// rounds of warp maxima over sorted lane lists, ~1500 instructions at 6.6 cycles each for one token (H200, session 47).
// Here the groups score in parallel and every top-k is a rank count: a lane counts the keys above its own, 32
// shuffles with no dependence between them. Same semantics and the same bits as route_token_warp: the group score is
// the sum of the group's two largest choices (its largest without a correction bias; NaN skipped), groups and experts
// rank by rank_key (ties to the lower index), the weights are the picks' sigmoids summed for renormalization in the
// same warp order. deepseek-v3's one-token route 5.1 -> 3.2 us in the forward (H200, session 48). The monolithic
// route+plan kernel runs it too, a slot of warps per token on a named barrier (SlotSync). Limits (route_groups_fit):
// num_experts = 32 * num_expert_group, num_expert_group <= 32, topk_group * top_k <= 32. Only group 0's warp takes
// the last step, the top k of the candidates (the other warps leave): the router kernel's time at
// deepseek-v3's 256 / 1024 / 8192 tokens 4.6 / 9.5 / 69.6 -> 4.3 / 8.5 / 52.2 us (H200, session 61); large batches
// take the one-warp router all the same (heuristics.h, kBlockRouterMaxTokens).
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

// One lane's expert e of a group: its sigmoid score s and its choice (s plus the correction bias).
struct GroupLane {
  float s, choice;
};
template <class T>
__device__ inline GroupLane group_lane(const RoutingParams& p, const T* logits, int e) {
  using namespace routing_detail;
  const float s = sigmoid(sanitize(load_logit(logits + e)));
  return {s, s + (p.correction_bias ? p.correction_bias[e] : 0.0f)};
}

// The group's score from its lanes' choices (the whole warp calls; every lane gets it): its largest choice and, with a
// bias, the largest of the other lanes' (NaN skipped).
__device__ inline float group_score(const RoutingParams& p, float choice) {
  const int lane = threadIdx.x & 31;
  const uint32_t mine = ordered_bits(choice != choice ? -INFINITY : choice), top = __reduce_max_sync(kFullMask, mine);
  const int holder = __ffs(__ballot_sync(kFullMask, mine == top)) - 1;
  const uint32_t second = __reduce_max_sync(kFullMask, lane == holder ? ordered_bits(-INFINITY) : mine);
  return p.correction_bias ? from_ordered_bits(top) + from_ordered_bits(second) : from_ordered_bits(top);
}

// Group g's rank among the token's group scores (score[0 .. num_expert_group)); the best topk_group are chosen.
__device__ inline int group_rank(const RoutingParams& p, const float* score, int g) {
  const uint64_t key = rank_key(score[g], g);
  int rank = 0;
  for (int o = 0; o < p.num_expert_group; ++o) rank += rank_key(score[o], o) > key ? 1 : 0;
  return rank;
}

// Where the last step hands pick r to lane r.
struct GroupPicks {
  int id[32];
  float weight[32];
};

// The top_k of the candidates (lane j < topk_group * top_k holds candidate j: key ckey and sigmoid score cweight; the
// other lanes key 0), in one warp: the picks go through `picks`; lane r < top_k returns pick r in (id, weight),
// renormalized and scaled as route_token_warp does, the other lanes id -1.
__device__ inline void pick_top_k(const RoutingParams& p, uint64_t ckey, float cweight, GroupPicks& picks, int& id,
                                  float& weight) {
  const int lane = threadIdx.x & 31, k = p.top_k;
  const int crank = warp_rank(ckey);
  if (crank < k) {  // lanes without a candidate rank below the topk_group * top_k >= top_k held
    picks.id[crank] = key_expert(ckey);
    picks.weight[crank] = cweight;
  }
  __syncwarp();
  id = -1;
  weight = 0.0f;
  if (lane < k) id = picks.id[lane], weight = picks.weight[lane];
  if (p.renormalize) {
    const float sum = warp_sum(lane < k ? weight : 0.0f);
    if (sum > 0.0f) weight /= sum;
  }
  if (p.routed_scaling_factor != 1.0f) weight *= p.routed_scaling_factor;
}

// Shared scratch of route_token_groups.
struct RouteGroupsScratch {
  float group_score[32];
  uint64_t candidate_key[32];  // group slot s (its rank among the chosen groups) holds its top_k at s * top_k + rank
  float candidate_weight[32];
  GroupPicks picks;
};

// The barrier of the warps that route one token: the whole block (the router kernel), or a named barrier over a
// slot of them (the route+plan kernel, a token a slot; ids 1..kGroupSlotBarriers, barrier 0 is __syncthreads()).
struct BlockSync {
  __device__ void operator()() const { __syncthreads(); }
};
inline constexpr int kGroupSlotBarriers = 15;
struct SlotSync {
  int id, threads;
  __device__ void operator()() const { asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory"); }
};

// Routes one token (every thread of num_expert_group warps calls, warp `group` holding that group; sync: their
// barrier; logits: the token's row). Only group 0's warp takes the last step, the top k of the candidates: its lane
// r < top_k returns pick r in (id, weight), every other lane id -1 (sync is not called after the candidates are
// placed, so the other warps may leave).
template <class T, class Sync>
__device__ inline void route_token_groups(const RoutingParams& p, const T* logits, RouteGroupsScratch& sh, int group,
                                          Sync sync, int& id, float& weight) {
  const int lane = threadIdx.x & 31, k = p.top_k, e = group * 32 + lane;
  const GroupLane x = group_lane(p, logits, e);
  const float score = group_score(p, x.choice);
  if (lane == 0) sh.group_score[group] = score;
  sync();
  // A chosen group's top_k experts, placed by the group's rank and their own.
  const int grank = group_rank(p, sh.group_score, group);
  const uint64_t key = rank_key(x.choice, e);
  const int rank = warp_rank_lane_ordered(uint32_t(key >> 32));
  if (grank < p.topk_group && rank < k) {
    sh.candidate_key[grank * k + rank] = key;
    sh.candidate_weight[grank * k + rank] = x.s;
  }
  sync();
  // The top_k of the topk_group * top_k candidates, in group 0's warp alone.
  id = -1;
  weight = 0.0f;
  if (group != 0) return;
  const bool held = lane < p.topk_group * k;
  pick_top_k(p, held ? sh.candidate_key[lane] : 0, held ? sh.candidate_weight[lane] : 0.0f, sh.picks, id, weight);
}

}  // namespace fusedmoe::cuda
