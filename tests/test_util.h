// Shared helpers of the GoogleTest suite: seeds (fresh each run, printed on failure,
// FUSEDMOE_TEST_SEED to replay), configs, NaN-poisoned outputs and the reference comparison.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "fusedmoe/fusedmoe.h"
#include "testing/synthetic.h"

namespace fusedmoe::test {

inline uint64_t test_seed() {
  if (const char* env = std::getenv("FUSEDMOE_TEST_SEED")) return std::strtoull(env, nullptr, 10);
  static std::random_device rd;
  return (uint64_t(rd()) << 32) ^ rd();
}

#define FMOE_SEED_TRACE(seed) \
  SCOPED_TRACE("seed " + std::to_string(seed) + " (replay with FUSEDMOE_TEST_SEED=" + std::to_string(seed) + ")")

inline MoEConfig small_config(QuantScheme quant = QuantScheme::bf16, int64_t E = 8, int64_t K = 256, int64_t I = 128,
                              int top_k = 2) {
  MoEConfig c;
  c.num_experts = E;
  c.hidden_size = K;
  c.intermediate_size = I;
  c.quant = quant;
  c.routing.method = RoutingMethod::softmax_topk_renormalize;
  c.routing.top_k = top_k;
  return c;
}

inline Buffer poisoned_bf16(int64_t M, int64_t K) {
  Buffer b = Buffer::empty(DType::bf16, {M, K});
  for (int64_t i = 0; i < M * K; ++i) b.data_as<bfloat16>()[i] = bfloat16{0x7fc1};  // NaN
  return b;
}

inline bool bits_equal(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.data(), b.data(), a.nbytes()) == 0;
}

// Everything one layer needs: weights in the scheme's layout, inputs, routing.
struct Problem {
  MoEConfig config;
  OwnedExpertWeights weights;
  Buffer hidden, logits, ids, topk_weights, bias;
};

inline Problem make_problem(MoEConfig config, int64_t M, uint64_t seed, bool with_bias = false) {
  Problem p;
  p.config = config;
  if (config.routing.method == RoutingMethod::deepseek_v3) {
    p.bias = testing::random_f32({config.num_experts}, seed ^ 0xb1a5, 0.1f);
    p.config.routing.correction_bias = p.bias.view();
  }
  p.hidden = testing::random_bf16({M, config.hidden_size}, seed ^ 0x41);
  p.logits = testing::random_f32({M, config.num_experts}, seed ^ 0x42, 2.0f);
  p.ids = Buffer::empty(DType::i32, {M, config.routing.top_k});
  p.topk_weights = Buffer::empty(DType::f32, {M, config.routing.top_k});
  if (p.config.routing.method != RoutingMethod::precomputed) {
    if (M > 0) route(p.config.routing, p.logits, p.ids, p.topk_weights);
  } else {  // random ids (duplicates allowed) and positive weights
    for (int64_t i = 0; i < M * config.routing.top_k; ++i) {
      p.ids.data_as<int32_t>()[i] = int32_t(uint64_t(1e6 * (1.0f + testing::uniform(seed ^ 0x1d5, i))) % config.num_experts);
      p.topk_weights.data_as<float>()[i] = 0.5f + 0.25f * testing::uniform(seed ^ 0x3e1, i);
    }
  }
  testing::SyntheticWeightOptions opt;
  opt.with_bias = with_bias;
  opt.calibration_hidden = p.hidden.view();
  opt.calibration_ids = p.ids.view();
  p.weights = testing::synthetic_expert_weights(p.config, seed, opt);
  return p;
}

// out (bf16 [M, K]) against the float64 reference: the worst and the root-mean-square error over max |reference|,
// the elements outside the scheme's tolerance (the first 3 described) and the nonzero outputs.
// (hidden: the problem's tokens, or the first rows of them with ids and weights of as many rows.)
struct ReferenceError {
  double worst = 0.0, rms = 0.0, ref_max = 0.0;
  int64_t outside = 0, nonzero = 0;
  std::string first_outside;
};
inline ReferenceError reference_error(const Problem& p, const Tensor& hidden, const Tensor& out, const Tensor& ids,
                                      const Tensor& weights) {
  const int64_t M = out.size(0), K = out.size(1);
  const std::vector<double> ref = reference_moe(p.config, p.weights.weights, hidden, ids, weights);
  const Tolerance tol = tolerance_for(p.config.quant);
  ReferenceError e;
  for (double v : ref) e.ref_max = std::max(e.ref_max, std::fabs(v));
  const double scale = std::max(e.ref_max, 1e-30);
  double sum_sq = 0.0;
  for (int64_t i = 0; i < M * K; ++i) {
    const double o = bf16_to_float(out.data_as<const bfloat16>()[i]), r = ref[i];
    if (o != 0.0) ++e.nonzero;
    const double err = std::fabs(o - r);
    if (!(err <= tol.atol * e.ref_max + tol.rtol * std::fabs(r)) && e.outside++ < 3) {
      std::ostringstream what;
      what << "out[" << i / K << ", " << i % K << "] = " << o << ", reference " << r << "; ";
      e.first_outside += what.str();
    }
    e.worst = std::max(e.worst, err / scale);
    sum_sq += err * err;
  }
  e.rms = std::sqrt(sum_sq / static_cast<double>(std::max<int64_t>(M * K, 1))) / scale;
  return e;
}

// Asserts out is within the scheme's tolerance of the float64 reference, has no NaN/Inf where the reference is
// finite, and is not all zero where the reference is not. Returns the errors.
inline ReferenceError expect_matches_reference(const Problem& p, const Tensor& hidden, const Tensor& out,
                                               const Tensor& ids, const Tensor& weights) {
  const ReferenceError e = reference_error(p, hidden, out, ids, weights);
  EXPECT_EQ(e.outside, 0) << "elements outside tolerance (max |ref| " << e.ref_max << "): " << e.first_outside
                          << "worst normalized error " << e.worst;
  if (e.ref_max > 0.0) EXPECT_GT(e.nonzero, 0) << "output is all zero but the reference is not";
  return e;
}

inline ReferenceError expect_matches_reference(const Problem& p, const Tensor& out, const Tensor& ids,
                                               const Tensor& weights) {
  return expect_matches_reference(p, p.hidden, out, ids, weights);
}

// One "rank" of an expert-parallel layout without dispatch: an expert_map placing `experts`
// in local slots 0.., and the full weights' slices of those experts (scales included).
struct Shard {
  Buffer map;
  Problem problem;
};

inline Shard make_shard(const Problem& full, const std::vector<int32_t>& experts) {
  Shard shard;
  shard.map = testing::expert_map_of(full.config.num_experts, experts);
  MoEConfig c = full.config;
  c.parallel.expert_map = shard.map.view();
  OwnedExpertWeights w = testing::slice_experts(full.weights.weights, full.config.num_experts, experts);
  shard.problem = Problem{c, std::move(w), full.hidden, full.logits, full.ids, full.topk_weights, full.bias};
  return shard;
}

// Asserts that `sum` (the shards' outputs added up, [M, K]) is the full layer within `tol`.
inline void expect_sum_matches_reference(const Problem& full, const std::vector<double>& sum, double tol) {
  const std::vector<double> ref =
      reference_moe(full.config, full.weights.weights, full.hidden, full.ids, full.topk_weights);
  double ref_max = 0.0;
  for (double v : ref) ref_max = std::max(ref_max, std::fabs(v));
  for (size_t i = 0; i < ref.size(); ++i) ASSERT_NEAR(sum[i], ref[i], tol * ref_max + tol * std::fabs(ref[i])) << i;
}

}  // namespace fusedmoe::test
