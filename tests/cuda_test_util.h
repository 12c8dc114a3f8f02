// Helpers of the CUDA suites: GPU presence (tests skip cleanly without one), moving a Problem
// to the device, NaN-poisoned device outputs, and running the CUDA modular kernel.
#pragma once

#include <cuda_runtime.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "cuda/heuristics.h"
#include "test_util.h"

namespace fusedmoe::test {

inline bool have_hopper_gpu() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    cudaGetLastError();
    return false;
  }
  int major = 0, minor = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0);
  return major == 9 && minor == 0;
}

#define FMOE_REQUIRE_GPU() \
  if (!::fusedmoe::test::have_hopper_gpu()) GTEST_SKIP() << "no Hopper (sm_90) GPU on this machine"

inline const Device kGpu = Device::cuda(0);

// Sets an environment variable for its scope (the CUDA switches are read when experts are built) and
// restores the previous value, also when an assertion leaves the test early.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old, had_ = true;
    setenv(name, value, 1);
  }
  ~ScopedEnv() { had_ ? setenv(name_, old_.c_str(), 1) : unsetenv(name_); }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::string old_;
  bool had_ = false;
};

inline Buffer poisoned_bf16_on_gpu(int64_t M, int64_t K) { return copy_to(poisoned_bf16(M, K), kGpu); }

// The problem's inputs and weights on the GPU (the routing bias too).
using GpuProblem = testing::LayerInputs;

inline GpuProblem to_gpu(const Problem& p) {
  return testing::layer_inputs_on(kGpu, p.config, p.weights.weights, p.hidden, p.logits, p.ids, p.topk_weights);
}

inline FusedMoEKernel cuda_kernel(const GpuProblem& g) {
  KernelOptions opt;
  opt.backend = Backend::cuda;
  return make_kernel(g.config, g.weights.weights, opt);
}

// A workspace for M tokens filled with 0xff bytes (NaN as bf16 and f32, -1 as int): an
// intermediate row a kernel forgets to write shows up as NaN in the output.
inline Buffer poisoned_workspace(const FusedMoEKernel& kernel, int64_t M) {
  Buffer ws = Buffer::empty(DType::u8, {static_cast<int64_t>(kernel.workspace_bytes(M))}, kGpu);
  EXPECT_EQ(cudaMemset(ws.view().data(), 0xff, ws.nbytes()), cudaSuccess);
  return ws;
}

// Runs kernel.forward 4 times on one stream, each on the previous forward's output as its hidden states and as its
// bf16 router logits (num_experts == hidden_size), starting from hidden0 [M, K]: once back to back, once with a
// device synchronization after every call. The two chains must match bit for bit — a kernel that reads its inputs
// before its pdl_wait() (launch.cuh) would see a stale output in the first — and each forward must change its input.
inline void expect_chained_forwards_equal_synchronized(const FusedMoEKernel& kernel, const Tensor& hidden0) {
  const int64_t M = hidden0.size(0), K = hidden0.size(1);
  ASSERT_EQ(kernel.config().num_experts, K) << "the output feeds the logits";
  const Buffer ws = poisoned_workspace(kernel, M);
  auto chain = [&](bool sync) {
    std::vector<Buffer> outs;
    outs.push_back(copy_to(hidden0, kGpu));
    for (int i = 0; i < 4; ++i) {  // the outputs shrink to a fixed point after 6 to 8 forwards (H200, session 47)
      outs.push_back(poisoned_bf16_on_gpu(M, K));
      kernel.forward(outs[i], outs[i], outs[i + 1], ws.view());
      if (sync) EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    }
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    std::vector<Buffer> host;
    for (const Buffer& o : outs) host.push_back(copy_to(o, Device::cpu()));
    return host;
  };
  const std::vector<Buffer> synced = chain(true), back_to_back = chain(false);
  for (size_t i = 1; i < synced.size(); ++i) {
    EXPECT_TRUE(bits_equal(synced[i], back_to_back[i])) << "forward " << i << " differs from the synchronized chain";
    EXPECT_FALSE(bits_equal(synced[i], synced[i - 1])) << "the chain stalled at forward " << i;  // it stays live
  }
}

// Runs the CUDA modular kernel with the problem's ids (apply) into a NaN-poisoned output, with a
// poisoned workspace, and returns the output on the host.
inline Buffer run_cuda_apply(const GpuProblem& g, int64_t M) {
  const FusedMoEKernel kernel = cuda_kernel(g);
  Buffer out = poisoned_bf16_on_gpu(M, g.config.hidden_size);
  const Buffer ws = poisoned_workspace(kernel, M);
  kernel.apply(g.hidden, g.ids, g.topk_weights, out, ws.view());
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  return copy_to(out, Device::cpu());
}

