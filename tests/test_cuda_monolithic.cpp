// The CUDA monolithic experts (router logits in, output out) against the CUDA modular path and
// the float64 reference: every routing method, every CUDA scheme (bf16, fp8-block, nvfp4, mxfp4; with
// expert biases), decode sizes (the single-block
// route+plan kernel), a larger batch and more experts (the route and plan kernels), all-negative,
// tied and bf16 logits. The monolithic output must equal the modular forward's bit for bit (same
// routing code, same GEMM pipeline); both match the reference on the ids the GPU picked. The fused
// decode kernel (bf16; forced here up to 64 tokens) against the small-M chain: every activation, biases, tile
// sizes, weight on the input, expert-map shards, odd shapes, CUDA-graph replays. Skips without a Hopper GPU.
#include <gtest/gtest.h>

#include <optional>
#include <vector>

#include "cuda_test_util.h"

namespace fusedmoe::test {
namespace {

struct Outputs {
  Buffer monolithic, modular, ids, weights;  // on the host
};

// forward() with the monolithic and the modular CUDA kernels (poisoned outputs and workspaces),
// and the GPU router's picks for the reference. With small_m_tile: both on the small-M path with that tile, the
// monolithic experts on the fused decode kernel (bf16) and the modular ones on the chain, and the one-warp router
// where warp_router says so for that kind (deepseek-v3's groups of 32 take the block router otherwise).
enum class WarpRouterIn { neither, monolithic, modular };
Outputs run_both(const GpuProblem& g, int64_t M, const Tensor& logits, std::optional<int> small_m_tile = {},
                 WarpRouterIn warp_router = WarpRouterIn::neither) {
  Outputs o;
  KernelOptions opt;
  opt.backend = Backend::cuda;
  opt.use_monolithic = true;
  const FusedMoEKernel mono = make_kernel(g.config, g.weights.weights, opt);
  const FusedMoEKernel modular = cuda_kernel(g);
  EXPECT_TRUE(mono.is_monolithic());
  Buffer out_mono = poisoned_bf16_on_gpu(M, g.config.hidden_size);
  Buffer out_mod = poisoned_bf16_on_gpu(M, g.config.hidden_size);
  const Buffer ws_mono = poisoned_workspace(mono, M), ws_mod = poisoned_workspace(modular, M);
  for (const bool monolithic : {true, false}) {
    std::optional<ForcePath> force;
    const bool warp = warp_router == (monolithic ? WarpRouterIn::monolithic : WarpRouterIn::modular);
    if (small_m_tile)
      force.emplace(true, *small_m_tile, 0, false, /*fused_decode=*/monolithic, 128, false, false, warp);
    if (monolithic)
      mono.forward(g.hidden, logits, out_mono, ws_mono.view());
    else
      modular.forward(g.hidden, logits, out_mod, ws_mod.view());
  }
  const int64_t k = g.config.routing.top_k;
  Buffer ids = Buffer::empty(DType::i32, {M, k}, kGpu), w = Buffer::empty(DType::f32, {M, k}, kGpu);
  route(g.config.routing, logits, ids, w);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  o.monolithic = copy_to(out_mono, Device::cpu());
  o.modular = copy_to(out_mod, Device::cpu());
  o.ids = copy_to(ids, Device::cpu());
  o.weights = copy_to(w, Device::cpu());
  return o;
}

// Decode sizes: the modular experts on the small-M chain, which the monolithic chain and the fused
// decode kernel (bf16) equal bit for bit; larger batches: the heuristic's path for both.
void expect_monolithic_equals_modular(const Problem& p, const GpuProblem& g, int64_t M, const Tensor& logits,
                                      int tile_tokens = 8, WarpRouterIn warp_router = WarpRouterIn::neither) {
  const Outputs o = run_both(g, M, logits, M <= 64 ? std::optional<int>(tile_tokens) : std::nullopt, warp_router);
  EXPECT_TRUE(bits_equal(o.monolithic, o.modular)) << "monolithic and modular outputs differ";
  expect_matches_reference(p, o.monolithic, o.ids, o.weights);
}

TEST(CudaMonolithic, EqualsModularForEveryRoutingMethodAndSize) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  for (QuantScheme s : kCudaSchemes)
    for (RoutingMethod m : kGpuRoutingMethods)
      for (int64_t M : {1, 7, 64, 300}) {  // 300: above the single-block route+plan kernel
        SCOPED_TRACE(std::string(quant_scheme_name(s)) + " " + routing_method_name(m) + " M=" + std::to_string(M));
        const bool fp4 = s == QuantScheme::nvfp4 || s == QuantScheme::mxfp4;
        const Problem p = make_problem(routed_config(s, m), M, seed + M, /*with_bias=*/fp4);
        const GpuProblem g = to_gpu(p);
        expect_monolithic_equals_modular(p, g, M, g.logits);
      }
}

// deepseek-v3 routing on groups of exactly 32 experts, where the modular router and the monolithic route+plan kernel
// take the block router (a warp per group, route_groups.cuh; route+plan where 256 or 512 threads hold a slot of warps
// for each token): DeepSeek-V3's 256 experts in 8 groups (best 4, top 8) and 64 in 2 groups (best 1, top 8). With one
// of the two forwards forced onto the one-warp router of every other layout, the outputs must match bit for bit —
// same experts, same weights — for random, tied, all-negative and NaN / +-inf logits, with and without the correction
// bias, with the weights renormalized or not, at 1, 2, 3 and 8 tokens (route+plan's block router at 1 and 2 tokens of
// the first layout — its 256- and 512-thread blocks — and at every size of the second).
TEST(CudaMonolithic, GroupRouterEqualsTheWarpRouter) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  struct Layout {
    int experts, groups, topk_group;
  };
  for (const Layout layout : {Layout{256, 8, 4}, Layout{64, 2, 1}})
    for (const bool bias : {true, false})
      for (const bool renormalize : {true, false})
        for (int kind = 0; kind < 4; ++kind)
          for (const int64_t M : {1, 2, 3, 8}) {
            const WarpRouterIn warp = (kind + M + bias) % 2 ? WarpRouterIn::monolithic : WarpRouterIn::modular;
            SCOPED_TRACE(std::to_string(layout.experts) + " experts, " + (bias ? "bias" : "no bias") +
                         (renormalize ? ", renormalized" : "") + ", logits " + std::to_string(kind) +
                         ", M=" + std::to_string(M) + ", warp router in the " +
                         (warp == WarpRouterIn::monolithic ? "monolithic" : "modular") + " forward");
            MoEConfig c = small_config(QuantScheme::bf16, layout.experts, 128, 128, 8);
            c.routing.method = RoutingMethod::deepseek_v3;
            c.routing.num_expert_group = layout.groups;
            c.routing.topk_group = layout.topk_group;
            c.routing.renormalize = renormalize;
            c.routing.routed_scaling_factor = 2.5f;
            Problem p = make_problem(c, M, seed + kind + 8 * M);
            if (!bias) p.config.routing.correction_bias = Tensor();
            float* l = p.logits.data_as<float>();
            for (int64_t i = 0; i < M * layout.experts; ++i) {
              if (kind == 1) l[i] = std::round(std::clamp(l[i], -1.0f, 1.0f));  // ties
              if (kind == 2) l[i] = -30.0f - std::fabs(l[i]);                      // all negative: sigmoids near 0
              if (kind == 3 && i % 17 == 3) l[i] = i % 3 == 0 ? NAN : i % 3 == 1 ? INFINITY : -INFINITY;
            }
            const GpuProblem g = to_gpu(p);
            expect_monolithic_equals_modular(p, g, M, g.logits, 8, warp);
          }
}

