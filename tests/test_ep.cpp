// Expert parallelism on the CPU with the in-process communicator: EP = 2 and 4 equal the
// float64 reference of the whole layer (and so EP = 1) within tolerance, for the all-to-all
// (standard and batched) and all-gather modular PrepareFinalize and the monolithic one, every
// routing method, uneven token
// counts (zero included), ranks that send or receive nothing, all tokens on one rank, expert
// counts not divisible by the ranks, custom placements; bad placements and too many tokens
// fail with the same error on every rank, as do ranks built with different layers; a missing rank
// times out instead of hanging; 100 calls at capacity give the first call's bits.
#include "test_util.h"
#include "testing/expert_parallel.h"

namespace fusedmoe::test {
namespace {

using EpOptions = testing::EpRunOptions;
using EpResult = testing::EpRunResult;

EpResult run_ep(const Problem& p, const EpOptions& o) {
  return testing::run_expert_parallel(p.config, p.weights.weights, p.hidden, p.logits, p.ids, p.topk_weights, o);
}

void expect_no_errors(const EpResult& r) {
  for (size_t i = 0; i < r.errors.size(); ++i) EXPECT_EQ(r.errors[i], "") << "rank " << i;
}

class EveryMethod : public ::testing::TestWithParam<std::tuple<QuantScheme, int, int>> {};

// The parameter picks scheme, ranks and the PrepareFinalize (0 all-to-all, 1 all-gather, 2 monolithic).
TEST_P(EveryMethod, EqualsTheWholeLayer) {
  const auto [scheme, ranks, kind] = GetParam();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  for (RoutingMethod m : {RoutingMethod::softmax_topk, RoutingMethod::topk_softmax,
                          RoutingMethod::softmax_topk_renormalize, RoutingMethod::deepseek_v3, RoutingMethod::llama4,
                          RoutingMethod::sigmoid_topk, RoutingMethod::sigmoid_topk_renormalize,
                          RoutingMethod::precomputed}) {
    if (kind == 2 && m == RoutingMethod::precomputed) continue;
    SCOPED_TRACE(routing_method_name(m));
    MoEConfig c = small_config(scheme, /*E=*/12, /*K=*/128, /*I=*/64, m == RoutingMethod::llama4 ? 1 : 3);
    c.routing.method = m;
    if (m == RoutingMethod::deepseek_v3) c.routing.num_expert_group = 4, c.routing.topk_group = 2;
    const std::vector<int64_t> tokens = ranks == 2 ? std::vector<int64_t>{7, 0} : std::vector<int64_t>{5, 0, 9, 3};
    int64_t M = 0;
    for (int64_t t : tokens) M += t;
    const Problem p = make_problem(c, M, seed);
    EpOptions o;
    o.ranks = ranks;
    o.tokens = tokens;
    o.monolithic = kind == 2;
    o.dispatch = kind == 1 ? EpDispatch::all_gather : EpDispatch::all_to_all;
    const EpResult r = run_ep(p, o);
    expect_no_errors(r);
    expect_matches_reference(p, r.out, p.ids, p.topk_weights);
  }
}

INSTANTIATE_TEST_SUITE_P(Ep, EveryMethod,
                         ::testing::Combine(::testing::Values(QuantScheme::bf16, QuantScheme::fp8_block,
                                                              QuantScheme::fp8_per_channel),
                                            ::testing::Values(2, 4), ::testing::Values(0, 1, 2)),
                         [](const auto& info) {
                           std::string name = std::string(quant_scheme_name(std::get<0>(info.param))) + "_ep" +
                                              std::to_string(std::get<1>(info.param)) + "_" +
                                              (std::get<2>(info.param) == 0   ? "alltoall"
                                               : std::get<2>(info.param) == 1 ? "allgather"
                                                                               : "monolithic");
                           for (char& ch : name)
                             if (ch == '-') ch = '_';
                           return name;
                         });

TEST(Ep, RanksThatSendOrReceiveNothingAndAllTokensOnOneRank) {
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  // 10 experts over 4 ranks (3, 3, 2, 2): not divisible. Every token of every rank goes to
  // rank 0's experts {0, 1, 2}: ranks 1-3 receive nothing, rank 0 sends nothing away.
  MoEConfig c = small_config(QuantScheme::fp8_block, 10, 128, 64, 2);
  c.routing.method = RoutingMethod::precomputed;
  const std::vector<int64_t> tokens = {4, 6, 0, 5};
  Problem p = make_problem(c, 15, seed);
  for (int64_t i = 0; i < 30; ++i) p.ids.data_as<int32_t>()[i] = int32_t(i % 3);
  for (EpDispatch d : {EpDispatch::all_to_all, EpDispatch::all_gather}) {
    EpOptions o;
    o.ranks = 4;
    o.tokens = tokens;
    o.dispatch = d;
    const EpResult r = run_ep(p, o);
    expect_no_errors(r);
    expect_matches_reference(p, r.out, p.ids, p.topk_weights);
  }
}

TEST(Ep, BatchedAllToAllEqualsTheWholeLayer) {
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  for (QuantScheme s : {QuantScheme::bf16, QuantScheme::fp8_block})
    for (int ranks : {2, 4}) {
      MoEConfig c = small_config(s, 10, 128, 64, 3);
      c.activation_format = ActivationFormat::batched;
      c.max_tokens_per_expert = 64;
      const Problem p = make_problem(c, 21, seed + ranks);
      EpOptions o;
      o.ranks = ranks;
      o.tokens = ranks == 2 ? std::vector<int64_t>{21, 0} : std::vector<int64_t>{6, 5, 0, 10};
      const EpResult r = run_ep(p, o);
      expect_no_errors(r);
      expect_matches_reference(p, r.out, p.ids, p.topk_weights);
    }
}

// Repeated exchanges at capacity (every rank passes max_tokens_per_rank tokens, skewed onto one rank's
// experts) give the same bits every time: a peer's combine returned one corrupted row in 1.5-3% of
// calls at max tokens per rank (DeepEP #700). 100 calls for each PrepareFinalize.
TEST(Ep, HundredCallsAtCapacityGiveTheFirstCallsBits) {
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  for (int kind : {0, 1, 2, 3}) {  // all-to-all, all-to-all batched, all-gather, monolithic
    SCOPED_TRACE(kind);
    MoEConfig c = small_config(QuantScheme::fp8_block, 9, 128, 64, 3);
    if (kind == 1) c.activation_format = ActivationFormat::batched, c.max_tokens_per_expert = 24;
    if (kind != 3) c.routing.method = RoutingMethod::precomputed;
    Problem p = make_problem(c, 24, seed + kind);
    if (kind != 3)  // half the slots on rank 2's experts (the monolithic kernel routes the logits itself)
      for (int64_t i = 0; i < 24 * 3; i += 2) p.ids.data_as<int32_t>()[i] = int32_t(6 + i % 3);
    EpOptions o;
    o.ranks = 3;
    o.tokens = {8, 8, 8};
    o.max_tokens_per_rank = 8;
    o.dispatch = kind == 2 ? EpDispatch::all_gather : EpDispatch::all_to_all;
    o.monolithic = kind == 3;
    o.calls = 100;
    const EpResult r = run_ep(p, o);
    expect_no_errors(r);
    expect_matches_reference(p, r.out, p.ids, p.topk_weights);
  }
}

TEST(Ep, BatchedCapacityExceededIsTheSameErrorOnEveryRank) {
  MoEConfig c = small_config(QuantScheme::bf16, 8, 128, 64, 2);
  c.routing.method = RoutingMethod::precomputed;
  c.activation_format = ActivationFormat::batched;
  c.max_tokens_per_expert = 3;
  Problem p = make_problem(c, 6, 11);
  for (int64_t i = 0; i < 12; ++i) p.ids.data_as<int32_t>()[i] = int32_t(i < 4 ? 0 : 5);  // 4 rows on expert 0
  EpOptions o;
  o.ranks = 2;
  o.tokens = {3, 3};
  const EpResult r = run_ep(p, o);
  ASSERT_NE(r.errors[0], "");
  EXPECT_EQ(r.errors[0], r.errors[1]);
  EXPECT_NE(r.errors[0].find("rank 0: local expert 0 received 4 rows, over the batched capacity"), std::string::npos)
      << r.errors[0];
  EXPECT_TRUE(bits_equal(r.out, poisoned_bf16(6, 128)));
}

TEST(Ep, CustomPlacementAndMaskedIds) {
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  MoEConfig c = small_config(QuantScheme::bf16, 10, 128, 64, 3);
  c.routing.method = RoutingMethod::precomputed;
  Problem p = make_problem(c, 20, seed);
  p.ids.data_as<int32_t>()[4] = -1;
  p.ids.data_as<int32_t>()[11] = 1234;
  EpOptions o;
  o.ranks = 3;
  o.tokens = {8, 5, 7};
  o.placement = {{3, 0, 7}, {9, 1, 4, 6}, {2, 8, 5}};
  const EpResult r = run_ep(p, o);
  expect_no_errors(r);
  expect_matches_reference(p, r.out, p.ids, p.topk_weights);
}

TEST(Ep, TooManyTokensIsTheSameErrorOnEveryRank) {
  const Problem p = make_problem(small_config(QuantScheme::bf16, 8, 128, 64, 2), 9, 5);
  for (int kind = 0; kind < 3; ++kind) {
    EpOptions o;
    o.ranks = 2;
    o.tokens = {4, 5};
    o.max_tokens_per_rank = 4;
    o.monolithic = kind == 2;
    o.dispatch = kind == 1 ? EpDispatch::all_gather : EpDispatch::all_to_all;
    const EpResult r = run_ep(p, o);
    ASSERT_NE(r.errors[0], "");
    EXPECT_EQ(r.errors[0], r.errors[1]);
    EXPECT_NE(r.errors[0].find("rank 1 passed 5 tokens, over parallel.max_tokens_per_rank=4"), std::string::npos)
        << r.errors[0];
    EXPECT_TRUE(bits_equal(r.out, poisoned_bf16(9, 128))) << "output written despite the error";
  }
}

TEST(Ep, ExpertOnTwoRanksIsRefusedOnEveryRank) {
  const Problem p = make_problem(small_config(QuantScheme::bf16, 6, 128, 64, 2), 4, 6);
  EpOptions o;
  o.ranks = 2;
  o.tokens = {2, 2};
  o.placement = {{0, 1, 2, 3}, {3, 4, 5}};
  const EpResult r = run_ep(p, o);
  for (const std::string& e : r.errors)
    EXPECT_NE(e.find("expert 3 is placed on rank 0 and on rank 1"), std::string::npos) << e;
}

// Ranks built with different layers (here another capacity, which hangs DeepEP's collectives, #208, and
// another routed scaling factor) fail alike at construction, each field named, for every PrepareFinalize;
// a rank whose expert_map alone differs is how expert parallelism works and builds.
TEST(Ep, RanksBuiltWithDifferentLayersFailAlikeAtConstruction) {
  const Problem p = make_problem(small_config(QuantScheme::bf16, 6, 128, 64, 2), 4, 8);
  for (int kind : {0, 1, 2}) {  // all-to-all, all-gather, monolithic
    SCOPED_TRACE(kind);
    EpOptions o;
    o.ranks = 3;
    o.tokens = {2, 1, 1};
    o.monolithic = kind == 2;
    o.dispatch = kind == 1 ? EpDispatch::all_gather : EpDispatch::all_to_all;
    o.timeout_seconds = 5.0;
    o.adjust_config = [](int rank, MoEConfig& c) {
      if (rank == 2) c.parallel.max_tokens_per_rank = 8;
      if (rank == 1) c.routing.routed_scaling_factor = 2.5f;
    };
    const EpResult r = run_ep(p, o);
    for (const std::string& e : r.errors) {
      EXPECT_NE(e.find("expert-parallel ranks were built with different layers"), std::string::npos) << e;
      EXPECT_NE(e.find("routing.routed_scaling_factor is 1 on rank 0 and 2.5 on rank 1"), std::string::npos) << e;
      EXPECT_NE(e.find("parallel.max_tokens_per_rank is 2 on rank 0 and 8 on rank 2"), std::string::npos) << e;
    }
    EXPECT_TRUE(std::isnan(bf16_to_float(r.out.data_as<bfloat16>()[0]))) << "a rank wrote output";
  }
}

TEST(Ep, AMissingRankTimesOutWithAClearErrorInsteadOfHanging) {
  const Problem p = make_problem(small_config(QuantScheme::bf16, 8, 128, 64, 2), 6, 7);
  EpOptions o;
  o.ranks = 3;
  o.tokens = {2, 2, 2};
  o.skip_rank = 2;
  o.timeout_seconds = 0.5;
  const EpResult r = run_ep(p, o);
  // The first rank to time out names the missing rank; the other is released with that reason.
  for (int rank : {0, 1}) {
    EXPECT_NE(r.errors[rank].find("waited 0.5 s in all_gather"), std::string::npos) << r.errors[rank];
    EXPECT_NE(r.errors[rank].find("for rank(s) 2 of 3"), std::string::npos) << r.errors[rank];
  }
}

}  // namespace
}  // namespace fusedmoe::test