// A CUDA graph of what `body` enqueues (as the library's current stream, a fresh non-blocking
// one); replay() launches it and waits.
class CapturedGraph {
 public:
  template <class F>
  explicit CapturedGraph(F&& body) {
    EXPECT_EQ(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), cudaSuccess);
    {
      const CudaStreamGuard guard(stream_);
      EXPECT_EQ(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), cudaSuccess);
      body();
      EXPECT_EQ(cudaStreamEndCapture(stream_, &graph_), cudaSuccess);
    }
    EXPECT_EQ(cudaGraphInstantiate(&exec_, graph_, 0), cudaSuccess);
  }
  ~CapturedGraph() {
    cudaGraphExecDestroy(exec_);
    cudaGraphDestroy(graph_);
    cudaStreamDestroy(stream_);
  }
  CapturedGraph(const CapturedGraph&) = delete;
  CapturedGraph& operator=(const CapturedGraph&) = delete;
  void replay() {
    EXPECT_EQ(cudaGraphLaunch(exec_, stream_), cudaSuccess);
    EXPECT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
  }

 private:
  cudaStream_t stream_{};
  cudaGraph_t graph_{};
  cudaGraphExec_t exec_{};
};

// Every scheme the CUDA backend runs.
inline constexpr QuantScheme kCudaSchemes[] = {QuantScheme::bf16,           QuantScheme::fp8_per_tensor,
                                               QuantScheme::fp8_per_channel, QuantScheme::fp8_block,
                                               QuantScheme::nvfp4,           QuantScheme::mxfp4};

// Every routing method the GPU router runs, and a small config routed by it (llama4 is top-1;
// deepseek-v3 gets 4 groups, top-2 groups).
inline constexpr RoutingMethod kGpuRoutingMethods[] = {
    RoutingMethod::softmax_topk,  RoutingMethod::topk_softmax, RoutingMethod::softmax_topk_renormalize,
    RoutingMethod::deepseek_v3,   RoutingMethod::llama4,       RoutingMethod::sigmoid_topk,
    RoutingMethod::sigmoid_topk_renormalize};

inline MoEConfig routed_config(QuantScheme s, RoutingMethod m) {
  MoEConfig c = small_config(s, 16, 256, 128, m == RoutingMethod::llama4 ? 1 : 4);
  c.routing.method = m;
  if (m == RoutingMethod::deepseek_v3) c.routing.num_expert_group = 4, c.routing.topk_group = 2;
  return c;
}

// Forces the small-M or the grouped-GEMM path for a scope (and, for fp4 weights on the grouped
// path, how many experts are dequantized at a time; 0 keeps the budget's choice; and whether the
// monolithic bf16 experts take the fused decode kernel).
class ForcePath {
 public:
  // gemm_tile_m: the grouped path's CUTLASS tile rows (128 or 64); wgmma_pairs: the bf16 wgmma kernel's pairs;
  // fp4_persistent: the fp4 wgmma kernel's persistent blocks; warp_router: the one-warp router where the block router
  // fits; x_in_place: the bf16 / fp8 wgmma GEMM1 reads its rows where they lie (no gather pass); fp4_split_k_warps: the
  // fp4 split-k blocks' warps, both GEMMs (4 or 8).
  explicit ForcePath(bool small_m, int tile_tokens = 16, int64_t fp4_chunk_experts = 0, bool warp_tiles = false,
                     bool fused_decode = false, int gemm_tile_m = 128, bool wgmma_pairs = false,
                     bool fp4_persistent = false, bool warp_router = false, bool x_in_place = false,
                     int fp4_split_k_warps = 4) {
    cuda::ExpertsPath p;
    p.gemm_tile_m = gemm_tile_m;
    p.gemm2_tile_m = gemm_tile_m;
    p.small_m = small_m;
    p.tile_tokens = tile_tokens;
    p.fp4_chunk_experts = fp4_chunk_experts;
    p.warp_tiles = warp_tiles;
    p.fused_decode = fused_decode;
    p.wgmma_pairs = wgmma_pairs;
    p.fp4_persistent = fp4_persistent;
    p.warp_router = warp_router;
    p.x_in_place = x_in_place;
    p.fp4_split_k_warps1 = p.fp4_split_k_warps2 = fp4_split_k_warps;
    cuda::set_experts_path_override(&p);
  }
  ~ForcePath() { cuda::set_experts_path_override(nullptr); }
};

}  // namespace fusedmoe::test
