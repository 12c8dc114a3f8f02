// The CUDA router against the CPU router (the single routing definition, core/route_token.h):
// identical ids and weights within f32 rounding for every method, with ties, all-negative,
// NaN and +-inf logits. Skips without a Hopper GPU.
#include <cmath>

#include "cuda/heuristics.h"
#include "cuda_test_util.h"

namespace fusedmoe::test {
namespace {

struct Case {
  RoutingMethod method;
  int64_t E;
  int top_k;
  int groups = 1, topk_group = 1;
  float scaling = 1.0f;
  bool bias = true;  // deepseek_v3: a correction bias (group score: top-2 sum) or none (the group's max)
};

void expect_same_routing(const RoutingConfig& cfg, const Buffer& logits, const char* what) {
  const int64_t M = logits.view().size(0), k = cfg.top_k;
  Buffer ids = Buffer::empty(DType::i32, {M, k}), w = Buffer::empty(DType::f32, {M, k});
  route(cfg, logits, ids, w);
  RoutingConfig gcfg = cfg;
  Buffer bias_gpu;
  if (cfg.correction_bias.defined()) {
    bias_gpu = copy_to(cfg.correction_bias, kGpu);
    gcfg.correction_bias = bias_gpu.view();
  }
  const Buffer glogits = copy_to(logits, kGpu);
  Buffer gids = Buffer::empty(DType::i32, {M, k}, kGpu), gw = Buffer::empty(DType::f32, {M, k}, kGpu);
  route(gcfg, glogits, gids, gw);
  const Buffer hids = copy_to(gids, Device::cpu()), hw = copy_to(gw, Device::cpu());
  int64_t bad = 0;
  for (int64_t i = 0; i < M * k; ++i) {
    const int32_t a = ids.data_as<int32_t>()[i], b = hids.data_as<int32_t>()[i];
    const float x = w.data_as<float>()[i], y = hw.data_as<float>()[i];
    const bool ok = a == b && (x == y || std::fabs(x - y) <= 2e-6f * std::max(1.0f, std::fabs(x)));
    if (!ok && bad++ < 5)
      ADD_FAILURE() << what << " " << routing_method_name(cfg.method) << " token " << i / k << " slot " << i % k
                    << ": cpu (" << a << ", " << x << ") cuda (" << b << ", " << y << ")";
  }
  EXPECT_EQ(bad, 0);
}

TEST(CudaRouter, MatchesCpuRouterForEveryMethod) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  const Case cases[] = {
      {RoutingMethod::softmax_topk, 8, 2},           {RoutingMethod::softmax_topk, 60, 4},
      {RoutingMethod::topk_softmax, 128, 8},         {RoutingMethod::softmax_topk_renormalize, 128, 8, 1, 1, 2.0f},
      {RoutingMethod::sigmoid_topk, 40, 6},          {RoutingMethod::sigmoid_topk_renormalize, 300, 7},
      {RoutingMethod::llama4, 16, 1},                {RoutingMethod::deepseek_v3, 256, 8, 8, 4, 2.5f},
      {RoutingMethod::deepseek_v3, 64, 6, 4, 2},     {RoutingMethod::softmax_topk, 1024, 16},
      // deepseek_v3 group layouts: a group of whole lanes (256/8: 4 lanes of 8 experts; 96/3: 8 lanes of 4,
      // lanes 24-31 empty; 32/16: 2 lanes of 1) scores by shuffles; 160/8 (groups of 20) by warp reductions.
      {RoutingMethod::deepseek_v3, 160, 6, 8, 3},    {RoutingMethod::deepseek_v3, 96, 4, 3, 2},
      {RoutingMethod::deepseek_v3, 32, 4, 16, 4},    {RoutingMethod::deepseek_v3, 256, 8, 8, 4, 1.0f, false},
      {RoutingMethod::deepseek_v3, 160, 6, 8, 3, 1.0f, false},
      // groups of 32 (256/8 above too) take the block router, a warp per group (route_groups.cuh)
      {RoutingMethod::deepseek_v3, 128, 6, 4, 2},    {RoutingMethod::deepseek_v3, 32, 5, 1, 1, 1.0f, false},
      {RoutingMethod::deepseek_v3, 1024, 1, 32, 32},
  };
  int n = 0;
  for (const Case& c : cases) {
    RoutingConfig cfg;
    cfg.method = c.method;
    cfg.top_k = c.top_k;
    cfg.num_expert_group = c.groups;
    cfg.topk_group = c.topk_group;
    cfg.routed_scaling_factor = c.scaling;
    Buffer bias;
    if (c.method == RoutingMethod::deepseek_v3 && c.bias) {
      bias = testing::random_f32({c.E}, seed ^ 0xb1a5, 0.1f);
      cfg.correction_bias = bias.view();
    }
    const int64_t M = 97;
    const uint64_t s = seed + 17 * ++n;
    expect_same_routing(cfg, testing::random_f32({M, c.E}, s, 2.0f), "random");
    // A batch past the block router's (kBlockRouterMaxTokens: the one-warp router for every layout there).
    expect_same_routing(cfg, testing::random_f32({cuda::kBlockRouterMaxTokens + 3, c.E}, s ^ 5, 2.0f), "large batch");
    // Ties: logits from {-1, 0, 1}; all-negative; NaN and +-inf sprinkled in.
    Buffer ties = testing::random_f32({M, c.E}, s ^ 1, 2.0f);
    Buffer negative = testing::random_f32({M, c.E}, s ^ 2, 1.0f);
    Buffer special = testing::random_f32({M, c.E}, s ^ 3, 2.0f);
    for (int64_t i = 0; i < M * c.E; ++i) {
      ties.data_as<float>()[i] = std::round(std::clamp(ties.data_as<float>()[i], -1.0f, 1.0f));
      negative.data_as<float>()[i] = -10.0f - std::fabs(negative.data_as<float>()[i]);
      const uint64_t r = uint64_t(1e6 * (1.0f + testing::uniform(s ^ 4, i)));
      if (r % 17 == 0) special.data_as<float>()[i] = NAN;
      if (r % 101 == 0) special.data_as<float>()[i] = INFINITY;
      if (r % 103 == 0) special.data_as<float>()[i] = -INFINITY;
    }
    expect_same_routing(cfg, ties, "ties");
    expect_same_routing(cfg, negative, "all-negative");
    expect_same_routing(cfg, special, "nan/inf");
  }
}

TEST(CudaRouter, Bf16Logits) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  RoutingConfig cfg;
  cfg.method = RoutingMethod::softmax_topk_renormalize;
  cfg.top_k = 8;
  expect_same_routing(cfg, testing::random_bf16({50, 128}, seed, 2.0f), "bf16");
}

}  // namespace
}  // namespace fusedmoe::test
