// Expert parallelism on CUDA over NCCL: one thread per GPU, each a rank with its contiguous
// block of experts, the CUDA experts and the all-to-all or all-gather PrepareFinalize. The
// ranks' outputs, put together, must match the float64 reference of the whole layer (what
// EP = 1 computes) within the scheme's tolerance: uneven token counts, a rank with no tokens,
// every token routed to one rank's experts, experts not divisible by the ranks, routing on the
// GPU (every method) and given ids, modular and monolithic experts, run-twice bitwise equality (100 calls
// back to back in the stress test), the batched format (all-to-all and all-gather), the all-to-all over
// peer-window stores (the default on one NVLink host) and over NCCL, and over capacity and ranks built with
// different capacities as clear errors. Skips below 2 GPUs.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "cuda_test_util.h"
#include "fusedmoe/nccl.h"
#include "test_util.h"

namespace fusedmoe::test {
namespace {

int hopper_gpus() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  for (int d = 0; d < n; ++d) {
    int major = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, d);
    if (major != 9) return 0;
  }
  return n;
}

// The communicators' timeout: 30 s, or FUSEDMOE_TEST_NCCL_TIMEOUT_S (compute-sanitizer slows
// NCCL's initialisation past 30 s).
double nccl_timeout() {
  const char* env = std::getenv("FUSEDMOE_TEST_NCCL_TIMEOUT_S");
  return env && env[0] ? std::atof(env) : 30.0;
}

struct EpGpuCase {
  const char* name;
  QuantScheme quant;
  EpDispatch dispatch;
  int64_t experts;
  std::vector<int64_t> tokens;  // per rank (the first n are used)
  bool all_on_last_rank = false;  // every id lands on the last rank's experts
  bool route_on_gpu = false;      // forward() with logits instead of apply() with ids
  bool monolithic = false;        // monolithic experts (all-gather PrepareFinalize; routes on the GPU)
  RoutingMethod routing = RoutingMethod::softmax_topk_renormalize;
  bool check_all_ranks = false;   // parallel.capacity_check_all_ranks
  bool batched = false;           // the batched format, max_tokens_per_expert = batch_capacity
  int64_t batch_capacity = 0;     // 0: ranks x max_tokens_per_rank (the least the GPU accepts)
  int64_t last_rank_capacity = 0;  // > 0: the last rank is built with this max_tokens_per_rank instead
  int top_k = 3;
  bool graph = false;  // then a third call is captured in a CUDA graph and replayed three times
  int calls = 2;       // direct calls back to back on the stream, each into its own poisoned output
};

void PrintTo(const EpGpuCase& c, std::ostream* os) { *os << c.name; }

struct RankRun {
  Buffer out;                        // [M, K] on the host, NaN where no rank wrote
  std::vector<std::string> errors;   // per rank
  // Over all ranks: repeated calls (and, with EpGpuCase::graph, replays) whose bits differ from the rank's first call.
  int differing_calls = 0;
};