// Decode batches on the wgmma kernels, where the heuristic takes them for layers that stream enough weights
// (wgmma_streams_decode; the test layers are too small for it, so the path is forced): the monolithic chain,
// route+plan's single block included (1 and 7 tokens), equals the modular experts bit for bit.
TEST(CudaMonolithic, WgmmaDecodePathEqualsModular) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  for (QuantScheme s : {QuantScheme::bf16, QuantScheme::fp8_block, QuantScheme::fp8_per_tensor,
                        QuantScheme::fp8_per_channel})
    for (RoutingMethod m : kGpuRoutingMethods)
      for (int64_t M : {1, 7, 40}) {
        SCOPED_TRACE(std::string(quant_scheme_name(s)) + " " + routing_method_name(m) + " M=" + std::to_string(M));
        const Problem p = make_problem(routed_config(s, m), M, seed + M, /*with_bias=*/M == 7);
        const GpuProblem g = to_gpu(p);
        const ForcePath wgmma(true, s == QuantScheme::bf16 ? 256 : 128, 0, /*warp_tiles=*/true);
        const Outputs o = run_both(g, M, g.logits);
        EXPECT_TRUE(bits_equal(o.monolithic, o.modular)) << "monolithic and modular outputs differ";
        expect_matches_reference(p, o.monolithic, o.ids, o.weights);
      }
}

