// Every routing method against a brute-force float64 reference (sort everything, take k),
// plus ties, all-negative, NaN and infinite logits.
#include <algorithm>
#include <numeric>
#include <string>

#include "test_util.h"

namespace fusedmoe::test {
namespace {

// near_tie: a choice (an expert against the next in the top k + 1, the last group kept against the next) was decided
// by a relative gap under 1e-6 but not zero, which the router's float arithmetic cannot resolve the way float64 does.
// For the methods that order float-computed scores (sigmoids and their sums: `rounded`), what a near-tie token's
// routing must still satisfy (expect_valid_near_tie): choice, each expert's ordering score; weight_of, its weight
// before renormalizing and scaling; deepseek-v3: group_score and the group size (0: no groups).
struct Routed {
  std::vector<int32_t> ids;
  std::vector<double> weights;
  bool near_tie = false;
  std::vector<double> choice, weight_of, group_score;
  std::vector<int32_t> group_order;
  int group_size = 0;
  bool renorm = false;
};

// Whether a > b by less than float arithmetic resolves (exact ties excluded: they go to the lower index, tested).
double tie_slack(double a, double b) { return 1e-6 * std::max(std::fabs(a), std::fabs(b)); }
bool near_tie(double a, double b) {
  const double gap = a - b;
  return gap > 0.0 && gap < tie_slack(a, b);
}

double sanitize(float x) { return std::isnan(x) ? -INFINITY : double(x); }
double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

std::vector<double> softmax(const std::vector<double>& x) {
  const double m = *std::max_element(x.begin(), x.end());
  std::vector<double> p(x.size());
  if (std::isinf(m)) {
    const double count = double(std::count(x.begin(), x.end(), m));
    for (size_t i = 0; i < x.size(); ++i) p[i] = x[i] == m ? 1.0 / count : 0.0;
    return p;
  }
  double sum = 0.0;
  for (size_t i = 0; i < x.size(); ++i) sum += (p[i] = std::exp(x[i] - m));
  for (double& v : p) v /= sum;
  return p;
}

// Indices sorted best first (ties: lower index), restricted to `eligible`.
std::vector<int32_t> ranking(const std::vector<double>& v, const std::vector<bool>& eligible) {
  std::vector<int32_t> idx;
  for (int32_t i = 0; i < int32_t(v.size()); ++i)
    if (eligible[i]) idx.push_back(i);
  std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return v[a] > v[b]; });
  return idx;
}

Routed brute_force(const RoutingConfig& c, const float* logits, int E) {
  std::vector<double> x(E);
  for (int e = 0; e < E; ++e) x[e] = sanitize(logits[e]);
  const std::vector<bool> all(E, true);
  Routed r;
  // rounded: scores the router computes in float (sigmoids, their sums), which it may order otherwise near a tie; the
  // softmax methods order the logits themselves, exactly.
  auto take = [&](const std::vector<double>& score, const std::vector<bool>& eligible, int k, bool rounded = false) {
    const std::vector<int32_t> order = ranking(score, eligible);
    r.ids.assign(order.begin(), order.begin() + k);
    // (the slots' order, and the k-th against the next)
    for (int i = 0; rounded && i < k && i + 1 < int(order.size()); ++i)
      if (near_tie(score[order[i]], score[order[i + 1]])) r.near_tie = true;
  };
  auto renorm = [&] {
    double s = 0.0;
    for (double w : r.weights) s += w;
    if (s > 0.0)
      for (double& w : r.weights) w /= s;
  };
  const int k = c.top_k;
  switch (c.method) {
    case RoutingMethod::softmax_topk:
    case RoutingMethod::softmax_topk_renormalize: {
      const std::vector<double> p = softmax(x);
      take(p, all, k);
      for (int32_t id : r.ids) r.weights.push_back(p[id]);
      if (c.method == RoutingMethod::softmax_topk_renormalize) renorm();
      break;
    }
    case RoutingMethod::topk_softmax: {
      take(x, all, k);
      std::vector<double> chosen;
      for (int32_t id : r.ids) chosen.push_back(x[id]);
      r.weights = softmax(chosen);
      break;
    }
    case RoutingMethod::sigmoid_topk:
    case RoutingMethod::sigmoid_topk_renormalize: {
      std::vector<double> s(E);
      for (int e = 0; e < E; ++e) s[e] = sigmoid(x[e]);
      take(s, all, k, /*rounded=*/true);
      for (int32_t id : r.ids) r.weights.push_back(s[id]);
      r.renorm = c.method == RoutingMethod::sigmoid_topk_renormalize;
      if (r.renorm) renorm();
      r.choice = r.weight_of = s;
      break;
    }
    case RoutingMethod::llama4:
      take(x, all, 1);
      r.weights = {sigmoid(x[r.ids[0]])};
      break;
    case RoutingMethod::deepseek_v3: {
      std::vector<double> s(E), choice(E);
      const float* bias = c.correction_bias.defined() ? c.correction_bias.data_as<const float>() : nullptr;
      for (int e = 0; e < E; ++e) {
        s[e] = sigmoid(x[e]);
        choice[e] = bias ? s[e] + bias[e] : s[e];
      }
      const int G = c.num_expert_group, size = E / G;
      std::vector<double> group_score(G);
      for (int g = 0; g < G; ++g) {
        std::vector<double> members(choice.begin() + g * size, choice.begin() + (g + 1) * size);
        std::sort(members.rbegin(), members.rend());
        group_score[g] = bias ? members[0] + members[1] : members[0];
      }
      const std::vector<int32_t> groups = ranking(group_score, std::vector<bool>(G, true));
      if (G > c.topk_group && near_tie(group_score[groups[c.topk_group - 1]], group_score[groups[c.topk_group]]))
        r.near_tie = true;
      std::vector<bool> eligible(E, false);
      for (int j = 0; j < c.topk_group; ++j)
        for (int e = groups[j] * size; e < (groups[j] + 1) * size; ++e) eligible[e] = true;
      take(choice, eligible, k, /*rounded=*/true);
      for (int32_t id : r.ids) r.weights.push_back(s[id]);
      r.renorm = c.renormalize;
      if (r.renorm) renorm();
      r.choice = choice;
      r.weight_of = s;
      r.group_score = group_score;
      r.group_order = groups;
      r.group_size = size;
      break;
    }
    case RoutingMethod::precomputed: break;
  }
  for (double& w : r.weights) w *= c.routed_scaling_factor;
  return r;
}