// Runs the case on n ranks; `calls` is false on ranks that must not call the layer.
RankRun run_on_gpus(const Problem& p, const EpGpuCase& c, int n, int64_t T, const std::vector<bool>& calls) {
  const int64_t E = p.config.num_experts, K = p.config.hidden_size, k = p.config.routing.top_k;
  const int64_t M = p.hidden.view().size(0);
  RankRun run;
  std::mutex run_mutex;
  run.out = poisoned_bf16(M, K);
  run.errors.resize(static_cast<size_t>(n));
  const NcclId id = nccl_unique_id();
  std::vector<std::thread> threads;
  int64_t begin = 0;
  for (int r = 0; r < n; ++r) {
    const int64_t rows = c.tokens[r];
    threads.emplace_back([&, r, rows, begin] {
      try {
        FMOE_CHECK(cudaSetDevice(r) == cudaSuccess, "cudaSetDevice");
        cudaStream_t s;
        cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
        {
          const CudaStreamGuard guard(s);
          auto comm = make_nccl_communicator(id, r, n, r, nccl_timeout());
          const Device dev = Device::cuda(r);
          const std::vector<int32_t> experts = testing::experts_of_map(contiguous_expert_map(E, r, n));
          const Buffer map = testing::expert_map_of(E, experts);
          const OwnedExpertWeights shard = testing::slice_experts(p.weights.weights, E, experts);
          MoEConfig cfg = p.config;
          cfg.parallel.expert_map = map.view();
          cfg.parallel.ep_size = n;
          cfg.parallel.ep_rank = r;
          cfg.parallel.max_tokens_per_rank = c.last_rank_capacity && r == n - 1 ? c.last_rank_capacity : T;
          cfg.parallel.ep_dispatch = c.dispatch;
          cfg.parallel.capacity_check_all_ranks = c.check_all_ranks;
          if (c.batched) {
            cfg.activation_format = ActivationFormat::batched;
            cfg.max_tokens_per_expert = c.batch_capacity ? c.batch_capacity : n * T;
          }
          auto rows_of = [&](const Buffer& b, DType dt, int64_t cols) {
            return copy_to(Tensor(b.data_as<uint8_t>() + begin * cols * int64_t(dtype_size(dt)), dt,
                                  {rows, cols}),
                           Device::cpu());
          };
          const testing::LayerInputs g =
              testing::layer_inputs_on(dev, cfg, shard.weights, rows_of(p.hidden, DType::bf16, K),
                                       rows_of(p.logits, DType::f32, E), rows_of(p.ids, DType::i32, k),
                                       rows_of(p.topk_weights, DType::f32, k));
          KernelOptions opt;
          opt.backend = Backend::cuda;
          opt.communicator = comm.get();
          opt.use_monolithic = c.monolithic;
          const FusedMoEKernel kernel = make_kernel(g.config, g.weights.weights, opt);
          if (calls[r]) {
            Buffer ws = Buffer::empty(DType::u8, {int64_t(kernel.workspace_bytes(rows))}, dev);
            FMOE_CHECK(cudaMemsetAsync(ws.view().data(), 0xff, ws.nbytes(), s) == cudaSuccess, "memset");
            std::vector<Buffer> outs;  // poisoned first, so that the calls run back to back
            for (int i = 0; i < c.calls; ++i) outs.push_back(copy_to(poisoned_bf16(rows, K), dev));
            for (int i = 0; i < c.calls; ++i) {
              if (c.route_on_gpu || c.monolithic)
                kernel.forward(g.hidden, g.logits, outs[size_t(i)], ws.view());
              else
                kernel.apply(g.hidden, g.ids, g.topk_weights, outs[size_t(i)], ws.view());
            }
            if (c.graph) {  // the replays go on counting calls: the window parities alternate as well
              outs.push_back(copy_to(poisoned_bf16(rows, K), dev));
              cudaGraph_t graph = nullptr;
              cudaGraphExec_t exec = nullptr;
              FMOE_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) == cudaSuccess, "capture");
              if (c.route_on_gpu || c.monolithic)
                kernel.forward(g.hidden, g.logits, outs.back(), ws.view());
              else
                kernel.apply(g.hidden, g.ids, g.topk_weights, outs.back(), ws.view());
              FMOE_CHECK(cudaStreamEndCapture(s, &graph) == cudaSuccess, "end capture");
              FMOE_CHECK(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess, "instantiate");
              for (int i = 0; i < 3; ++i) FMOE_CHECK(cudaGraphLaunch(exec, s) == cudaSuccess, "graph launch");
              comm->barrier();
              cudaGraphExecDestroy(exec);
              cudaGraphDestroy(graph);
            }
            comm->barrier();  // waits for the stream within the timeout
            const Buffer first = copy_to(outs[0], Device::cpu());
            int differing = 0;
            for (size_t i = 1; i < outs.size(); ++i) differing += !bits_equal(first, copy_to(outs[i], Device::cpu()));
            if (differing) {
              const std::lock_guard<std::mutex> lock(run_mutex);
              run.differing_calls += differing;
            }
            std::memcpy(run.out.data_as<bfloat16>() + begin * K, first.view().data(), first.nbytes());
          }
        }
        cudaStreamDestroy(s);
      } catch (const std::exception& e) {
        run.errors[r] = e.what();
      }
    });
    begin += rows;
  }
  for (std::thread& t : threads) t.join();
  return run;
}

