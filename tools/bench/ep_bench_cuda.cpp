// See ep_bench_cuda.h. One process per GPU (fork before any CUDA call); rank 0 makes the
// ncclUniqueId and hands it to the others through a pipe. Each rank builds the stages itself
// (CUDA experts on its contiguous block of experts, the EP PrepareFinalize), captures each into
// a CUDA graph and times dispatch (prepare), combine (finalize) and the whole layer with CUDA
// events; a barrier starts every timed sample (kChain launches back to back) on all ranks
// together and the slowest rank's time counts. The weights are filled with a constant byte
// pattern on the device (timing only: correctness is tests/test_cuda_ep).
// The baseline is NCCL's all-to-all (the communicator's all_to_all_v: grouped ncclSend/Recv)
// moving the same bytes per pair of ranks as the dispatch slabs and the combine rows (none from a
// rank to itself, as in the PrepareFinalize).
#include "bench/ep_bench_cuda.h"

#include <cuda_runtime.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "core/weight_layout.h"
#include "cuda/kernels/kernels.h"
#include "fusedmoe/fusedmoe.h"
#include "fusedmoe/nccl.h"

namespace fusedmoe::bench {
namespace {

#define BENCH_CUDA(expr)                                                                        \
  do {                                                                                          \
    const cudaError_t e_ = (expr);                                                              \
    FMOE_CHECK(e_ == cudaSuccess, #expr, " failed: ", cudaGetErrorString(e_));                  \
  } while (0)

// Each timed sample launches its graphs kChain times back to back and counts the mean: the ranks
// then keep in step through the exchanges themselves, as in a model's forward, and the skew of the
// host barrier that starts a sample is spread over kChain launches instead of landing on one.
constexpr int kWarmup = 5, kReps = 30, kChain = 10;

// Median of the per-repetition maxima over ranks.
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

class Timer {
 public:
  explicit Timer(cudaStream_t s) : s_(s) {
    BENCH_CUDA(cudaEventCreate(&a_));
    BENCH_CUDA(cudaEventCreate(&b_));
  }
  ~Timer() {
    cudaEventDestroy(a_);
    cudaEventDestroy(b_);
  }
  void start() { BENCH_CUDA(cudaEventRecord(a_, s_)); }
  double stop_ms() {
    BENCH_CUDA(cudaEventRecord(b_, s_));
    BENCH_CUDA(cudaEventSynchronize(b_));
    float ms = 0;
    BENCH_CUDA(cudaEventElapsedTime(&ms, a_, b_));
    return ms;
  }

 private:
  cudaStream_t s_;
  cudaEvent_t a_{}, b_{};
};

// Random top-k ids, k distinct experts per token, the same on every run.
Buffer random_ids(int64_t M, int k, int64_t E, uint64_t seed) {
  Buffer ids = Buffer::empty(DType::i32, {M, k});
  std::mt19937_64 rng(seed);
  for (int64_t t = 0; t < M; ++t)
    for (int j = 0; j < k; ++j) {
      int32_t e;
      bool dup;
      do {
        e = int32_t(rng() % uint64_t(E));
        dup = false;
        for (int i = 0; i < j; ++i) dup |= ids.data_as<int32_t>()[t * k + i] == e;
      } while (dup);
      ids.data_as<int32_t>()[t * k + j] = e;
    }
  return ids;
}

// Device weights of `local` experts in the config's layout, constant bytes (finite values).
std::vector<Buffer> constant_weights(const MoEConfig& c, int64_t local, Device dev, ExpertWeights& w) {
  std::vector<Buffer> keep;
  for (const WeightTensorSpec& spec : weight_layout(c, local)) {
    if (spec.use != WeightTensorSpec::Use::required) continue;
    Buffer b = Buffer::empty(spec.dtype, std::span<const int64_t>(spec.shape.data(), spec.shape.size()), dev);
    BENCH_CUDA(cudaMemset(b.view().data(), spec.dtype == DType::f32 ? 0x3c : 0x30, b.nbytes()));
    w.*spec.member = b.view();
    keep.push_back(std::move(b));
  }
  return keep;
}

// Captures what `body` enqueues on s into an executable graph.
template <class F>
cudaGraphExec_t capture(cudaStream_t s, F&& body) {
  cudaGraph_t graph;
  BENCH_CUDA(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  body();
  BENCH_CUDA(cudaStreamEndCapture(s, &graph));
  cudaGraphExec_t exec;
  BENCH_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  BENCH_CUDA(cudaGraphDestroy(graph));
  return exec;
}

// One rank: for each token count M (and T = M, as an engine sizes its layer for its batch),
// the stages captured into CUDA graphs (what a decode step replays) and timed:
// {layer, dispatch, combine, raw dispatch, raw combine} ms per repetition; rank 0 prints the
// slowest rank's median.
int run_rank(const MoEConfig& base, const EpCudaBenchOptions& o, int r, const NcclId& id) {
  const int n = o.ranks;
  BENCH_CUDA(cudaSetDevice(r));
  cudaStream_t s;
  BENCH_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  const CudaStreamGuard guard(s);
  const Device dev = Device::cuda(r);
  auto comm = make_nccl_communicator(id, r, n, r, 120.0);
  const int64_t E = base.num_experts, K = base.hidden_size;
  const int k = base.routing.top_k;
  const Buffer map = contiguous_expert_map(E, r, n);
  MoEConfig c = base;
  c.routing = RoutingConfig{};  // the ids are given (precomputed), so no routing parameters
  c.routing.method = RoutingMethod::precomputed;
  c.routing.top_k = k;
  c.parallel.expert_map = map.view();
  c.parallel.ep_size = n;
  c.parallel.ep_rank = r;
  c.parallel.ep_dispatch = o.dispatch;
  ExpertWeights w;
  const std::vector<Buffer> keep = constant_weights(c, c.num_local_experts(), dev, w);
  Timer timer(s);
  for (int64_t M : o.tokens_per_rank) {
    c.parallel.max_tokens_per_rank = M;
    if (c.activation_format == ActivationFormat::batched) c.max_tokens_per_expert = n * M;
    auto pf = make_prepare_finalize(c, comm.get(), false, Backend::cuda);
    auto experts_base = make_experts(c, w, Backend::cuda, false);
    auto* experts = dynamic_cast<ModularExperts*>(experts_base.get());
    auto* mpf = dynamic_cast<ModularPrepareFinalize*>(pf.get());
    FMOE_CHECK(experts && mpf, "the CUDA EP bench needs modular stages");
    if (r == 0 && M == o.tokens_per_rank.front()) {
      std::printf("\nfusedmoe-bench --ep %d --backend cuda: %s, %lld experts (%lld per rank), K=%lld, top-%d, %s, %s "
                  "format\n",
                  n, quant_scheme_name(c.quant), (long long)E, (long long)c.num_local_experts(), (long long)K, k,
                  pf->name().c_str(), c.activation_format == ActivationFormat::batched ? "batched" : "standard");
      std::printf("%8s %10s %12s %12s %14s %14s %10s %12s %12s\n", "tok/rank", "layer_us", "dispatch_us",
                  "combine_us", "nccl_a2a_d_us", "nccl_a2a_c_us", "ratio", "disp_GB/s", "comb_GB/s");
    }
    const Buffer ids_host = random_ids(M, k, E, o.seed * 1000 + uint64_t(r) * 7 + uint64_t(M));
    Buffer weights_host = Buffer::empty(DType::f32, {M, k});
    for (int64_t i = 0; i < M * k; ++i) weights_host.data_as<float>()[i] = 1.0f / float(k);
    const Buffer ids = copy_to(ids_host, dev), tw = copy_to(weights_host, dev);
    Buffer hidden = Buffer::empty(DType::bf16, {M, K}, dev), out = Buffer::empty(DType::bf16, {M, K}, dev);
    BENCH_CUDA(cudaMemset(hidden.view().data(), 0x3c, hidden.nbytes()));
    const int64_t R = pf->max_prepared_tokens(M);
    Buffer ws_buf = Buffer::bytes(pf->workspace_bytes(M) + experts->workspace_bytes(R) + 4096, dev);
    // Raw NCCL baselines: the same per-pair bytes as the slabs (dispatch) and the partial rows (combine).
    const cuda::EpRecord rec = cuda::EpRecord::make(K * (c.quant == QuantScheme::fp8_block ? 1 : 2),
                                                    c.quant == QuantScheme::fp8_block ? K / 128 : 0, k);
    const size_t comb_elem = o.dispatch == EpDispatch::all_to_all ? 2 : 4;  // bf16 partial rows, f32 for all-gather
    const size_t disp_pair = size_t(rec.slab_bytes(M)), comb_pair = size_t(M * K) * comb_elem;
    Buffer raw_send = Buffer::bytes(std::max(disp_pair, comb_pair) * n, dev);
    Buffer raw_recv = Buffer::bytes(std::max(disp_pair, comb_pair) * n, dev);
    // Only the bytes that leave the rank: a rank's own slab and partial rows never go through NCCL in
    // the all-to-all PrepareFinalize, so the baseline does not move them either.
    std::vector<size_t> dbytes(size_t(n), disp_pair), cbytes(size_t(n), comb_pair);
    if (o.dispatch == EpDispatch::all_to_all) dbytes[size_t(r)] = cbytes[size_t(r)] = 0;
    std::vector<size_t> doff(static_cast<size_t>(n)), coff(static_cast<size_t>(n));
    for (int p = 0; p < n; ++p) doff[p] = p * disp_pair, coff[p] = p * comb_pair;

    Workspace ws(ws_buf.view());
    PreparedActivations prepared;
    ExpertsOutput eo;
    cudaGraphExec_t g[5];
    g[0] = capture(s, [&] { prepared = mpf->prepare(hidden.view(), ids.view(), tw.view(), Tensor(), false, ws); });
    g[1] = capture(s, [&] { eo = experts->apply(prepared, ws); });
    g[2] = capture(s, [&] { mpf->finalize(eo, prepared, out.view(), ws); });
    g[3] = capture(s, [&] {
      comm->all_to_all_v(raw_send.view().data(), dbytes.data(), doff.data(), raw_recv.view().data(), dbytes.data(),
                         doff.data());
    });
    g[4] = capture(s, [&] {
      comm->all_to_all_v(raw_send.view().data(), cbytes.data(), coff.data(), raw_recv.view().data(), cbytes.data(),
                         coff.data());
    });
    auto timed = [&](std::initializer_list<cudaGraphExec_t> graphs) {
      comm->barrier();  // every rank starts together
      timer.start();
      for (int i = 0; i < kChain; ++i)
        for (cudaGraphExec_t e : graphs) BENCH_CUDA(cudaGraphLaunch(e, s));
      return timer.stop_ms() / kChain;
    };
    std::vector<double> mine;  // [rep][5]
    for (int rep = 0; rep < kWarmup + kReps; ++rep) {
      double t[5];
      t[0] = timed({g[0], g[1], g[2]});
      t[1] = timed({g[0]});
      BENCH_CUDA(cudaGraphLaunch(g[1], s));  // the experts between, untimed
      t[2] = timed({g[2]});
      t[3] = timed({g[3]});
      t[4] = timed({g[4]});
      if (rep >= kWarmup) mine.insert(mine.end(), t, t + 5);
    }
    for (cudaGraphExec_t e : g) cudaGraphExecDestroy(e);
    // Slowest rank per repetition and stage.
    const int64_t mine_bytes = int64_t(mine.size() * sizeof(double));
    Buffer dmine = copy_to(Tensor(mine.data(), DType::u8, {mine_bytes}), dev);
    Buffer dall = Buffer::empty(DType::u8, {mine_bytes * n}, dev);
    comm->all_gather(dmine.view().data(), dall.view().data(), mine.size() * sizeof(double));
    comm->barrier();
    const Buffer all = copy_to(dall.view(), Device::cpu());
    const double* every = reinterpret_cast<const double*>(all.data_as<const uint8_t>());
    if (r == 0) {
      std::vector<double> stage[5];
      for (int rep = 0; rep < kReps; ++rep)
        for (int i = 0; i < 5; ++i) {
          double m = 0;
          for (int p = 0; p < n; ++p) m = std::max(m, every[p * mine.size() + rep * 5 + i]);
          stage[i].push_back(m * 1e3);
        }
      const double layer = median(stage[0]), disp = median(stage[1]), comb = median(stage[2]);
      const double raw_d = median(stage[3]), raw_c = median(stage[4]);
      const double bytes_d = double(disp_pair) * (n - 1), bytes_c = double(comb_pair) * (n - 1);  // off-rank
      std::printf("%8lld %10.1f %12.1f %12.1f %14.1f %14.1f %10.2f %12.1f %12.1f\n", (long long)M, layer, disp, comb,
                  raw_d, raw_c, (disp + comb) / (raw_d + raw_c), bytes_d / disp * 1e-3, bytes_c / comb * 1e-3);
    }
  }
  if (r == 0)
    std::printf("(CUDA graphs; each time the mean of %d back-to-back launches, median of %d repetitions, slowest "
                "rank each; ratio = (dispatch + combine) / (NCCL all-to-all of the same bytes, dispatch + combine); "
                "GB/s = bytes leaving a rank / time)\n",
                kChain, kReps);
  std::fflush(stdout);
  comm.reset();
  cudaStreamDestroy(s);
  return 0;
}

}  // namespace

int run_ep_bench_cuda(const MoEConfig& config, const EpCudaBenchOptions& o) {
  int gpus = 0;
  {  // count GPUs in a child: the parent must not initialise CUDA before it forks the ranks
    int fds[2];
    FMOE_CHECK(pipe(fds) == 0, "pipe failed");
    const pid_t pid = fork();
    if (pid == 0) {
      int count = 0;
      if (cudaGetDeviceCount(&count) != cudaSuccess) count = 0;
      (void)!write(fds[1], &count, sizeof(count));
      _exit(0);
    }
    FMOE_CHECK(read(fds[0], &gpus, sizeof(gpus)) == sizeof(gpus), "GPU count probe failed");
    waitpid(pid, nullptr, 0);
    close(fds[0]);
    close(fds[1]);
  }
  FMOE_CHECK(gpus >= o.ranks, "--ep ", o.ranks, " --backend cuda needs ", o.ranks, " GPUs, found ", gpus);
  int fds[2];
  FMOE_CHECK(pipe(fds) == 0, "pipe failed");
  std::vector<pid_t> children;
  for (int r = 0; r < o.ranks; ++r) {
    const pid_t pid = fork();
    FMOE_CHECK(pid >= 0, "fork failed");
    if (pid == 0) {
      int rc = 1;
      try {
        NcclId id;
        if (r == 0) {
          id = nccl_unique_id();
          for (int p = 1; p < o.ranks; ++p) (void)!write(fds[1], &id, sizeof(id));
        } else {
          FMOE_CHECK(read(fds[0], &id, sizeof(id)) == sizeof(id), "rank ", r, ": no NCCL id from rank 0");
        }
        rc = run_rank(config, o, r, id);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "rank %d: %s\n", r, e.what());
      }
      std::fflush(stdout);
      _exit(rc);
    }
    children.push_back(pid);
  }
  int failed = 0;
  for (pid_t pid : children) {
    int status = 0;
    waitpid(pid, &status, 0);
    failed += !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  close(fds[0]);
  close(fds[1]);
  return failed ? 1 : 0;
}

}  // namespace fusedmoe::bench
