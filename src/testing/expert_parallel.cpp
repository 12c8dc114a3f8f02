#include "testing/expert_parallel.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <thread>

#include "testing/synthetic.h"

namespace fusedmoe::testing {

EpRunResult run_expert_parallel(const MoEConfig& config, const ExpertWeights& weights, const Tensor& hidden,
                                const Tensor& logits, const Tensor& ids, const Tensor& topk_weights,
                                const EpRunOptions& o) {
  const int n = o.ranks;
  const int64_t K = config.hidden_size, E = config.num_experts, k = config.routing.top_k;
  const int64_t M = hidden.size(0);
  int64_t T = o.max_tokens_per_rank;
  if (T == 0) T = std::max<int64_t>(1, *std::max_element(o.tokens.begin(), o.tokens.end()));
  auto group = make_in_process_group(n, o.timeout_seconds);
  EpRunResult result;
  result.out = Buffer::empty(DType::bf16, {M, K});
  for (int64_t i = 0; i < M * K; ++i) result.out.data_as<bfloat16>()[i] = bfloat16{0x7fc1};
  result.errors.resize(static_cast<size_t>(n));
  std::vector<std::thread> threads;
  int64_t begin = 0;
  for (int r = 0; r < n; ++r) {
    const int64_t rows = o.tokens[r];
    threads.emplace_back([&, r, rows, begin] {
      try {
        const std::vector<int32_t> experts =
            o.placement.empty() ? experts_of_map(contiguous_expert_map(E, r, n)) : o.placement[r];
        const Buffer map = expert_map_of(E, experts);
        const OwnedExpertWeights shard = slice_experts(weights, E, experts);
        MoEConfig c = config;
        c.parallel.expert_map = map.view();
        c.parallel.ep_size = n;
        c.parallel.ep_rank = r;
        c.parallel.max_tokens_per_rank = T;
        c.parallel.ep_dispatch = o.dispatch;
        if (o.adjust_config) o.adjust_config(r, c);
        KernelOptions opt;
        opt.communicator = group[r].get();
        opt.use_monolithic = o.monolithic;
        const FusedMoEKernel kernel = make_kernel(c, shard.weights, opt);
        if (r == o.skip_rank) return;
        const Tensor h(hidden.data_as<bfloat16>() + begin * K, DType::bf16, {rows, K});
        const Tensor out(result.out.data_as<bfloat16>() + begin * K, DType::bf16, {rows, K});
        const auto call = [&](const Tensor& dst) {
          if (config.routing.method == RoutingMethod::precomputed) {
            kernel.apply(h, Tensor(ids.data_as<int32_t>() + begin * k, DType::i32, {rows, k}),
                         Tensor(topk_weights.data_as<float>() + begin * k, DType::f32, {rows, k}), dst);
          } else {
            kernel.forward(h, Tensor(logits.data_as<float>() + begin * E, DType::f32, {rows, E}), dst);
          }
        };
        call(out);
        const Buffer again = Buffer::empty(DType::bf16, {rows, K});
        for (int i = 1; i < o.calls; ++i) {  // the same calls on every rank, so no rank leaves early
          call(again);
          if (result.errors[r].empty() && rows && std::memcmp(again.view().data(), out.data(), out.nbytes()) != 0)
            result.errors[r] = "call " + std::to_string(i) + " differs from the first";
        }
      } catch (const std::exception& e) {
        result.errors[r] = e.what();
      }
    });
    begin += rows;
  }
  for (std::thread& t : threads) t.join();
  return result;
}

}  // namespace fusedmoe::testing
