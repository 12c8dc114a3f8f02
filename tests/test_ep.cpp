// Expert parallelism on the CPU with the in-process communicator: EP = 2 and 4 equal the
// float64 reference of the whole layer (and so EP = 1) within tolerance, for the all-to-all and
// all-gather modular PrepareFinalize and the monolithic one, every routing method, uneven token
// counts (zero included), ranks that send or receive nothing, all tokens on one rank, expert
// counts not divisible by the ranks, custom placements; bad placements and too many tokens
// fail with the same error on every rank; a missing rank times out instead of hanging.
#include <thread>

#include "test_util.h"

namespace fusedmoe::test {
namespace {

struct EpOptions {
  int ranks = 2;
  std::vector<int64_t> tokens;                 // per rank; sums to the problem's M
  std::vector<std::vector<int32_t>> placement;  // experts of each rank (empty: contiguous)
  bool monolithic = false;
  EpDispatch dispatch = EpDispatch::all_to_all;
  int64_t max_tokens_per_rank = 0;  // 0: the largest count
  int skip_rank = -1;               // this rank never calls (timeout test)
  double timeout_s = 60.0;
};

struct EpResult {
  Buffer out;  // [M, K], the ranks' outputs in order
  std::vector<std::string> errors;  // per rank, empty when it succeeded
};

EpResult run_ep(const Problem& full, const EpOptions& o) {
  const int n = o.ranks;
  const int64_t K = full.config.hidden_size, k = full.config.routing.top_k;
  int64_t T = o.max_tokens_per_rank;
  for (int64_t m : o.tokens) T = std::max(T, o.max_tokens_per_rank ? T : m);
  auto group = make_in_process_group(n, o.timeout_s);
  EpResult result;
  result.out = poisoned_bf16(full.hidden.view().size(0), K);
  result.errors.resize(size_t(n));
  std::vector<std::thread> threads;
  int64_t begin = 0;
  for (int r = 0; r < n; ++r) {
    const int64_t M = o.tokens[r];
    threads.emplace_back([&, r, M, begin] {
      try {
        const std::vector<int32_t> experts =
            o.placement.empty() ? testing::experts_of_map(contiguous_expert_map(full.config.num_experts, r, n))
                                : o.placement[r];
        Shard shard = make_shard(full, experts);
        MoEConfig& c = shard.problem.config;
        c.parallel.ep_size = n;
        c.parallel.ep_rank = r;
        c.parallel.max_tokens_per_rank = T;
        c.parallel.ep_dispatch = o.dispatch;
        KernelOptions opt;
        opt.communicator = group[r].get();
        opt.use_monolithic = o.monolithic;
        const FusedMoEKernel kernel = make_kernel(c, shard.problem.weights.weights, opt);
        if (r == o.skip_rank) return;
        const Tensor hidden(full.hidden.data_as<bfloat16>() + begin * K, DType::bf16, {M, K});
        const Tensor out(result.out.data_as<bfloat16>() + begin * K, DType::bf16, {M, K});
        if (full.config.routing.method == RoutingMethod::precomputed) {
          const Tensor ids(full.ids.data_as<int32_t>() + begin * k, DType::i32, {M, k});
          const Tensor w(full.topk_weights.data_as<float>() + begin * k, DType::f32, {M, k});
          kernel.apply(hidden, ids, w, out);
        } else {
          const int64_t E = full.config.num_experts;
          const Tensor logits(full.logits.data_as<float>() + begin * E, DType::f32, {M, E});
          kernel.forward(hidden, logits, out);
        }
      } catch (const std::exception& e) {
        result.errors[r] = e.what();
      }
    });
    begin += M;
  }
  for (std::thread& t : threads) t.join();
  return result;
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

TEST(Ep, AMissingRankTimesOutWithAClearErrorInsteadOfHanging) {
  const Problem p = make_problem(small_config(QuantScheme::bf16, 8, 128, 64, 2), 6, 7);
  EpOptions o;
  o.ranks = 3;
  o.tokens = {2, 2, 2};
  o.skip_rank = 2;
  o.timeout_s = 0.5;
  const EpResult r = run_ep(p, o);
  // The first rank to time out names the missing rank; the other is released with that reason.
  for (int rank : {0, 1}) {
    EXPECT_NE(r.errors[rank].find("waited 0.5 s in all_gather"), std::string::npos) << r.errors[rank];
    EXPECT_NE(r.errors[rank].find("for rank(s) 2 of 3"), std::string::npos) << r.errors[rank];
  }
}

}  // namespace
}  // namespace fusedmoe::test