// A token whose float64 reference rests on a near-tie (r.near_tie): the router may resolve it either way, but its
// routing must be one that float resolution allows. Distinct ids in range; ordered best first within tie_slack; a top
// k within tie_slack (no unchosen expert of a group that must be eligible beats the weakest chosen one by more; for
// deepseek-v3, every chosen expert's group among the top topk_group groups within tie_slack, at most topk_group of
// them); and the weights the reference gives those ids.
void expect_valid_near_tie(const RoutingConfig& c, const Routed& r, const int32_t* got, const float* got_w, int E,
                           const std::string& where) {
  const int k = c.top_k;
  std::vector<bool> chosen(E, false);
  for (int j = 0; j < k; ++j) {
    ASSERT_TRUE(got[j] >= 0 && got[j] < E && !chosen[got[j]]) << where << " slot " << j << ": id " << got[j];
    chosen[got[j]] = true;
    if (j > 0)
      EXPECT_GE(r.choice[got[j - 1]], r.choice[got[j]] - tie_slack(r.choice[got[j - 1]], r.choice[got[j]]))
          << where << " slot " << j << ": out of order";
  }
  const double weakest = r.choice[got[k - 1]];
  std::vector<bool> must_check(E, r.group_size == 0);  // experts whose groups are (or had to be) eligible
  if (r.group_size > 0) {
    const int G = int(r.group_score.size());
    const double last_kept = r.group_score[r.group_order[c.topk_group - 1]];
    const double next = G > c.topk_group ? r.group_score[r.group_order[c.topk_group]] : -INFINITY;
    std::vector<bool> router_group(G, false);
    for (int j = 0; j < k; ++j) router_group[got[j] / r.group_size] = true;
    EXPECT_LE(std::count(router_group.begin(), router_group.end(), true), c.topk_group) << where << ": too many groups";
    for (int g = 0; g < G; ++g) {
      if (router_group[g])
        EXPECT_GE(r.group_score[g], last_kept - tie_slack(r.group_score[g], last_kept))
            << where << ": group " << g << " is not among the top " << c.topk_group;
      const bool must = G <= c.topk_group || r.group_score[g] > next + tie_slack(r.group_score[g], next);
      for (int e = g * r.group_size; e < (g + 1) * r.group_size; ++e) must_check[e] = must || router_group[g];
    }
  }
  for (int e = 0; e < E; ++e)
    if (must_check[e] && !chosen[e])
      EXPECT_LE(r.choice[e], weakest + tie_slack(r.choice[e], weakest)) << where << ": expert " << e << " left out";
  double sum = 0.0;
  for (int j = 0; j < k; ++j) sum += r.weight_of[got[j]];
  for (int j = 0; j < k; ++j) {
    const double want = r.weight_of[got[j]] / (r.renorm && sum > 0.0 ? sum : 1.0) * c.routed_scaling_factor;
    EXPECT_NEAR(got_w[j], want, 1e-6 + 1e-5 * std::fabs(want)) << where << " slot " << j << ": weight";
  }
}