// Runs case c on n GPUs and checks the ranks' outputs together against the whole layer.
void expect_ranks_match_whole_layer(const EpGpuCase& c, int n, uint64_t seed) {
  EpGpuCase run_case = c;
  run_case.tokens.resize(static_cast<size_t>(n), 3);
  int64_t M = 0;
  for (int r = 0; r < n; ++r) M += run_case.tokens[r];
  MoEConfig cfg = small_config(c.quant, c.experts, /*K=*/256, /*I=*/256, c.top_k);
  cfg.routing.method = c.route_on_gpu || c.monolithic ? c.routing : RoutingMethod::precomputed;
  if (cfg.routing.method == RoutingMethod::deepseek_v3) cfg.routing.num_expert_group = 4, cfg.routing.topk_group = 2;
  Problem p = make_problem(cfg, M, seed);
  if (c.all_on_last_rank) {  // ids among the last rank's experts only
    const std::vector<int32_t> last = testing::experts_of_map(contiguous_expert_map(c.experts, n - 1, n));
    for (int64_t i = 0; i < p.ids.view().numel(); ++i)
      p.ids.data_as<int32_t>()[i] = last[size_t(i) % last.size()];
  }
  const int64_t T = *std::max_element(run_case.tokens.begin(), run_case.tokens.end());
  const RankRun run = run_on_gpus(p, run_case, n, std::max<int64_t>(T, 1), std::vector<bool>(size_t(n), true));
  for (int r = 0; r < n; ++r) ASSERT_EQ(run.errors[r], "") << "rank " << r;
  EXPECT_EQ(run.differing_calls, 0) << "repeated calls (or graph replays) differ from their rank's first call";
  expect_matches_reference(p, run.out, p.ids, p.topk_weights);
}

class CudaEp : public ::testing::TestWithParam<EpGpuCase> {};

TEST_P(CudaEp, RanksTogetherMatchTheWholeLayer) {
  const int n = std::min(hopper_gpus(), 8);
  if (n < 2) GTEST_SKIP() << "needs 2 Hopper GPUs, found " << n;
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  expect_ranks_match_whole_layer(GetParam(), n, seed);
}

// Every routing method, routed on the GPU, through the modular all-to-all (bf16) and all-gather
// (fp8-block) PrepareFinalize and the monolithic experts (fp8-block), with a rank that has no tokens.
TEST(CudaEpEveryMethod, RanksTogetherMatchTheWholeLayer) {
  const int n = std::min(hopper_gpus(), 8);
  if (n < 2) GTEST_SKIP() << "needs 2 Hopper GPUs, found " << n;
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  for (RoutingMethod m : {RoutingMethod::softmax_topk, RoutingMethod::topk_softmax,
                          RoutingMethod::softmax_topk_renormalize, RoutingMethod::deepseek_v3, RoutingMethod::llama4,
                          RoutingMethod::sigmoid_topk, RoutingMethod::sigmoid_topk_renormalize}) {
    for (int kind = 0; kind < 3; ++kind) {
      SCOPED_TRACE(std::string(routing_method_name(m)) + (kind == 0 ? " all-to-all" : kind == 1 ? " all-gather"
                                                                                                  : " monolithic"));
      EpGpuCase c{"every_method", kind == 0 ? QuantScheme::bf16 : QuantScheme::fp8_block,
                  kind == 1 ? EpDispatch::all_gather : EpDispatch::all_to_all, 16, {9, 0, 14, 5}};
      c.route_on_gpu = true;
      c.monolithic = kind == 2;
      c.routing = m;
      c.top_k = m == RoutingMethod::llama4 ? 1 : 3;
      expect_ranks_match_whole_layer(c, n, seed);
    }
  }
}

// A call captured in a CUDA graph and replayed three times gives the direct call's bits: the
// peer-window all-to-all (bf16; fp8 batched), the same over NCCL, and the monolithic all-gather.
TEST(CudaEpGraph, ReplaysEqualTheDirectCall) {
  const int n = std::min(hopper_gpus(), 8);
  if (n < 2) GTEST_SKIP() << "needs 2 Hopper GPUs, found " << n;
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  EpGpuCase bf16{"graph_bf16", QuantScheme::bf16, EpDispatch::all_to_all, 9, {37, 5, 11, 2}};
  EpGpuCase batched{"graph_fp8_batched", QuantScheme::fp8_block, EpDispatch::all_to_all, 9, {0, 19, 4, 7}};
  batched.batched = true;
  EpGpuCase monolithic{"graph_monolithic", QuantScheme::bf16, EpDispatch::all_to_all, 9, {11, 0, 5, 20}};
  monolithic.monolithic = true;
  for (EpGpuCase* c : {&bf16, &batched, &monolithic}) {
    c->graph = true;
    SCOPED_TRACE(c->name);
    expect_ranks_match_whole_layer(*c, n, seed);
  }
  const ScopedEnv nccl("FUSEDMOE_EP_PEER_WINDOW", "0");
  SCOPED_TRACE("over NCCL");
  expect_ranks_match_whole_layer(bf16, n, seed);
}