// The fused decode kernel equals the small-M chain bit for bit and matches the reference.
void expect_fused_equals_chain(const Problem& p, int64_t M, int tile_tokens) {
  const GpuProblem g = to_gpu(p);
  expect_monolithic_equals_modular(p, g, M, g.logits, tile_tokens);
}

TEST(CudaMonolithic, FusedDecodeEqualsTheSmallMChain) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  for (ActivationKind a : {ActivationKind::silu_mul, ActivationKind::gelu_mul, ActivationKind::gelu_tanh_mul,
                           ActivationKind::swiglu_oai, ActivationKind::relu2})
    for (RoutingMethod m : {RoutingMethod::softmax_topk_renormalize, RoutingMethod::deepseek_v3, RoutingMethod::llama4})
      for (int64_t M : {1, 5, 16, 64})
        for (int tile : {8, 16}) {
          const bool bias = (M + tile) % 3 != 0;
          SCOPED_TRACE(std::string(activation_name(a)) + " " + routing_method_name(m) + " M=" + std::to_string(M) +
                       " tile " + std::to_string(tile) + (bias ? " biases" : ""));
          MoEConfig c = routed_config(QuantScheme::bf16, m);
          c.activation.kind = a;
          expect_fused_equals_chain(make_problem(c, M, seed + M + tile, bias), M, tile);
        }
}

TEST(CudaMonolithic, FusedDecodeOddShapesAndShards) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  {
    SCOPED_TRACE("K = 192, I = 192 (odd multiples of 64); top-8 of 40");
    const Problem p = make_problem(small_config(QuantScheme::bf16, 40, 192, 192, 8), 23, seed, /*with_bias=*/true);
    expect_fused_equals_chain(p, 23, 8);
    expect_fused_equals_chain(p, 23, 16);
  }
  {
    SCOPED_TRACE("top-12 of 40: the reduce adds its slots in two groups of 8, the second part-filled");
    const Problem p = make_problem(small_config(QuantScheme::bf16, 40, 128, 64, 12), 9, seed ^ 3);
    expect_fused_equals_chain(p, 9, 8);
  }
  {
    SCOPED_TRACE("expert-map shard: 5 of 16 experts local");
    const Problem full = make_problem(routed_config(QuantScheme::bf16, RoutingMethod::softmax_topk), 12, seed ^ 7);
    const Shard shard = make_shard(full, {3, 0, 9, 15, 4});
    expect_fused_equals_chain(shard.problem, 12, 8);
  }
}

TEST(CudaMonolithic, FusedDecodeGraphReplaysEqualTheDirectRun) {
  FMOE_REQUIRE_GPU();
  const int64_t M = 16;
  const Problem p = make_problem(routed_config(QuantScheme::bf16, RoutingMethod::softmax_topk), M, test_seed(), true);
  const GpuProblem g = to_gpu(p);
  const ForcePath force(true, 8, 0, false, /*fused_decode=*/true);
  KernelOptions opt;
  opt.backend = Backend::cuda;
  opt.use_monolithic = true;
  const FusedMoEKernel mono = make_kernel(g.config, g.weights.weights, opt);
  const Buffer ws = poisoned_workspace(mono, M);
  Buffer direct = poisoned_bf16_on_gpu(M, 256), replayed = poisoned_bf16_on_gpu(M, 256);
  mono.forward(g.hidden, g.logits, direct, ws.view());
  // The graph replays on its own non-blocking stream with the same workspace: the direct run must
  // be over first (under a slow tool such as racecheck it was not, and the replay's route+plan reset
  // the fused kernel's counters while the direct run still used them).
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  CapturedGraph graph([&] { mono.forward(g.hidden, g.logits, replayed, ws.view()); });
  for (int rep = 0; rep < 3; ++rep) {  // the counters are zeroed again on every replay
    graph.replay();
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_TRUE(bits_equal(copy_to(direct, Device::cpu()), copy_to(replayed, Device::cpu()))) << "replay " << rep;
  }
}

TEST(CudaMonolithic, MoreExpertsThanTheSingleBlockKernelTakes) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  MoEConfig c = small_config(QuantScheme::bf16, 300, 128, 128, 6);  // E > kMaxRoutePlanExperts (256)
  const Problem p = make_problem(c, 5, seed);
  const GpuProblem g = to_gpu(p);
  expect_monolithic_equals_modular(p, g, 5, g.logits);
}