void expect_matches_brute_force(const RoutingConfig& c, const Buffer& logits) {
  const int64_t M = logits.view().size(0), E = logits.view().size(1);
  Buffer ids = Buffer::empty(DType::i32, {M, c.top_k}), w = Buffer::empty(DType::f32, {M, c.top_k});
  route(c, logits, ids, w);
  int64_t near_ties = 0;
  for (int64_t t = 0; t < M; ++t) {
    const Routed r = brute_force(c, logits.data_as<float>() + t * E, int(E));
    if (r.near_tie) {  // either resolution is right in float (checked as such); such tokens must stay rare
      ++near_ties;
      expect_valid_near_tie(c, r, ids.data_as<int32_t>() + t * c.top_k, w.data_as<float>() + t * c.top_k, int(E),
                            std::string(routing_method_name(c.method)) + " token " + std::to_string(t));
      continue;
    }
    for (int j = 0; j < c.top_k; ++j) {
      ASSERT_EQ(ids.data_as<int32_t>()[t * c.top_k + j], r.ids[j])
          << routing_method_name(c.method) << " token " << t << " slot " << j;
      EXPECT_NEAR(w.data_as<float>()[t * c.top_k + j], r.weights[j], 1e-6 + 1e-5 * std::fabs(r.weights[j]))
          << routing_method_name(c.method) << " token " << t << " slot " << j;
    }
  }
  EXPECT_LE(near_ties, M / 10) << routing_method_name(c.method) << ": too many tokens decided by near-ties";
}

std::vector<RoutingConfig> all_methods(int64_t E, const Tensor& bias) {
  std::vector<RoutingConfig> v;
  for (RoutingMethod m : {RoutingMethod::softmax_topk, RoutingMethod::topk_softmax,
                          RoutingMethod::softmax_topk_renormalize, RoutingMethod::sigmoid_topk,
                          RoutingMethod::sigmoid_topk_renormalize, RoutingMethod::llama4}) {
    RoutingConfig c;
    c.method = m;
    c.top_k = m == RoutingMethod::llama4 ? 1 : int(std::min<int64_t>(E, 6));
    v.push_back(c);
  }
  RoutingConfig ds;
  ds.method = RoutingMethod::deepseek_v3;
  ds.num_expert_group = E % 8 == 0 ? 8 : (E % 5 == 0 ? 5 : 1);
  ds.topk_group = std::min(4, ds.num_expert_group);
  ds.top_k = int(std::min<int64_t>(6, ds.topk_group * (E / ds.num_expert_group)));
  ds.routed_scaling_factor = 2.5f;
  ds.correction_bias = bias;
  v.push_back(ds);
  ds.correction_bias = Tensor();  // groups scored by their max
  ds.renormalize = false;
  v.push_back(ds);
  return v;
}

TEST(Routing, EveryMethodMatchesBruteForce) {
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  for (int64_t E : {10, 64, 256}) {
    const Buffer logits = testing::random_f32({97, E}, seed + E, 2.0f);
    const Buffer bias = testing::random_f32({E}, seed ^ E, 0.05f);
    for (const RoutingConfig& c : all_methods(E, bias.view())) expect_matches_brute_force(c, logits);
  }
}

TEST(Routing, AllNegativeLogits) {
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  Buffer logits = testing::random_f32({33, 64}, seed, 1.0f);
  for (int64_t i = 0; i < 33 * 64; ++i) logits.data_as<float>()[i] = -60.0f - std::fabs(logits.data_as<float>()[i]);
  const Buffer bias = testing::random_f32({64}, seed ^ 1, 0.05f);
  for (const RoutingConfig& c : all_methods(64, bias.view())) expect_matches_brute_force(c, logits);
}

TEST(Routing, TiesGoToTheLowerExpertIndex) {
  Buffer logits = Buffer::empty(DType::f32, {4, 16});
  for (int i = 0; i < 64; ++i) logits.data_as<float>()[i] = 0.5f;
  for (const RoutingConfig& c : all_methods(16, Tensor())) {
    if (c.method == RoutingMethod::deepseek_v3 && c.correction_bias.defined()) continue;
    Buffer ids = Buffer::empty(DType::i32, {4, c.top_k}), w = Buffer::empty(DType::f32, {4, c.top_k});
    route(c, logits, ids, w);
    for (int t = 0; t < 4; ++t)
      for (int j = 0; j < c.top_k; ++j) EXPECT_EQ(ids.data_as<int32_t>()[t * c.top_k + j], j) << routing_method_name(c.method);
    expect_matches_brute_force(c, logits);
  }
}