// The all-to-all with NCCL carrying the exchange instead of peer-window stores
// (FUSEDMOE_EP_PEER_WINDOW=0): the same answers.
TEST(CudaEpOverNccl, RanksTogetherMatchTheWholeLayer) {
  const int n = std::min(hopper_gpus(), 8);
  if (n < 2) GTEST_SKIP() << "needs 2 Hopper GPUs, found " << n;
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  const ScopedEnv nccl("FUSEDMOE_EP_PEER_WINDOW", "0");
  EpGpuCase bf16{"nccl_bf16", QuantScheme::bf16, EpDispatch::all_to_all, 9, {37, 5, 11, 2}};
  EpGpuCase fp8{"nccl_fp8", QuantScheme::fp8_block, EpDispatch::all_to_all, 9, {0, 19, 4, 7}};
  EpGpuCase batched = fp8;
  batched.batched = true;
  for (const EpGpuCase& c : {bf16, fp8, batched}) {
    SCOPED_TRACE(c.name);
    expect_ranks_match_whole_layer(c, n, seed);
  }
}

// Stress (bug catalogue B.2 #16: peer projects saw a few percent of calls with a corrupted row): 100 calls back
// to back on each rank's stream, no host synchronisation between them, every output bit-equal to the first call
// and the first equal to the whole layer. Peer-window stores and NCCL; bf16 with uneven counts and a rank with
// none, fp8-block with every token on the last rank's experts (each rank at its capacity).
TEST(CudaEpStress, HundredCallsGiveTheFirstCallsBits) {
  const int n = std::min(hopper_gpus(), 8);
  if (n < 2) GTEST_SKIP() << "needs 2 Hopper GPUs, found " << n;
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  EpGpuCase uneven{"stress_bf16_uneven", QuantScheme::bf16, EpDispatch::all_to_all, 9, {37, 0, 11, 2}};
  EpGpuCase skewed{"stress_fp8_all_on_last_rank", QuantScheme::fp8_block, EpDispatch::all_to_all, 10,
                   {16, 16, 16, 16}, true};
  for (bool peer_window : {true, false}) {
    const ScopedEnv transport("FUSEDMOE_EP_PEER_WINDOW", peer_window ? "1" : "0");
    for (EpGpuCase* c : {&uneven, &skewed}) {
      c->calls = 100;
      SCOPED_TRACE(std::string(c->name) + (peer_window ? " peer window" : " over NCCL"));
      expect_ranks_match_whole_layer(*c, n, seed);
    }
  }
}

// Per-rank buffers past 2^31 elements (bug catalogue B.2 #7): 70,000 tokens a rank, every token on all 8 experts,
// so each of 2 ranks receives 560,000 rows of K = 4096 and its GEMM1 writes as many rows of 2I = 4096; over the peer
// window and NCCL. Checked against the reference on each rank's first, middle and last token.
TEST(CudaEpLarge, MoreThan2To31ElementsPerRankBuffer) {
  const int n = std::min(hopper_gpus(), 2);
  if (n < 2) GTEST_SKIP() << "needs 2 Hopper GPUs, found " << n;
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  const int64_t T = 70000, K = 4096, E = 8;
  MoEConfig cfg = small_config(QuantScheme::bf16, E, K, 2048, /*top_k=*/8);
  cfg.routing.method = RoutingMethod::precomputed;
  ASSERT_GT(n * T * (E / n) * K, int64_t(1) << 31);
  Problem p = make_problem(cfg, n * T, seed);
  for (int64_t i = 0; i < n * T * E; ++i) p.ids.data_as<int32_t>()[i] = static_cast<int32_t>(i % E);  // all 8
  EpGpuCase c{"large", QuantScheme::bf16, EpDispatch::all_to_all, E, std::vector<int64_t>(size_t(n), T)};
  c.calls = 1;
  for (bool peer_window : {true, false}) {
    SCOPED_TRACE(peer_window ? "peer window" : "over NCCL");
    const ScopedEnv transport("FUSEDMOE_EP_PEER_WINDOW", peer_window ? "1" : "0");
    const RankRun run = run_on_gpus(p, c, n, T, std::vector<bool>(size_t(n), true));
    for (int r = 0; r < n; ++r) ASSERT_EQ(run.errors[size_t(r)], "") << "rank " << r;
    for (int r = 0; r < n; ++r)
      for (int64_t t : {r * T, r * T + T / 2, r * T + T - 1}) {
        SCOPED_TRACE("token " + std::to_string(t));
        const auto row = [t](const Buffer& b, DType dt, int64_t cols) {
          return Tensor(const_cast<uint8_t*>(b.data_as<uint8_t>()) + t * cols * int64_t(dtype_size(dt)), dt,
                        {1, cols});
        };
        expect_matches_reference(p, row(p.hidden, DType::bf16, K), row(run.out, DType::bf16, K),
                                 row(p.ids, DType::i32, 8), row(p.topk_weights, DType::f32, 8));
      }
  }
}

