// Routing of one token: the single implementation of every routing method, written as
// header-only host/device code so the router and fused (monolithic) kernels share it.
// Ordering: higher score first, ties to the lower expert index; NaN logits count as -inf.
#pragma once

#include <cmath>
#include <cstdint>

#include "fusedmoe/formats.h"
#include "fusedmoe/routing.h"

namespace fusedmoe {

inline constexpr int kMaxExpertGroups = 64;

struct RoutingParams {
  RoutingMethod method;
  int num_experts;
  int top_k;
  int num_expert_group;
  int topk_group;
  bool renormalize;
  float routed_scaling_factor;
  const float* correction_bias;  // deepseek_v3 only, may be null
};

inline RoutingParams make_routing_params(const RoutingConfig& c, int64_t num_experts) {
  return {c.method, static_cast<int>(num_experts), c.top_k, c.num_expert_group, c.topk_group, c.renormalize,
          c.routed_scaling_factor, c.correction_bias.defined() ? c.correction_bias.data_as<const float>() : nullptr};
}

namespace routing_detail {

// Strict total order: a before b.
FMOE_HOST_DEVICE inline bool ranks_before(float va, int ia, float vb, int ib) {
  return va > vb || (va == vb && ia < ib);
}

// Picks the k best of v[0..n) (restricted to eligible(i)) into out, best first: each pick is
// the best element ranked after the previous pick. O(k*n), no scratch.
template <class Eligible>
FMOE_HOST_DEVICE inline int select_topk(const float* v, int n, int k, int32_t* out, Eligible eligible) {
  int picked = 0;
  for (; picked < k; ++picked) {
    int best = -1;
    for (int i = 0; i < n; ++i) {
      if (!eligible(i)) continue;
      if (picked > 0 && !ranks_before(v[out[picked - 1]], out[picked - 1], v[i], i)) continue;
      if (best < 0 || ranks_before(v[i], i, v[best], best)) best = i;
    }
    if (best < 0) break;
    out[picked] = best;
  }
  return picked;
}

FMOE_HOST_DEVICE inline float sanitize(float x) { return x != x ? -INFINITY : x; }
FMOE_HOST_DEVICE inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// In-place softmax of x[0..n) (already sanitized); +inf entries share the mass, all -inf is uniform.
FMOE_HOST_DEVICE inline void softmax(float* x, int n) {
  float m = -INFINITY;
  for (int i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
  if (m == INFINITY || m == -INFINITY) {
    int count = 0;
    for (int i = 0; i < n; ++i) count += x[i] == m;
    for (int i = 0; i < n; ++i) x[i] = x[i] == m ? 1.0f / float(count) : 0.0f;
    return;
  }
  float sum = 0.0f;
  for (int i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - m);
    sum += x[i];
  }
  for (int i = 0; i < n; ++i) x[i] /= sum;
}

FMOE_HOST_DEVICE inline void renormalize(float* w, int k) {
  float sum = 0.0f;
  for (int i = 0; i < k; ++i) sum += w[i];
  if (sum > 0.0f)
    for (int i = 0; i < k; ++i) w[i] /= sum;
}

}  // namespace routing_detail

// logits[E] f32 in; scratch[2E] floats; writes ids[k], weights[k].
FMOE_HOST_DEVICE inline void route_token(const RoutingParams& p, const float* logits, float* scratch, int32_t* ids,
                                         float* weights) {
  using namespace routing_detail;
  const int E = p.num_experts, k = p.top_k;
  float* score = scratch;
  float* choice = scratch + E;
  auto all = [](int) { return true; };
  for (int e = 0; e < E; ++e) score[e] = sanitize(logits[e]);

  switch (p.method) {
    case RoutingMethod::softmax_topk:
    case RoutingMethod::softmax_topk_renormalize:
      softmax(score, E);
      select_topk(score, E, k, ids, all);
      for (int j = 0; j < k; ++j) weights[j] = score[ids[j]];
      if (p.method == RoutingMethod::softmax_topk_renormalize) renormalize(weights, k);
      break;
    case RoutingMethod::topk_softmax:
      select_topk(score, E, k, ids, all);
      for (int j = 0; j < k; ++j) weights[j] = score[ids[j]];
      softmax(weights, k);
      break;
    case RoutingMethod::sigmoid_topk:
    case RoutingMethod::sigmoid_topk_renormalize:
      for (int e = 0; e < E; ++e) score[e] = sigmoid(score[e]);
      select_topk(score, E, k, ids, all);
      for (int j = 0; j < k; ++j) weights[j] = score[ids[j]];
      if (p.method == RoutingMethod::sigmoid_topk_renormalize) renormalize(weights, k);
      break;
    case RoutingMethod::llama4:
      select_topk(score, E, 1, ids, all);
      weights[0] = sigmoid(score[ids[0]]);
      break;
    case RoutingMethod::deepseek_v3: {
      for (int e = 0; e < E; ++e) {
        score[e] = sigmoid(score[e]);
        choice[e] = p.correction_bias ? score[e] + p.correction_bias[e] : score[e];
      }
      const int groups = p.num_expert_group, group_size = E / groups;
      // Group score: sum of the group's top-2 choice scores with a bias, its max without.
      float group_score[kMaxExpertGroups];
      int32_t group_pick[kMaxExpertGroups];
      for (int g = 0; g < groups; ++g) {
        int32_t top2[2] = {0, 0};
        const int n = select_topk(choice + g * group_size, group_size, p.correction_bias ? 2 : 1, top2, all);
        float s = choice[g * group_size + top2[0]];
        if (n == 2) s += choice[g * group_size + top2[1]];
        group_score[g] = s;
      }
      select_topk(group_score, groups, p.topk_group, group_pick, all);
      auto in_selected_group = [&](int e) {
        const int g = e / group_size;
        for (int j = 0; j < p.topk_group; ++j)
          if (group_pick[j] == g) return true;
        return false;
      };
      select_topk(choice, E, k, ids, in_selected_group);
      for (int j = 0; j < k; ++j) weights[j] = score[ids[j]];
      if (p.renormalize) renormalize(weights, k);
      break;
    }
    case RoutingMethod::precomputed:
      break;
  }
  if (p.routed_scaling_factor != 1.0f)
    for (int j = 0; j < k; ++j) weights[j] *= p.routed_scaling_factor;
}

}  // namespace fusedmoe
