// See ep_bench.h. Every rank runs the stages itself (prepare, experts, finalize) so the
// dispatch and combine can be timed apart; barriers start each iteration and each combine on
// all ranks together (on the CPU the ranks' expert work shares one thread pool), and the
// slowest rank's time counts. The raw all_to_all_v baseline replays the same
// per-pair byte counts (dispatch records one way, f32 partial rows back).
#include "bench/ep_bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <mutex>
#include <thread>

#include "fusedmoe/fusedmoe.h"
#include "testing/synthetic.h"

namespace fusedmoe::bench {
namespace {

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

struct Timing {
  double layer = 0, dispatch = 0, combine = 0, raw = 0;
  double dispatch_bytes = 0, combine_bytes = 0;  // summed over ranks
  double max_error = 0;
  bool ok = true;
};

// Bytes rank r sends to each rank in the dispatch: one record per (token, destination rank).
std::vector<int64_t> dispatch_records(const MoEConfig& c, const Tensor& ids, const std::vector<int>& owner, int n) {
  std::vector<int64_t> records(static_cast<size_t>(n), 0);
  const int64_t M = ids.size(0), k = ids.size(1);
  for (int64_t t = 0; t < M; ++t) {
    uint64_t sent = 0;
    for (int64_t j = 0; j < k; ++j) {
      const int32_t e = ids.data_as<const int32_t>()[t * k + j];
      if (e < 0 || e >= c.num_experts || ((sent >> owner[e]) & 1u)) continue;
      sent |= uint64_t(1) << owner[e];
      ++records[owner[e]];
    }
  }
  return records;
}

}  // namespace

int run_ep_bench(const MoEConfig& base, const ExpertWeights& full, const EpBenchOptions& o) {
  const int n = o.ranks;
  const int64_t E = base.num_experts, K = base.hidden_size, k = base.routing.top_k;
  const int64_t T = *std::max_element(o.tokens_per_rank.begin(), o.tokens_per_rank.end());
  std::vector<int> owner(static_cast<size_t>(E));
  std::vector<Buffer> maps;
  for (int r = 0; r < n; ++r) {
    maps.push_back(contiguous_expert_map(E, r, n));
    for (int64_t e = 0; e < E; ++e)
      if (maps[r].data_as<const int32_t>()[e] >= 0) owner[e] = r;
  }
  const int64_t G = activation_scale_cols(base.quant, K);
  const int64_t record = K * (scheme_quantizes_activations(base.quant) ? 1 : 2) + 4 * G + 8 * k;
  std::printf("fusedmoe-bench --ep %d: in-process ranks (threads), CPU backend, all-to-all PrepareFinalize, %s format, "
              "contiguous placement; times are the slowest rank's, per call\n",
              n, base.activation_format == ActivationFormat::batched ? "batched" : "standard");
  std::printf("%8s %10s %12s %12s %12s %12s %8s %10s %8s\n", "tok/rank", "layer_ms", "dispatch_ms", "combine_ms",
              "raw_a2a_ms", "(d+c)/raw", "GB/s", "max_err", "check");
  bool all_ok = true;
  for (int64_t M : o.tokens_per_rank) {
    auto group = make_in_process_group(n, 120.0);
    std::vector<Timing> per_rank(static_cast<size_t>(n));
    std::vector<std::thread> threads;
    for (int r = 0; r < n; ++r)
      threads.emplace_back([&, r] {
        Timing& tm = per_rank[r];
        const Communicator& comm = *group[r];
        MoEConfig c = base;
        c.parallel.ep_size = n;
        c.parallel.ep_rank = r;
        c.parallel.expert_map = maps[r].view();
        c.parallel.max_tokens_per_rank = T;
        if (c.activation_format == ActivationFormat::batched) c.max_tokens_per_expert = n * T;
        const OwnedExpertWeights shard =
            testing::slice_experts(full, E, testing::experts_of_map(maps[r].view()));
        const auto pf = make_prepare_finalize(c, &comm, false, Backend::cpu);
        const auto ex = make_experts(c, shard.weights, Backend::cpu, false);
        const auto& mpf = static_cast<const ModularPrepareFinalize&>(*pf);
        const auto& mex = static_cast<const ModularExperts&>(*ex);
        const Buffer hidden = testing::random_bf16({M, K}, o.seed * 1009 + r * 131 + M);
        const Buffer logits = testing::random_f32({M, E}, o.seed * 2003 + r * 17 + M, 2.0f);
        const Buffer ids = Buffer::empty(DType::i32, {M, k}), w = Buffer::empty(DType::f32, {M, k});
        if (M > 0) route(c.routing, logits, ids, w);
        const Buffer out = Buffer::empty(DType::bf16, {M, K});
        const Buffer ws = Buffer::bytes(pf->workspace_bytes(M) + ex->workspace_bytes(pf->max_prepared_tokens(M)));
        const int iters = 5;
        for (int it = -1; it < iters; ++it) {  // one warm-up
          Workspace space(ws);
          comm.barrier();
          const double t0 = now_s();
          const PreparedActivations p = mpf.prepare(hidden, ids, w, mex.static_input_scale(), false, space);
          const double t1 = now_s();
          const ExpertsOutput y = mex.apply(p, space);
          comm.barrier();  // the combine starts when every rank's experts are done
          const double t2 = now_s();
          mpf.finalize(y, p, out, space);
          const double t3 = now_s();
          if (it >= 0) {
            tm.dispatch += (t1 - t0) / iters;
            tm.combine += (t3 - t2) / iters;
            tm.layer += (t3 - t0) / iters;
          }
        }
        // Raw all_to_all_v with the same pairwise bytes: records out, f32 rows back.
        const std::vector<int64_t> to = dispatch_records(c, ids, owner, n);
        std::vector<int64_t> matrix(static_cast<size_t>(n * n));
        comm.all_gather(to.data(), matrix.data(), sizeof(int64_t) * n);
        std::vector<size_t> sb(static_cast<size_t>(n)), so(static_cast<size_t>(n)), rb(static_cast<size_t>(n)),
            ro(static_cast<size_t>(n)), sb2(static_cast<size_t>(n)), so2(static_cast<size_t>(n)),
            rb2(static_cast<size_t>(n)), ro2(static_cast<size_t>(n));
        size_t s_off = 0, r_off = 0, s2 = 0, r2 = 0;
        for (int p = 0; p < n; ++p) {
          const int64_t from_p = matrix[p * n + r];
          sb[p] = size_t(to[p] * record), so[p] = s_off, s_off += sb[p];
          rb[p] = size_t(from_p * record), ro[p] = r_off, r_off += rb[p];
          sb2[p] = size_t(from_p * K * 4), so2[p] = s2, s2 += sb2[p];
          rb2[p] = size_t(to[p] * K * 4), ro2[p] = r2, r2 += rb2[p];
          if (p != r) tm.dispatch_bytes += double(sb[p]), tm.combine_bytes += double(sb2[p]);
        }
        std::vector<uint8_t> send(std::max(s_off, s2) + 1), recv(std::max(r_off, r2) + 1);
        for (int it = -1; it < iters; ++it) {
          comm.barrier();
          const double t0 = now_s();
          comm.all_to_all_v(send.data(), sb.data(), so.data(), recv.data(), rb.data(), ro.data());
          comm.all_to_all_v(send.data(), sb2.data(), so2.data(), recv.data(), rb2.data(), ro2.data());
          if (it >= 0) tm.raw += (now_s() - t0) / iters;
        }
        // Reference check of up to 2 tokens of this rank.
        if (M > 0) {
          const std::vector<int64_t> sample = {0, M - 1};
          const std::vector<double> ref = reference_moe(base, full, hidden, ids, w, sample);
          const Tolerance tol = tolerance_for(base.quant);
          double ref_max = 0.0;
          for (double v : ref) ref_max = std::max(ref_max, std::fabs(v));
          for (size_t s = 0; s < sample.size(); ++s)
            for (int64_t i = 0; i < K; ++i) {
              const double rv = ref[s * K + i], ov = bf16_to_float(out.data_as<const bfloat16>()[sample[s] * K + i]);
              tm.max_error = std::max(tm.max_error, std::fabs(ov - rv) / std::max(ref_max, 1e-30));
              if (!(std::fabs(ov - rv) <= tol.atol * ref_max + tol.rtol * std::fabs(rv))) tm.ok = false;
            }
        }
      });
    for (std::thread& t : threads) t.join();
    Timing worst;
    for (const Timing& t : per_rank) {
      worst.layer = std::max(worst.layer, t.layer), worst.dispatch = std::max(worst.dispatch, t.dispatch);
      worst.combine = std::max(worst.combine, t.combine), worst.raw = std::max(worst.raw, t.raw);
      worst.dispatch_bytes += t.dispatch_bytes, worst.combine_bytes += t.combine_bytes;
      worst.max_error = std::max(worst.max_error, t.max_error);
      worst.ok = worst.ok && t.ok;
    }
    all_ok = all_ok && worst.ok;
    const double moved = worst.dispatch_bytes + worst.combine_bytes;
    std::printf("%8lld %10.3f %12.3f %12.3f %12.3f %12.2f %8.2f %10.2e %8s\n", static_cast<long long>(M),
                worst.layer * 1e3, worst.dispatch * 1e3, worst.combine * 1e3, worst.raw * 1e3,
                (worst.dispatch + worst.combine) / std::max(worst.raw, 1e-12),
                moved / std::max(worst.dispatch + worst.combine, 1e-12) / 1e9, worst.max_error,
                worst.ok ? "ok" : "FAIL");
  }
  std::printf("dispatch/combine include quantization and the partial-sum reduce; raw_a2a moves the same bytes "
              "between the same ranks with the communicator alone; GB/s counts bytes that cross ranks\n");
  return all_ok ? 0 : 1;
}

}  // namespace fusedmoe::bench