// A rank that never joins a call: the peer-window all-to-all's signal wait on the other rank gives up after the
// communicator's timeout (3 s here), prints who waited for whom and traps, so the process fails instead of
// hanging (bug catalogue B.3 #19). The trap loses that GPU's context, so the ranks run in a child process (a
// death test, re-executed rather than forked: the parent has touched CUDA).
TEST(CudaEpDeathTest, AMissingRankTrapsAfterTheTimeoutInsteadOfHanging) {
  const int n = std::min(hopper_gpus(), 8);
  if (n < 2) GTEST_SKIP() << "needs 2 Hopper GPUs, found " << n;
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const ScopedEnv timeout("FUSEDMOE_TEST_NCCL_TIMEOUT_S", "3");
  const ScopedEnv window("FUSEDMOE_EP_PEER_WINDOW", "1");
  const auto start = std::chrono::steady_clock::now();
  const auto ranks_with_one_missing = [n] {
    dup2(2, 1);  // the device's printf goes to stdout; a death test reads stderr
    EpGpuCase c{"missing_rank", QuantScheme::bf16, EpDispatch::all_to_all, 8, std::vector<int64_t>(size_t(n), 4)};
    MoEConfig cfg = small_config(QuantScheme::bf16, 8, 256, 256, 2);
    cfg.routing.method = RoutingMethod::precomputed;
    const Problem p = make_problem(cfg, 4 * n, 1);
    std::vector<bool> calls(size_t(n), true);
    calls[size_t(n - 1)] = false;
    const RankRun run = run_on_gpus(p, c, n, 4, calls);
    for (int r = 0; r < n; ++r) std::fprintf(stderr, "rank %d: %s\n", r, run.errors[size_t(r)].c_str());
    std::fflush(nullptr);
    std::_Exit(3);
  };
  EXPECT_EXIT(ranks_with_one_missing(), ::testing::ExitedWithCode(3), "waited 3.0 s for rank");
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(120));
}

