// The batched activation format on CUDA ([E_local, max_tokens_per_expert, K] batches, the
// format of vLLM's BatchedExperts): against the float64 reference and bit for bit against the
// standard format on both paths and every CUDA scheme, with repeated ids in a token (one batch
// row serves both slots), masked and out-of-range ids, an expert map, biases, CUDA-graph replay,
// run-twice determinism, and the capacity error. Skips without a GPU.
#include <cstring>

#include "cuda_test_util.h"

namespace fusedmoe::test {
namespace {

MoEConfig batched(MoEConfig c, int64_t capacity) {
  c.activation_format = ActivationFormat::batched;
  c.max_tokens_per_expert = capacity;
  return c;
}

// The problem's layer run through the batched format (capacity T) on the GPU.
Buffer run_batched(const Problem& p, int64_t M, int64_t capacity) {
  GpuProblem g = to_gpu(p);
  g.config = batched(g.config, capacity);
  return run_cuda_apply(g, M);
}

TEST(CudaBatched, EqualsStandardFormatBitwiseOnBothPaths) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  for (bool small_m : {true, false}) {
    const ForcePath force(small_m, 16, /*fp4_chunk_experts=*/3);
    for (QuantScheme s : kCudaSchemes) {
      MoEConfig c = small_config(s, /*E=*/10, /*K=*/256, /*I=*/384, /*top_k=*/3);
      c.routing.method = RoutingMethod::precomputed;  // random ids: repeats inside a token included
      for (int64_t M : {1, 7, 37}) {
        SCOPED_TRACE(std::string(quant_scheme_name(s)) + (small_m ? " small-M" : " grouped") + " M=" +
                     std::to_string(M));
        const Problem p = make_problem(c, M, seed + M, /*with_bias=*/M == 7);
        const Buffer standard = run_cuda_apply(to_gpu(p), M);
        const Buffer out = run_batched(p, M, /*capacity=*/M + 5);
        expect_matches_reference(p, out, p.ids, p.topk_weights);
        EXPECT_TRUE(bits_equal(out, standard)) << "batched differs from the standard format";
      }
    }
  }
}

// Every token naming one expert in every slot: that expert's batch is full (M rows for M*k
// slots) and the capacity is exactly M.
TEST(CudaBatched, RepeatedIdsFillOneBatchExactly) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  for (bool small_m : {true, false}) {
    const ForcePath force(small_m, 8);
    MoEConfig c = small_config(QuantScheme::fp8_block, 6, 256, 128, 4);
    c.routing.method = RoutingMethod::precomputed;
    Problem p = make_problem(c, 20, seed);
    std::fill_n(p.ids.data_as<int32_t>(), 80, 4);
    expect_matches_reference(p, run_batched(p, 20, 20), p.ids, p.topk_weights);
  }
}

TEST(CudaBatched, MaskedIdsAndExpertMap) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  for (bool small_m : {true, false}) {
    const ForcePath force(small_m, 8);
    MoEConfig c = small_config(QuantScheme::bf16, 10, 128, 128, 2);
    c.routing.method = RoutingMethod::precomputed;
    Problem masked = make_problem(c, 6, seed);
    const int32_t ids[] = {-1, 3, 123456789, 9, 10, 0, -7, 5, 2, 2, 4, -1};
    std::memcpy(masked.ids.data_as<int32_t>(), ids, sizeof(ids));
    expect_matches_reference(masked, run_batched(masked, 6, 6), masked.ids, masked.topk_weights);
    // A shard owning 4 of the 10 experts, in a shuffled local order.
    const Problem full = make_problem(small_config(QuantScheme::fp8_block, 10, 256, 128, 3), 33, seed ^ 3);
    const Shard shard = make_shard(full, {7, 2, 9, 0});
    expect_matches_reference(shard.problem, run_batched(shard.problem, 33, 40), full.ids, full.topk_weights);
  }
}

TEST(CudaBatched, RunTwiceAndGraphReplayAreBitwiseEqual) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  const int64_t M = 24, T = 32, K = 256;
  const Problem p = make_problem(small_config(QuantScheme::fp8_block, 8, K, 256, 4), M, seed);
  GpuProblem g = to_gpu(p);
  g.config = batched(g.config, T);
  const Buffer first = run_cuda_apply(g, M);
  EXPECT_TRUE(bits_equal(first, run_cuda_apply(g, M)));
  const FusedMoEKernel kernel = cuda_kernel(g);
  Buffer out = poisoned_bf16_on_gpu(M, K);
  const Buffer ws = poisoned_workspace(kernel, M);
  CapturedGraph graph([&] { kernel.apply(g.hidden, g.ids, g.topk_weights, out, ws.view()); });
  graph.replay();
  EXPECT_TRUE(bits_equal(copy_to(out, Device::cpu()), first));
}

TEST(CudaBatched, MoreTokensThanCapacityIsAClearErrorAndWritesNothing) {
  FMOE_REQUIRE_GPU();
  const Problem p = make_problem(small_config(QuantScheme::bf16, 8, 128, 128, 2), 9, 5);
  GpuProblem g = to_gpu(p);
  g.config = batched(g.config, 8);
  const FusedMoEKernel kernel = cuda_kernel(g);
  Buffer out = poisoned_bf16_on_gpu(9, 128);
  try {
    kernel.apply(g.hidden, g.ids, g.topk_weights, out);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("9 tokens, over the batched capacity max_tokens_per_expert=8"),
              std::string::npos)
        << e.what();
  }
  EXPECT_TRUE(bits_equal(copy_to(out, Device::cpu()), poisoned_bf16(9, 128)));
  // Monolithic experts take the standard format only.
  KernelOptions opt;
  opt.backend = Backend::cuda;
  opt.use_monolithic = true;
  MoEConfig mono = g.config;
  mono.routing.method = RoutingMethod::softmax_topk;
  EXPECT_THROW(make_kernel(mono, g.weights.weights, opt), Error);
}

}  // namespace
}  // namespace fusedmoe::test