TEST(CudaMonolithic, AllNegativeTiedAndBf16Logits) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  for (RoutingMethod m : {RoutingMethod::softmax_topk_renormalize, RoutingMethod::deepseek_v3,
                          RoutingMethod::sigmoid_topk})
    for (int kind = 0; kind < 3; ++kind) {
      SCOPED_TRACE(std::string(routing_method_name(m)) + (kind == 0 ? " all negative" : kind == 1 ? " tied" : " bf16"));
      const int64_t M = 9;
      Problem p = make_problem(routed_config(QuantScheme::bf16, m), M, seed ^ 0x51);
      const int64_t E = p.config.num_experts;
      float* l = p.logits.data_as<float>();
      for (int64_t i = 0; i < M * E; ++i) {
        if (kind == 0) l[i] = -1000.0f - std::fabs(l[i]);  // every logit negative, far from zero
        if (kind == 1) l[i] = (i / E) % 2 ? 0.25f : -3.0f;  // every expert of a token tied
      }
      const GpuProblem g = to_gpu(p);
      if (kind < 2) {
        expect_monolithic_equals_modular(p, g, M, g.logits);
      } else {  // the same logits as bf16
        Buffer lb = Buffer::empty(DType::bf16, {M, E});
        for (int64_t i = 0; i < M * E; ++i) lb.data_as<bfloat16>()[i] = float_to_bf16(l[i]);
        const Buffer lb_gpu = copy_to(lb, kGpu);
        expect_monolithic_equals_modular(p, g, M, lb_gpu.view());
      }
    }
}

TEST(CudaMonolithic, CudaGraphReplayEqualsDirectRun) {
  FMOE_REQUIRE_GPU();
  const Problem p = make_problem(routed_config(QuantScheme::fp8_block, RoutingMethod::deepseek_v3), 16, test_seed());
  const GpuProblem g = to_gpu(p);
  KernelOptions opt;
  opt.backend = Backend::cuda;
  opt.use_monolithic = true;
  const FusedMoEKernel mono = make_kernel(g.config, g.weights.weights, opt);
  const Buffer ws = poisoned_workspace(mono, 16);
  Buffer direct = poisoned_bf16_on_gpu(16, 256), replayed = poisoned_bf16_on_gpu(16, 256);
  mono.forward(g.hidden, g.logits, direct, ws.view());
  // The graph replays on its own non-blocking stream with the same workspace: the direct run must
  // be over first (under a slow tool such as racecheck it was not, and the replay's route+plan reset
  // the fused kernel's counters while the direct run still used them).
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  CapturedGraph graph([&] { mono.forward(g.hidden, g.logits, replayed, ws.view()); });
  graph.replay();
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_TRUE(bits_equal(copy_to(direct, Device::cpu()), copy_to(replayed, Device::cpu())));
}

// fp8 decode batches quantize first and route+plan beside the quantizer, waiting for it only at the end
// (launch_route_plan's beside_previous). The logits it reads early must still be the ones the kernel before the
// quantizer wrote: expect_chained_forwards_equal_synchronized (cuda_test_util.h).
TEST(CudaMonolithic, BackToBackForwardsReadThePreviousOutput) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  MoEConfig c = small_config(QuantScheme::fp8_block, 128, 128, 128, 4);
  c.routing.method = RoutingMethod::deepseek_v3;
  c.routing.num_expert_group = 8;
  c.routing.topk_group = 2;
  const GpuProblem g = to_gpu(make_problem(c, 3, seed));
  KernelOptions opt;
  opt.backend = Backend::cuda;
  opt.use_monolithic = true;
  expect_chained_forwards_equal_synchronized(make_kernel(g.config, g.weights.weights, opt), g.hidden);
}

// Building the monolithic CUDA kernel for p fails with an Error mentioning `needle`.
void expect_monolithic_refused(const Problem& p, const std::string& needle) {
  KernelOptions opt;
  opt.backend = Backend::cuda;
  opt.use_monolithic = true;
  const GpuProblem g = to_gpu(p);
  try {
    make_kernel(g.config, g.weights.weights, opt);
    ADD_FAILURE() << "built a monolithic kernel that should be refused (" << needle << ")";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(CudaMonolithic, UnsupportedRequestsAreClearErrors) {
  FMOE_REQUIRE_GPU();
  MoEConfig c = routed_config(QuantScheme::bf16, RoutingMethod::softmax_topk);
  c.routing.method = RoutingMethod::precomputed;
  expect_monolithic_refused(make_problem(c, 4, 1), "precomputed");
  // Over the GPU router's 1024 experts.
  expect_monolithic_refused(make_problem(small_config(QuantScheme::bf16, 1100, 128, 128, 2), 2, 2), "1024");
}

}  // namespace
}  // namespace fusedmoe::test
