// Warp-parallel routing of one token: the device counterpart of core/route_token.h, with the
// same semantics (ties to the lower expert index, NaN as -inf, +inf sharing the softmax mass,
// grouped selection for deepseek_v3). One warp routes one token; lane l holds the scores of
// experts l*J .. l*J + J-1 (J per lane, a power of two), so a group of experts whose size is a
// multiple of J lies in whole lanes and its score takes shuffles instead of warp reductions. The
// modular router kernel and the monolithic kernels both call route_token_warp, so they pick the
// same experts.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>
#include <utility>

#include "core/route_token.h"
#include "fusedmoe/error.h"

namespace fusedmoe::cuda {

constexpr unsigned kFullMask = 0xffffffffu;

// Order-preserving map of a non-NaN float to uint32 (-0 and +0 map alike) and back.
__device__ inline uint32_t ordered_bits(float v) {
  const uint32_t b = __float_as_uint(v + 0.0f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ inline float from_ordered_bits(uint32_t b) {
  return __uint_as_float((b & 0x80000000u) ? (b & 0x7fffffffu) : ~b);
}

// A 64-bit sort key of (value, expert e): a larger key ranks first, in routing_detail::ranks_before's
// order — larger value first, then lower expert index; -0 and +0 rank as equal, NaN last (the CUDA
// routing sanitizes logits, so NaN only comes from a NaN correction bias). 0 means "no candidate".
__device__ inline uint64_t rank_key(float v, int e) {
  const uint32_t b = v != v ? 0u : ordered_bits(v);
  return (uint64_t(b) << 32) | uint32_t(0x7fffffff - e);  // low half > 0 for e < 2^31 - 1
}

__device__ inline int key_expert(uint64_t key) { return 0x7fffffff - static_cast<int>(uint32_t(key)); }

__device__ inline float key_value(uint64_t key) { return from_ordered_bits(uint32_t(key >> 32)); }

// The warp's largest key in two redux.sync steps (sm_80+): the largest high half, then the
// largest low half among the lanes that hold it — the 64-bit maximum, without a shuffle tree.
__device__ inline uint64_t warp_max_key(uint64_t key) {
  const uint32_t hi = __reduce_max_sync(kFullMask, uint32_t(key >> 32));
  const uint32_t lo = __reduce_max_sync(kFullMask, uint32_t(key >> 32) == hi ? uint32_t(key) : 0u);
  return (uint64_t(hi) << 32) | lo;
}

__device__ inline float warp_sum(float x) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(kFullMask, x, off);
  return x;
}

// Max of a non-NaN float over the warp (the routing sanitizes logits), one redux.sync.
__device__ inline float warp_max(float x) { return from_ordered_bits(__reduce_max_sync(kFullMask, ordered_bits(x))); }

// Softmax over the present values (absent lanes/slots hold present=false), as routing_detail::softmax.
template <int J>
__device__ inline void warp_softmax(float (&x)[J], const bool (&present)[J]) {
  float m = -INFINITY;
#pragma unroll
  for (int j = 0; j < J; ++j)
    if (present[j]) m = fmaxf(m, x[j]);
  m = warp_max(m);
  if (m == INFINITY || m == -INFINITY) {
    float count = 0.0f;
#pragma unroll
    for (int j = 0; j < J; ++j) count += (present[j] && x[j] == m) ? 1.0f : 0.0f;
    count = warp_sum(count);
#pragma unroll
    for (int j = 0; j < J; ++j) x[j] = (present[j] && x[j] == m) ? 1.0f / count : 0.0f;
    return;
  }
  float sum = 0.0f;
#pragma unroll
  for (int j = 0; j < J; ++j) {
    x[j] = present[j] ? expf(x[j] - m) : 0.0f;
    sum += x[j];
  }
  sum = warp_sum(sum);
#pragma unroll
  for (int j = 0; j < J; ++j) x[j] /= sum;
}

// The expert of this lane's slot j: lane l holds experts l*J .. l*J + J-1.
template <int J>
__device__ inline int slot_expert(int j) {
  return static_cast<int>(threadIdx.x & 31) * J + j;
}

// Batcher's odd-even merge network for J values: its compare-exchange pairs (a < b) as a compile-time table
// (J = 8: 19 pairs), so that every array index below is a constant and the arrays stay in registers.
template <int J>
struct SortNetwork {
  struct Pair {
    int a, b;
  };
  template <class Visit>
  static constexpr int for_each_pair(Visit visit) {
    int n = 0;
    for (int p = 1; p < J; p <<= 1)
      for (int d = p; d >= 1; d >>= 1)
        for (int j = d % p; j + d < J; j += 2 * d)
          for (int i = 0; i < d && i + j + d < J; ++i)
            if ((i + j) / (2 * p) == (i + j + d) / (2 * p)) visit(n++, i + j, i + j + d);
    return n;
  }
  static constexpr int kPairs = for_each_pair([](int, int, int) {});
  struct Table {
    Pair pair[kPairs > 0 ? kPairs : 1];
  };
  static constexpr Table kTable = [] {
    Table t{};
    for_each_pair([&](int n, int a, int b) { t.pair[n] = Pair{a, b}; });
    return t;
  }();
};

template <int J, int... I>
__device__ inline void lane_sort_desc(uint64_t (&key)[J], float (&payload)[J], std::integer_sequence<int, I...>) {
  const auto exchange = [&](auto a, auto b) {
    const bool swap = key[b] > key[a];
    const uint64_t ka = key[a];
    const float pa = payload[a];
    key[a] = swap ? key[b] : ka;
    key[b] = swap ? ka : key[b];
    payload[a] = swap ? payload[b] : pa;
    payload[b] = swap ? pa : payload[b];
  };
  (exchange(std::integral_constant<int, SortNetwork<J>::kTable.pair[I].a>{},
            std::integral_constant<int, SortNetwork<J>::kTable.pair[I].b>{}),
   ...);
}

// Sorts this lane's J (key, payload) pairs by key, largest first, so that a top-k round reads a lane's best at
// key[0].
template <int J>
__device__ inline void lane_sort_desc(uint64_t (&key)[J], float (&payload)[J]) {
  lane_sort_desc(key, payload, std::make_integer_sequence<int, SortNetwork<J>::kPairs>{});
}

// Picks the k best of v among the eligible experts (eligible(j): this lane's slot j, expert
// slot_expert<J>(j)); lane r < k receives pick r in (id, value) and also[] of the pick in my_also
// (the pick's weight when it is chosen on other scores). Each lane sorts its keys once; a round is
// one warp max over the lanes' first keys, and the lane that held the pick hands out its also[] and
// moves its next key up. (Before: a max over a lane's J keys and a pass clearing the pick, every
// round, ~85 instructions at J = 8; with the group index below, deepseek-v3's one-token route kernel executed 1822
// instructions, now 1538: H200, session 47.)
template <int J, class Eligible>
__device__ inline void warp_select_topk(const float (&v)[J], int num_experts, int k, Eligible eligible, int& my_id,
                                        float& my_value, const float (&also)[J], float& my_also) {
  static_assert((J & (J - 1)) == 0, "J is a power of two");
  const int lane = threadIdx.x & 31;
  uint64_t key[J];
  float held[J];
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const int e = slot_expert<J>(j);
    key[j] = e < num_experts && eligible(j) ? rank_key(v[j], e) : 0;
    held[j] = also[j];
  }
  lane_sort_desc(key, held);
  my_id = -1;
  my_value = my_also = 0.0f;
  for (int r = 0; r < k; ++r) {
    const uint64_t best = warp_max_key(key[0]);
    if (best == 0) break;
    const int e = key_expert(best);
    const float pick_also = __shfl_sync(kFullMask, held[0], e / J);
    if (key[0] == best) {  // keys are unique: this lane held the pick
#pragma unroll
      for (int j = 0; j + 1 < J; ++j) {
        key[j] = key[j + 1];
        held[j] = held[j + 1];
      }
      key[J - 1] = 0;
    }
    if (lane == r) {
      my_id = e;
      my_value = key_value(best);
      my_also = pick_also;
    }
  }
}

template <int J, class Eligible>
__device__ inline void warp_select_topk(const float (&v)[J], int num_experts, int k, Eligible eligible, int& my_id,
                                        float& my_value) {
  float unused;
  warp_select_topk(v, num_experts, k, eligible, my_id, my_value, v, unused);
}

// deepseek-v3 group scores: group_scores[g] = the sum of group g's two largest choice values
// (top2) or its largest, as route_token.h computes them (top1 + top2; which expert holds a value
// does not change the sum, so no indices are needed). The general form, for any group size: each
// lane takes the best two of its own experts in g (group[j], -1 for none); the warp's largest is
// one redux.sync, and the second is the largest of every lane's best except the first lane holding
// the largest, which offers its second instead (a second redux) — three warp steps per group.
template <int J>
__device__ inline void warp_group_scores(const float (&choice)[J], const int (&group)[J], int groups, bool top2,
                                         float* group_scores) {
  for (int g = 0; g < groups; ++g) {
    float a = -INFINITY, b = -INFINITY;  // a >= b
#pragma unroll
    for (int j = 0; j < J; ++j)
      if (group[j] == g) {
        const float x = choice[j];
        if (x > a) {
          b = a;
          a = x;
        } else if (x > b) {
          b = x;
        }
      }
    const uint32_t oa = ordered_bits(a), top = __reduce_max_sync(kFullMask, oa);
    const int holder = __ffs(__ballot_sync(kFullMask, oa == top)) - 1;
    const uint32_t second =
        __reduce_max_sync(kFullMask, (threadIdx.x & 31) == holder ? ordered_bits(b) : oa);
    if ((threadIdx.x & 31) == 0)
      group_scores[g] = top2 ? from_ordered_bits(top) + from_ordered_bits(second) : from_ordered_bits(top);
  }
}

// The largest two (a >= b) of this lane's J values; NaN is skipped, -inf when there are none.
template <int J>
__device__ inline void lane_top2(const float (&x)[J], float& a, float& b) {
  a = b = -INFINITY;
#pragma unroll
  for (int j = 0; j < J; ++j) {
    if (x[j] > a) {
      b = a;
      a = x[j];
    } else if (x[j] > b) {
      b = x[j];
    }
  }
}

// Group scores when a group is P whole lanes (P = group size / J, a power of two <= 32): the lanes'
// top-2 pairs merge over log2(P) xor-shuffles, and every lane of a group ends with its score — the
// same sum as warp_group_scores (the same two values, in either order, a + b).
template <int J>
__device__ inline float lane_group_score(const float (&choice)[J], int P, bool top2) {
  float a, b;
  lane_top2(choice, a, b);
  for (int off = 1; off < P; off <<= 1) {
    const float oa = __shfl_xor_sync(kFullMask, a, off), ob = __shfl_xor_sync(kFullMask, b, off);
    b = fmaxf(fminf(a, oa), fmaxf(b, ob));
    a = fmaxf(a, oa);
  }
  return top2 ? a + b : a;
}

// The topk_group best groups by score (a group's score in each of its P lanes; lanes of group >=
// groups offer none), ties to the lower group as route_token.h: a bit mask over the groups.
__device__ inline uint64_t lane_select_groups(float score, int P, int groups, int topk_group) {
  const int lane = threadIdx.x & 31, g = lane >> (__ffs(P) - 1);
  uint64_t key = ((lane & (P - 1)) == 0 && g < groups) ? rank_key(score, g) : 0, mask = 0;
  for (int r = 0; r < topk_group; ++r) {
    const uint64_t best = warp_max_key(key);
    if (best == 0) break;
    const int pick = key_expert(best);
    mask |= uint64_t(1) << pick;
    if (g == pick) key = 0;
  }
  return mask;
}

template <class T>
__device__ inline float load_logit(const T* p);
// Through L2 (ld.global.cg): the route+plan kernel may read them before its pdl_wait (launch_route_plan), where an
// L1 line of an earlier call could be stale.
template <>
__device__ inline float load_logit<float>(const float* p) { return __ldcg(p); }
template <>
__device__ inline float load_logit<__nv_bfloat16>(const __nv_bfloat16* p) { return __bfloat162float(__ldcg(p)); }

// The routing methods' families: the router kernels are compiled once per family (route_token_warp's F), each with
// its own method's code alone. One kernel for every method was 51 KB of SASS at J = 8 (deepseek-v3's 256 experts),
// which a decode step fetches from DRAM (the weights stream evicts it from L2): ncu put deepseek-v3's one-token
// route_kernel at 7.1-7.9 us, 57 KB read from DRAM for 2 KB of logits and bias. Per family: 26 KB, the forward's
// route 6.1 -> 5.7 us, route+plan 8.5 -> 7.1 (H200, session 46); the rest is one warp's chain of dependent steps.
enum class RouteFamily : uint8_t { softmax_topk, topk_softmax, sigmoid_topk, llama4, deepseek_v3 };

// Calls f(std::integral_constant<RouteFamily, F>{}) with the family of method m (host code; precomputed ids are
// never routed: the callers refuse that method before they launch).
template <class Fn>
void with_route_family(RoutingMethod m, Fn&& f) {
  using std::integral_constant;
  switch (m) {
    case RoutingMethod::softmax_topk:
    case RoutingMethod::softmax_topk_renormalize:
      return f(integral_constant<RouteFamily, RouteFamily::softmax_topk>{});
    case RoutingMethod::topk_softmax: return f(integral_constant<RouteFamily, RouteFamily::topk_softmax>{});
    case RoutingMethod::sigmoid_topk:
    case RoutingMethod::sigmoid_topk_renormalize:
      return f(integral_constant<RouteFamily, RouteFamily::sigmoid_topk>{});
    case RoutingMethod::llama4: return f(integral_constant<RouteFamily, RouteFamily::llama4>{});
    case RoutingMethod::deepseek_v3: return f(integral_constant<RouteFamily, RouteFamily::deepseek_v3>{});
    case RoutingMethod::precomputed: break;
  }
  FMOE_FAIL("the CUDA router computes ids for every routing method but 'precomputed', got method ",
            static_cast<int>(m));
}

// Routes one token by a method of family F (p.method). `group_scores` is per-warp shared scratch of
// kMaxExpertGroups floats. Lane r < top_k returns pick r in (id, weight).
template <int J, RouteFamily F, class T>
__device__ inline void route_token_warp(const RoutingParams& p, const T* logits, float* group_scores, int& id,
                                        float& weight) {
  using namespace routing_detail;
  const int lane = threadIdx.x & 31, E = p.num_experts, k = p.top_k;
  float s[J];
  [[maybe_unused]] float bias[J];
  bool present[J];
#pragma unroll
  for (int j = 0; j < J; ++j) {  // deepseek-v3: the bias loaded beside the logits (one DRAM round trip, not two)
    const int e = slot_expert<J>(j);
    present[j] = e < E;
    s[j] = present[j] ? sanitize(load_logit(logits + e)) : -INFINITY;
    if constexpr (F == RouteFamily::deepseek_v3)
      bias[j] = p.correction_bias && present[j] ? p.correction_bias[e] : 0.0f;
  }
  auto all = [](int) { return true; };
  float value = 0.0f;
  if constexpr (F == RouteFamily::softmax_topk) {
    warp_softmax(s, present);
    warp_select_topk(s, E, k, all, id, value);
    weight = value;
  } else if constexpr (F == RouteFamily::topk_softmax) {
    warp_select_topk(s, E, k, all, id, value);
    float w[1] = {value};
    const bool here[1] = {lane < k};
    warp_softmax(w, here);
    weight = w[0];
  } else if constexpr (F == RouteFamily::sigmoid_topk) {
#pragma unroll
    for (int j = 0; j < J; ++j) s[j] = sigmoid(s[j]);
    warp_select_topk(s, E, k, all, id, value);
    weight = value;
  } else if constexpr (F == RouteFamily::llama4) {
    warp_select_topk(s, E, 1, all, id, value);
    weight = sigmoid(value);
  } else {
    static_assert(F == RouteFamily::deepseek_v3);
    float choice[J];
#pragma unroll
    for (int j = 0; j < J; ++j) {
      s[j] = sigmoid(s[j]);
      choice[j] = s[j] + bias[j];
    }
    const int groups = p.num_expert_group, group_size = E / groups;
    const bool top2 = p.correction_bias != nullptr && group_size >= 2;
    int group[J];  // the group of each of this lane's experts: one division, then counted on
    {
      int g = slot_expert<J>(0) / group_size, r = slot_expert<J>(0) - g * group_size;
#pragma unroll
      for (int j = 0; j < J; ++j) {
        group[j] = present[j] ? g : -1;
        if (++r == group_size) {
          r = 0;
          ++g;
        }
      }
    }
    uint64_t group_mask = 0;
    const int P = group_size / J;  // lanes per group, when a group is whole lanes
    if (group_size % J == 0 && (P & (P - 1)) == 0 && P <= 32) {
      group_mask = lane_select_groups(lane_group_score(choice, P, top2), P, groups, p.topk_group);
    } else {
      warp_group_scores(choice, group, groups, top2, group_scores);
      __syncwarp();
      float gs[2];
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int g = slot_expert<2>(j);
        gs[j] = g < groups ? group_scores[g] : -INFINITY;
      }
      int gpick;
      float gpick_value;
      warp_select_topk(gs, groups, p.topk_group, all, gpick, gpick_value);
      for (int r = 0; r < p.topk_group; ++r) {
        const int g = __shfl_sync(kFullMask, gpick, r);
        if (g >= 0) group_mask |= uint64_t(1) << g;
      }
      __syncwarp();  // group_scores is reused by the next token of this warp
    }
    auto in_selected_group = [&](int j) { return group[j] >= 0 && ((group_mask >> group[j]) & 1u) != 0; };
    warp_select_topk(choice, E, k, in_selected_group, id, value, s, weight);
  }
  const bool renormalize = F == RouteFamily::deepseek_v3 ? p.renormalize
                           : p.method == RoutingMethod::softmax_topk_renormalize ||
                               p.method == RoutingMethod::sigmoid_topk_renormalize;
  if (renormalize) {
    const float sum = warp_sum(lane < k ? weight : 0.0f);
    if (sum > 0.0f) weight /= sum;
  }
  if (p.routed_scaling_factor != 1.0f) weight *= p.routed_scaling_factor;
}

// Routes token t of logits [*, E] and stores its picks in ids/weights [*, top_k] (every lane calls).
template <int J, RouteFamily F, class T>
__device__ inline void route_and_store(const RoutingParams& p, const T* logits, int64_t t, float* group_scores,
                                       int32_t* ids, float* weights) {
  int id;
  float weight;
  route_token_warp<J, F>(p, logits + t * p.num_experts, group_scores, id, weight);
  const int lane = threadIdx.x & 31;
  if (lane < p.top_k) {
    ids[t * p.top_k + lane] = id;
    weights[t * p.top_k + lane] = weight;
  }
}

}  // namespace fusedmoe::cuda