INSTANTIATE_TEST_SUITE_P(
    Cases, CudaEp,
    ::testing::Values(
        EpGpuCase{"bf16_a2a_uneven", QuantScheme::bf16, EpDispatch::all_to_all, 9, {37, 5, 11, 2}},
        EpGpuCase{"fp8_a2a_rank0_empty", QuantScheme::fp8_block, EpDispatch::all_to_all, 9, {0, 19, 4, 7}},
        EpGpuCase{"bf16_a2a_all_on_last_rank", QuantScheme::bf16, EpDispatch::all_to_all, 10, {16, 16, 16, 16}, true},
        EpGpuCase{"fp8_a2a_routed_on_gpu", QuantScheme::fp8_block, EpDispatch::all_to_all, 12, {24, 9, 1, 30}, false,
                  true},
        EpGpuCase{"bf16_allgather_uneven", QuantScheme::bf16, EpDispatch::all_gather, 9, {7, 30, 0, 12}},
        EpGpuCase{"fp8_allgather_routed_on_gpu", QuantScheme::fp8_block, EpDispatch::all_gather, 10, {5, 0, 9, 3},
                  false, true},
        EpGpuCase{"fp8_a2a_deepseek_routing", QuantScheme::fp8_block, EpDispatch::all_to_all, 16, {13, 6, 0, 9},
                  false, true, false, RoutingMethod::deepseek_v3},
        EpGpuCase{"bf16_monolithic_uneven", QuantScheme::bf16, EpDispatch::all_to_all, 9, {11, 0, 5, 20}, false,
                  false, true},
        EpGpuCase{"fp8_monolithic_sigmoid", QuantScheme::fp8_block, EpDispatch::all_gather, 12, {3, 17, 8, 0}, false,
                  false, true, RoutingMethod::sigmoid_topk_renormalize},
        EpGpuCase{"bf16_counts_checked_on_all_ranks", QuantScheme::bf16, EpDispatch::all_to_all, 8, {6, 0, 13, 2},
                  false, false, false, RoutingMethod::softmax_topk_renormalize, /*check_all_ranks=*/true},
        EpGpuCase{"bf16_monolithic_counts_checked", QuantScheme::bf16, EpDispatch::all_to_all, 8, {5, 9, 1, 4},
                  false, false, true, RoutingMethod::softmax_topk_renormalize, /*check_all_ranks=*/true},
        EpGpuCase{"fp8_a2a_batched_rank0_empty", QuantScheme::fp8_block, EpDispatch::all_to_all, 9, {0, 19, 4, 7},
                  false, false, false, RoutingMethod::softmax_topk_renormalize, false, /*batched=*/true},
        EpGpuCase{"bf16_a2a_batched_all_on_last_rank", QuantScheme::bf16, EpDispatch::all_to_all, 10,
                  {16, 16, 16, 16}, true, false, false, RoutingMethod::softmax_topk_renormalize, false, true},
        EpGpuCase{"mxfp4_allgather_batched_routed_on_gpu", QuantScheme::mxfp4, EpDispatch::all_gather, 12,
                  {24, 9, 1, 30}, false, true, false, RoutingMethod::softmax_topk_renormalize, false, true},
        EpGpuCase{"fp8_a2a_batched_deepseek_routing", QuantScheme::fp8_block, EpDispatch::all_to_all, 16,
                  {13, 6, 0, 9}, false, true, false, RoutingMethod::deepseek_v3, false, true},
        EpGpuCase{"fp8_tensor_a2a_uneven", QuantScheme::fp8_per_tensor, EpDispatch::all_to_all, 9, {7, 30, 0, 12}},
        EpGpuCase{"fp8_channel_allgather_batched", QuantScheme::fp8_per_channel, EpDispatch::all_gather, 12,
                  {24, 9, 1, 30}, false, true, false, RoutingMethod::softmax_topk_renormalize, false, true}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(CudaEpErrors, OverCapacityFailsOnTheRankBeforeItCommunicates) {
  const int n = std::min(hopper_gpus(), 8);
  if (n < 2) GTEST_SKIP() << "needs 2 Hopper GPUs, found " << n;
  EpGpuCase c{"over", QuantScheme::bf16, EpDispatch::all_to_all, 8, std::vector<int64_t>(size_t(n), 4)};
  c.tokens[0] = 9;  // over max_tokens_per_rank = 8
  MoEConfig cfg = small_config(QuantScheme::bf16, 8, 256, 256, 2);
  cfg.routing.method = RoutingMethod::precomputed;
  int64_t M = 0;
  for (int64_t t : c.tokens) M += t;
  const Problem p = make_problem(cfg, M, test_seed());
  std::vector<bool> calls(size_t(n), false);
  calls[0] = true;  // only the offending rank calls: it must fail at once, not wait for the others
  const RankRun run = run_on_gpus(p, c, n, 8, calls);
  EXPECT_NE(run.errors[0].find("over parallel.max_tokens_per_rank=8"), std::string::npos) << run.errors[0];
  for (int64_t i = 0; i < 9 * 256; ++i) ASSERT_TRUE(std::isnan(bf16_to_float(run.out.data_as<bfloat16>()[i])));
}

// With parallel.capacity_check_all_ranks every rank calls, all fail with the same message naming the
// offending rank, and no rank writes its output; modular and monolithic.
// Ranks built with different capacities fail alike at construction instead of posting collectives of
// different sizes (DeepEP #208 hangs there), over NCCL as over the in-process group (test_ep.cpp).
TEST(CudaEpErrors, RanksBuiltWithDifferentCapacitiesFailAlikeAtConstruction) {
  const int n = std::min(hopper_gpus(), 8);
  if (n < 2) GTEST_SKIP() << "needs 2 Hopper GPUs, found " << n;
  for (EpDispatch dispatch : {EpDispatch::all_to_all, EpDispatch::all_gather}) {
    SCOPED_TRACE(dispatch == EpDispatch::all_to_all ? "all-to-all" : "all-gather");
    EpGpuCase c{"disagree", QuantScheme::bf16, dispatch, 8, std::vector<int64_t>(size_t(n), 4)};
    c.last_rank_capacity = 16;
    MoEConfig cfg = small_config(QuantScheme::bf16, 8, 256, 256, 2);
    cfg.routing.method = RoutingMethod::precomputed;
    const Problem p = make_problem(cfg, 4 * n, test_seed());
    const RankRun run = run_on_gpus(p, c, n, 8, std::vector<bool>(size_t(n), true));
    const std::string expected = "parallel.max_tokens_per_rank is 8 on rank 0 and 16 on rank " + std::to_string(n - 1);
    for (int r = 0; r < n; ++r)
      EXPECT_NE(run.errors[r].find(expected), std::string::npos) << "rank " << r << ": " << run.errors[r];
    for (int64_t i = 0; i < 4 * n * 256; ++i)
      ASSERT_TRUE(std::isnan(bf16_to_float(run.out.data_as<bfloat16>()[i])));
  }
}

TEST(CudaEpErrors, OverCapacityCheckedOnAllRanksFailsEveryRankAlike) {
  const int n = std::min(hopper_gpus(), 8);
  if (n < 2) GTEST_SKIP() << "needs 2 Hopper GPUs, found " << n;
  for (bool monolithic : {false, true}) {
    SCOPED_TRACE(monolithic ? "monolithic" : "modular");
    EpGpuCase c{"over_all", QuantScheme::bf16, EpDispatch::all_to_all, 8, std::vector<int64_t>(size_t(n), 4)};
    c.tokens[n - 1] = 11;  // over max_tokens_per_rank = 8, on the last rank
    c.monolithic = monolithic;
    c.check_all_ranks = true;
    MoEConfig cfg = small_config(QuantScheme::bf16, 8, 256, 256, 2);
    if (!monolithic) cfg.routing.method = RoutingMethod::precomputed;
    int64_t M = 0;
    for (int64_t t : c.tokens) M += t;
    const Problem p = make_problem(cfg, M, test_seed());
    const RankRun run = run_on_gpus(p, c, n, 8, std::vector<bool>(size_t(n), true));
    const std::string expected =
        "rank " + std::to_string(n - 1) + " passed 11 tokens, over parallel.max_tokens_per_rank=8";
    for (int r = 0; r < n; ++r)
      EXPECT_NE(run.errors[r].find(expected), std::string::npos) << "rank " << r << ": " << run.errors[r];
    for (int64_t i = 0; i < M * 256; ++i) ASSERT_TRUE(std::isnan(bf16_to_float(run.out.data_as<bfloat16>()[i])));
  }
}

// The batched format on the GPU needs room for every token any rank may send: construction with
// max_tokens_per_expert below ranks x max_tokens_per_rank fails on every rank, naming both.
TEST(CudaEpErrors, BatchedCapacityBelowRanksTimesTokensFailsAtConstruction) {
  const int n = std::min(hopper_gpus(), 8);
  if (n < 2) GTEST_SKIP() << "needs 2 Hopper GPUs, found " << n;
  EpGpuCase c{"batched_small", QuantScheme::bf16, EpDispatch::all_to_all, 8, std::vector<int64_t>(size_t(n), 4)};
  c.batched = true;
  c.batch_capacity = n * 8 - 1;
  MoEConfig cfg = small_config(QuantScheme::bf16, 8, 256, 256, 2);
  cfg.routing.method = RoutingMethod::precomputed;
  const Problem p = make_problem(cfg, 4 * n, test_seed());
  const RankRun run = run_on_gpus(p, c, n, 8, std::vector<bool>(size_t(n), true));
  for (int r = 0; r < n; ++r)
    EXPECT_NE(run.errors[r].find("max_tokens_per_expert >= ranks x parallel.max_tokens_per_rank"), std::string::npos)
        << "rank " << r << ": " << run.errors[r];
}

}  // namespace
}  // namespace fusedmoe::test