TEST(Routing, NanAndInfiniteLogitsNeverGiveOutOfRangeIds) {
  const int64_t E = 12;
  Buffer logits = Buffer::empty(DType::f32, {5, E});
  float* l = logits.data_as<float>();
  for (int64_t i = 0; i < 5 * E; ++i) l[i] = NAN;                 // token 0..4 start all-NaN
  for (int64_t e = 0; e < E; ++e) l[1 * E + e] = float(e % 3);     // token 1: finite with ties
  l[1 * E + 4] = NAN;
  for (int64_t e = 0; e < E; ++e) l[2 * E + e] = -INFINITY;        // token 2: all -inf
  for (int64_t e = 0; e < E; ++e) l[3 * E + e] = float(e);         // token 3: two +inf
  l[3 * E + 7] = INFINITY;
  l[3 * E + 2] = INFINITY;
  for (int64_t e = 0; e < E; ++e) l[4 * E + e] = e == 5 ? NAN : -1.0f;  // token 4: NaN among equal
  for (const RoutingConfig& c : all_methods(E, Tensor())) {
    Buffer ids = Buffer::empty(DType::i32, {5, c.top_k}), w = Buffer::empty(DType::f32, {5, c.top_k});
    route(c, logits, ids, w);
    for (int64_t i = 0; i < 5 * c.top_k; ++i) {
      const int32_t id = ids.data_as<int32_t>()[i];
      EXPECT_TRUE(id >= 0 && id < E) << routing_method_name(c.method) << " gave id " << id;
    }
    for (int t = 0; t < 5; ++t) {
      std::vector<int32_t> row(ids.data_as<int32_t>() + t * c.top_k, ids.data_as<int32_t>() + (t + 1) * c.top_k);
      std::sort(row.begin(), row.end());
      EXPECT_EQ(std::adjacent_find(row.begin(), row.end()), row.end()) << "duplicate id, token " << t;
    }
    if (c.method != RoutingMethod::deepseek_v3) expect_matches_brute_force(c, logits);
  }
  RoutingConfig softmax;
  softmax.method = RoutingMethod::softmax_topk;
  softmax.top_k = 2;
  Buffer ids = Buffer::empty(DType::i32, {5, 2}), w = Buffer::empty(DType::f32, {5, 2});
  route(softmax, logits, ids, w);
  EXPECT_EQ(ids.data_as<int32_t>()[3 * 2], 2);  // the two +inf logits, lower index first
  EXPECT_EQ(ids.data_as<int32_t>()[3 * 2 + 1], 7);
  EXPECT_EQ(w.data_as<float>()[3 * 2], 0.5f);
  EXPECT_NE(ids.data_as<int32_t>()[4 * 2], 5);  // NaN is picked last
  EXPECT_NE(ids.data_as<int32_t>()[4 * 2 + 1], 5);
}

TEST(Routing, Bf16LogitsRouteLikeTheirF32Values) {
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  const Buffer lb = testing::random_bf16({50, 40}, seed, 2.0f);
  Buffer lf = Buffer::empty(DType::f32, {50, 40});
  for (int i = 0; i < 2000; ++i) lf.data_as<float>()[i] = bf16_to_float(lb.data_as<bfloat16>()[i]);
  RoutingConfig c;
  c.method = RoutingMethod::softmax_topk_renormalize;
  c.top_k = 4;
  Buffer i1 = Buffer::empty(DType::i32, {50, 4}), w1 = Buffer::empty(DType::f32, {50, 4});
  Buffer i2 = Buffer::empty(DType::i32, {50, 4}), w2 = Buffer::empty(DType::f32, {50, 4});
  route(c, lb, i1, w1);
  route(c, lf, i2, w2);
  EXPECT_TRUE(bits_equal(i1, i2));
  EXPECT_TRUE(bits_equal(w1, w2));
}

TEST(Routing, RoutedScalingFactorAppliesAtTopOne) {
  Buffer logits = testing::random_f32({8, 10}, 7);
  RoutingConfig c;
  c.method = RoutingMethod::softmax_topk_renormalize;
  c.top_k = 1;
  c.routed_scaling_factor = 1.5f;
  Buffer ids = Buffer::empty(DType::i32, {8, 1}), w = Buffer::empty(DType::f32, {8, 1});
  route(c, logits, ids, w);
  for (int t = 0; t < 8; ++t) EXPECT_FLOAT_EQ(w.data_as<float>()[t], 1.5f);  // renormalized to 1, then scaled
  expect_matches_brute_force(c, logits);
}

}  // namespace
}  // namespace fusedmoe::test
