// Execution of fuzz cases (see fuzz_runner.h).
#include "fuzz/fuzz_runner.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <sstream>
#include <vector>

#include "testing/expert_parallel.h"
#include "testing/synthetic.h"

namespace fusedmoe::fuzz {
namespace {

uint64_t mix(uint64_t seed, uint64_t stream) { return seed * 0x100000001b3ull ^ (stream * 0x9e3779b97f4a7c15ull); }

// A NaN-poisoned bf16 [M, K] on `device`.
Buffer poisoned(int64_t M, int64_t K, Device device) {
  Buffer host = Buffer::empty(DType::bf16, {M, K});
  for (int64_t i = 0; i < M * K; ++i) host.data_as<bfloat16>()[i] = bfloat16{0x7fc1};
  return device == Device::cpu() ? host : copy_to(host, device);
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.data(), b.data(), a.nbytes()) == 0;
}

struct Inputs {
  MoEConfig config;
  Buffer map, correction_bias;
  Buffer hidden, logits, ids, weights;  // host
  OwnedExpertWeights expert_weights;    // host
};

Inputs make_inputs(const FuzzCase& c) {
  Inputs in;
  MoEConfig& cfg = in.config;
  cfg.num_experts = c.experts;
  cfg.hidden_size = c.hidden;
  cfg.intermediate_size = c.intermediate;
  cfg.quant = c.quant;
  cfg.activation.kind = c.activation;
  cfg.routing.method = c.routing;
  cfg.routing.top_k = c.top_k;
  cfg.routing.num_expert_group = c.groups;
  cfg.routing.topk_group = c.topk_group;
  cfg.routing.renormalize = c.renormalize;
  cfg.routing.routed_scaling_factor = c.scaling;
  if (c.correction_bias) {
    in.correction_bias = testing::random_f32({c.experts}, mix(c.seed, 1), 0.1f);
    cfg.routing.correction_bias = in.correction_bias.view();
  }
  const int64_t M = c.tokens, E = c.experts, K = c.hidden, k = c.top_k;
  if (c.map != MapKind::none) {
    in.map = Buffer::empty(DType::i32, {E});
    int32_t* m = in.map.data_as<int32_t>();
    std::vector<int32_t> order(static_cast<size_t>(E));
    std::iota(order.begin(), order.end(), 0);
    for (int64_t i = E - 1; i > 0; --i)  // seeded shuffle
      std::swap(order[i], order[int64_t(mix(c.seed, 100 + i) % uint64_t(i + 1))]);
    int32_t next = 0;
    for (int64_t e = 0; e < E; ++e) {
      const bool local = c.map == MapKind::permutation || e == order[0] || mix(c.seed, 5000 + e) % 10 < 6;
      m[order[e]] = local ? next++ : -1;
    }
    cfg.parallel.expert_map = in.map.view();
  }
  if (c.batched) {
    cfg.activation_format = ActivationFormat::batched;
    cfg.max_tokens_per_expert = std::max<int64_t>(1, M * k);
  }
  in.hidden = testing::random_bf16({M, K}, mix(c.seed, 2));
  in.logits = testing::random_f32({M, E}, mix(c.seed, 3), 2.0f);
  if (c.skew > 0.0f) {  // every token leans towards one expert (its neighbours a little)
    const int64_t favourite = int64_t(mix(c.seed, 4) % uint64_t(E));
    for (int64_t t = 0; t < M; ++t) in.logits.data_as<float>()[t * E + favourite] += 20.0f * c.skew;
  }
  in.ids = Buffer::empty(DType::i32, {M, k});
  in.weights = Buffer::empty(DType::f32, {M, k});
  if (c.routing == RoutingMethod::precomputed) {  // duplicates, masked (-1) and stale ids included
    for (int64_t i = 0; i < M * k; ++i) {
      const uint64_t r = mix(c.seed, 10'000 + i);
      int32_t id = int32_t(r % uint64_t(E));
      if (r % 23 == 0) id = -1;
      if (r % 29 == 0) id = int32_t(E + r % 1000);
      in.ids.data_as<int32_t>()[i] = id;
      in.weights.data_as<float>()[i] = 0.25f + 0.5f * float((r >> 20) % 1000) / 1000.0f;
    }
  } else if (M > 0) {
    route(cfg.routing, in.logits, in.ids, in.weights);
  }
  testing::SyntheticWeightOptions opt;
  opt.with_bias = c.bias;
  opt.calibration_hidden = in.hidden.view();
  opt.calibration_ids = in.ids.view();
  if (M == 0) {  // fp8_per_tensor calibrates on a batch: give it one token
    static thread_local Buffer one_hidden, one_ids;
    one_hidden = testing::random_bf16({1, K}, mix(c.seed, 6));
    one_ids = Buffer::empty(DType::i32, {1, k});
    for (int64_t j = 0; j < k; ++j) one_ids.data_as<int32_t>()[j] = int32_t(j % E);
    opt.calibration_hidden = one_hidden.view();
    opt.calibration_ids = one_ids.view();
  }
  in.expert_weights = testing::synthetic_expert_weights(cfg, mix(c.seed, 7), opt);
  return in;
}

// Tokens the reference checks: all of a small batch, else 48 spread over the batch.
std::vector<int64_t> sampled_tokens(int64_t M, uint64_t seed) {
  std::vector<int64_t> t;
  if (M <= 48) {
    t.resize(static_cast<size_t>(M));
    std::iota(t.begin(), t.end(), 0);
    return t;
  }
  t = {0, 1, M / 2, M - 2, M - 1};
  while (t.size() < 48) t.push_back(int64_t(mix(seed, 20'000 + t.size()) % uint64_t(M)));
  std::sort(t.begin(), t.end());
  t.erase(std::unique(t.begin(), t.end()), t.end());
  return t;
}

using DeviceInputs = testing::LayerInputs;

DeviceInputs to_device(const Inputs& in, Device device) {
  return testing::layer_inputs_on(device, in.config, in.expert_weights.weights, in.hidden, in.logits, in.ids,
                                  in.weights);
}

// One call of the layer into `out`: forward() when the case routes, apply() with its ids otherwise.
void call(const FusedMoEKernel& kernel, const FuzzCase& c, const DeviceInputs& d, const Tensor& hidden,
          const Tensor& logits, const Tensor& out, const Tensor& workspace) {
  if (c.routing == RoutingMethod::precomputed)
    kernel.apply(hidden, d.ids, d.topk_weights, out, workspace);
  else
    kernel.forward(hidden, logits, out, workspace);
}

Outcome fail(const std::string& why) { return {false, why}; }

// Local experts of the case's placement (every expert without a map).
std::vector<int32_t> local_experts(const Inputs& in) {
  if (in.map.view().defined()) return testing::experts_of_map(in.map);
  std::vector<int32_t> all(static_cast<size_t>(in.config.num_experts));
  std::iota(all.begin(), all.end(), 0);
  return all;
}

// Applies the case's fault, then expects fusedmoe::Error from construction or the call.
Outcome run_fault(FuzzCase c, Inputs& in, Device device) {
  const int64_t M = c.tokens, K = c.hidden;
  switch (c.fault) {
    case Fault::top_k_too_large: in.config.routing.top_k = int(c.experts + 1); break;
    case Fault::expert_map_twice: {
      if (!in.map.view().defined()) {
        in.map = Buffer::empty(DType::i32, {c.experts});
        std::iota(in.map.data_as<int32_t>(), in.map.data_as<int32_t>() + c.experts, 0);
        in.config.parallel.expert_map = in.map.view();
      }
      const std::vector<int32_t> local = local_experts(in);
      if (local.size() < 2) return {true, ""};  // no second local expert to collide with
      in.map.data_as<int32_t>()[local[1]] = in.map.data_as<int32_t>()[local[0]];
      break;
    }
    case Fault::scale_shape: {
      ExpertWeights& w = in.expert_weights.weights;
      Tensor& s = w.w13_scale;
      std::vector<int64_t> shape(s.shape().begin(), s.shape().end());
      shape.back() = shape.back() > 1 ? shape.back() - 1 : shape.back() + 1;
      s = Tensor(s.data(), s.dtype(), shape, s.device());
      break;
    }
    case Fault::strict_bad_id:  // an id past E in the caller's ids
      in.config.strict_expert_ids = true;
      c.routing = in.config.routing.method = RoutingMethod::precomputed;
      in.ids.data_as<int32_t>()[0] = int32_t(c.experts + 7);
      break;
    case Fault::batched_overflow: {  // every slot on one local expert, capacity 1
      in.config.max_tokens_per_expert = 1;
      c.routing = in.config.routing.method = RoutingMethod::precomputed;
      const int32_t e = int32_t(local_experts(in).front());
      std::fill_n(in.ids.data_as<int32_t>(), in.ids.view().numel(), e);
      break;
    }
    default: break;
  }
  KernelOptions opt;
  opt.backend = c.backend;
  opt.use_monolithic = c.monolithic;
  Buffer out = poisoned(M, K, device);
  const Buffer before = copy_to(out, Device::cpu());
  Buffer scratch;  // storage of a faulty input
  try {
    const DeviceInputs d = to_device(in, device);
    const FusedMoEKernel kernel = make_kernel(d.config, d.weights.weights, opt);
    Tensor hidden = d.hidden, logits = d.logits, target = out, workspace;
    switch (c.fault) {
      case Fault::hidden_dtype:
        scratch = Buffer::empty(DType::f32, {M, K}, device);
        hidden = scratch;
        break;
      case Fault::hidden_shape:
        scratch = Buffer::empty(DType::bf16, {M, K + 1}, device);
        hidden = scratch;
        break;
      case Fault::logits_dtype:
        scratch = Buffer::empty(DType::i32, {M, c.experts}, device);
        logits = scratch;
        break;
      case Fault::workspace_small: {
        const int64_t bytes = int64_t(kernel.workspace_bytes(M)) - 1;
        if (bytes < 0) return {true, ""};  // nothing to be short of
        scratch = Buffer::bytes(size_t(bytes + 1), device);
        workspace = Tensor(scratch.view().data(), DType::u8, {bytes}, device);
        break;
      }
      case Fault::misaligned_out:
        scratch = Buffer::bytes(size_t(M * K * 2 + 16), device);
        target = Tensor(scratch.data_as<uint8_t>() + 2, DType::bf16, {M, K}, device);
        break;
      default: break;
    }
    call(kernel, c, d, hidden, logits, target, workspace);
  } catch (const Error&) {
    if (!same_bits(copy_to(out, Device::cpu()), before)) return fail("the output was written before the error");
    return {true, ""};
  } catch (const std::exception& e) {
    return fail(std::string("threw a non-fusedmoe exception: ") + e.what());
  }
  return fail(std::string("expected fusedmoe::Error for fault ") + fault_name(c.fault) + ", got none");
}

// Splits the case's tokens over its ranks at seeded cut points (some ranks may get none).
std::vector<int64_t> split_tokens(const FuzzCase& c) {
  std::vector<int64_t> cuts = {0, c.tokens};
  for (int r = 1; r < c.ep_ranks; ++r) cuts.push_back(int64_t(mix(c.seed, 30'000 + r) % uint64_t(c.tokens + 1)));
  std::sort(cuts.begin(), cuts.end());
  std::vector<int64_t> tokens;
  for (int r = 0; r < c.ep_ranks; ++r) tokens.push_back(cuts[r + 1] - cuts[r]);
  return tokens;
}

// Runs the layer (twice, for the bits) and returns its output on the host.
Outcome run_layer(const FuzzCase& c, const Inputs& in, Device device, Buffer* host_out) {
  const int64_t M = c.tokens, K = c.hidden;
  if (c.ep_ranks > 1) {
    testing::EpRunOptions o;
    o.ranks = c.ep_ranks;
    o.tokens = split_tokens(c);
    o.monolithic = c.monolithic;
    o.dispatch = c.ep_dispatch;
    testing::EpRunResult runs[2];
    for (testing::EpRunResult& run : runs) {
      run = testing::run_expert_parallel(in.config, in.expert_weights.weights, in.hidden, in.logits, in.ids,
                                         in.weights, o);
      for (size_t r = 0; r < run.errors.size(); ++r)
        if (!run.errors[r].empty()) return fail("rank " + std::to_string(r) + ": " + run.errors[r]);
    }
    if (!same_bits(runs[0].out, runs[1].out)) return fail("two expert-parallel runs gave different bits");
    *host_out = runs[0].out;
    return {true, ""};
  }
  KernelOptions opt;
  opt.backend = c.backend;
  opt.use_monolithic = c.monolithic;
  const DeviceInputs d = to_device(in, device);
  const FusedMoEKernel kernel = make_kernel(d.config, d.weights.weights, opt);
  Buffer out = poisoned(M, K, device), again = poisoned(M, K, device);
  call(kernel, c, d, d.hidden, d.logits, out, {});
  call(kernel, c, d, d.hidden, d.logits, again, {});
  *host_out = copy_to(out, Device::cpu());
  if (!same_bits(*host_out, copy_to(again, Device::cpu()))) return fail("two runs gave different bits");
  return {true, ""};
}

Outcome run_valid(const FuzzCase& c, const Inputs& in, Device device) {
  const int64_t M = c.tokens, K = c.hidden, k = c.top_k;
  Buffer host;
  if (Outcome o = run_layer(c, in, device, &host); !o.ok) return o;
  if (M == 0) return {true, ""};
  // The ids the layer used: the case's own (precomputed), else the router of the same backend.
  Buffer ids = in.ids, weights = in.weights;
  if (c.routing != RoutingMethod::precomputed && device != Device::cpu()) {
    const DeviceInputs d = to_device(in, device);
    Buffer gi = Buffer::empty(DType::i32, {M, k}, device), gw = Buffer::empty(DType::f32, {M, k}, device);
    route(d.config.routing, d.logits, gi, gw);
    ids = copy_to(gi, Device::cpu());
    weights = copy_to(gw, Device::cpu());
  }
  const std::vector<int64_t> tokens = sampled_tokens(M, c.seed);
  const std::vector<double> ref =
      reference_moe(in.config, in.expert_weights.weights, in.hidden, ids, weights, tokens);
  const Tolerance tol = tolerance_for(c.quant);
  double ref_max = 0.0;
  for (double v : ref) ref_max = std::max(ref_max, std::fabs(v));
  int64_t bad = 0, nonzero = 0;
  std::ostringstream first;
  for (size_t ti = 0; ti < tokens.size(); ++ti)
    for (int64_t j = 0; j < K; ++j) {
      const double r = ref[ti * K + j];
      const double o = bf16_to_float(host.data_as<const bfloat16>()[tokens[ti] * K + j]);
      if (o != 0.0) ++nonzero;
      const bool finite_ok = !std::isfinite(r) || std::isfinite(o);
      if (!finite_ok || !(std::fabs(o - r) <= tol.atol * ref_max + tol.rtol * std::fabs(r))) {
        if (bad++ == 0) first << "out[" << tokens[ti] << ", " << j << "] = " << o << ", reference " << r;
      }
    }
  if (bad > 0)
    return fail(std::to_string(bad) + " elements outside tolerance (first: " + first.str() +
                ", max |ref| " + std::to_string(ref_max) + ")");
  if (ref_max > 0.0 && nonzero == 0) return fail("output all zero where the reference is not");
  return {true, ""};
}

}  // namespace

Outcome run_case(const FuzzCase& c) {
  const Device device = c.backend == Backend::cuda ? Device::cuda(0) : Device::cpu();
  try {
    Inputs in = make_inputs(c);
    return c.fault == Fault::none ? run_valid(c, in, device) : run_fault(c, in, device);
  } catch (const std::exception& e) {
    return fail(std::string("unexpected exception: ") + e.what());
  }
}

}  // namespace fusedmoe::fuzz
