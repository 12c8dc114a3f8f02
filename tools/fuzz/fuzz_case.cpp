// Drawing of fuzz cases (see fuzz_case.h). Sizes mix real model dimensions with odd ones the
// scheme allows; the cost of a case (weights and the float64 reference) is kept bounded by
// shrinking tokens and experts of the large shapes.
#include "fuzz/fuzz_case.h"

#include "core/route_token.h"

#include <algorithm>
#include <array>
#include <sstream>
#include <vector>

namespace fusedmoe::fuzz {
namespace {

class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  int64_t range(int64_t lo, int64_t hi) { return lo + int64_t(next() % uint64_t(hi - lo + 1)); }  // inclusive
  bool chance(double p) { return double(next() >> 11) * 0x1p-53 < p; }
  template <class T, size_t N>
  T pick(const std::array<T, N>& a) { return a[next() % N]; }
  template <class T>
  T pick(const std::vector<T>& a) { return a[next() % a.size()]; }

 private:
  uint64_t state_;
};

constexpr std::array<int64_t, 24> kTokens = {0,  1,  2,   3,   7,   8,   9,   15,  16,   17,   31,   32,
                                             33, 63, 64,  65,  100, 127, 128, 129, 255,  300,  1000, 2000};
constexpr std::array<int64_t, 14> kExperts = {1, 2, 3, 5, 8, 10, 16, 32, 60, 64, 128, 129, 256, 300};

// Sizes a scheme allows on a backend: multiple of `step`, from real models and odd ones.
std::vector<int64_t> sizes(int64_t step, bool hidden) {
  const std::vector<int64_t> candidates =
      hidden ? std::vector<int64_t>{24, 64, 96, 128, 160, 200, 256, 384, 512, 1024, 2048, 2880, 4096, 7168}
             : std::vector<int64_t>{16, 32, 64, 72, 96, 128, 192, 256, 384, 768, 1536, 2048, 2880};
  std::vector<int64_t> out;
  for (int64_t v : candidates)
    if (v % step == 0) out.push_back(v);
  return out;
}

int64_t size_step(QuantScheme q, Backend backend) {
  if (backend == Backend::cuda) return scheme_quantizes_activations(q) ? 128 : 64;
  if (q == QuantScheme::nvfp4) return kNvfp4GroupSize;
  if (q == QuantScheme::mxfp4) return kMxfp4GroupSize;
  return 8;
}

}  // namespace

FuzzCase draw_case(uint64_t seed, Backend backend, const Budget& budget) {
  Rng rng(seed);
  FuzzCase c;
  c.seed = seed;
  c.backend = backend;
  const bool cuda = backend == Backend::cuda;
  c.quant = cuda ? rng.pick(std::array{QuantScheme::bf16, QuantScheme::fp8_block})
                 : rng.pick(std::array{QuantScheme::bf16, QuantScheme::fp8_per_tensor, QuantScheme::fp8_per_channel,
                                       QuantScheme::fp8_block, QuantScheme::nvfp4, QuantScheme::mxfp4});
  c.activation = rng.pick(std::array{ActivationKind::silu_mul, ActivationKind::gelu_mul, ActivationKind::gelu_tanh_mul,
                                     ActivationKind::swiglu_oai, ActivationKind::relu2});
  const int64_t step = size_step(c.quant, backend);
  c.hidden = rng.pick(sizes(step, true));
  c.intermediate = rng.pick(sizes(step, false));
  c.tokens = rng.pick(kTokens);
  c.experts = rng.chance(0.3) ? rng.range(1, 300) : rng.pick(kExperts);
  // Bound the cost (weights to synthesize, work for the fast path).
  const int64_t per_expert = 3 * c.hidden * c.intermediate;
  c.experts = std::max<int64_t>(1, std::min(c.experts, budget.weight_values / per_expert));
  c.top_k = int(rng.range(1, std::min<int64_t>(c.experts, 16)));
  while (c.tokens > 1 && c.tokens * c.top_k * per_expert > budget.macs) c.tokens /= 2;

  c.routing = rng.pick(std::array{RoutingMethod::softmax_topk, RoutingMethod::topk_softmax,
                                  RoutingMethod::softmax_topk_renormalize, RoutingMethod::deepseek_v3,
                                  RoutingMethod::llama4, RoutingMethod::sigmoid_topk,
                                  RoutingMethod::sigmoid_topk_renormalize, RoutingMethod::precomputed});
  if (c.routing == RoutingMethod::deepseek_v3) {
    std::vector<int> divisors;
    for (int g = 1; g <= std::min<int64_t>(c.experts, kMaxExpertGroups); ++g)
      if (c.experts % g == 0) divisors.push_back(g);
    c.groups = rng.pick(divisors);
    const int64_t group_size = c.experts / c.groups;
    c.correction_bias = group_size >= 2 && rng.chance(0.7);
    c.topk_group = int(rng.range(1, c.groups));
    c.top_k = int(std::min<int64_t>(c.top_k, c.topk_group * group_size));
    c.renormalize = rng.chance(0.7);
  }
  if (c.routing == RoutingMethod::llama4) c.top_k = 1;
  c.scaling = rng.pick(std::array{1.0f, 1.0f, 1.5f, 2.5f});
  c.skew = rng.chance(0.3) ? rng.pick(std::array{0.3f, 1.0f}) : 0.0f;
  c.map = rng.chance(0.25) ? rng.pick(std::array{MapKind::holes, MapKind::permutation}) : MapKind::none;
  if (!cuda) {
    c.monolithic = c.routing != RoutingMethod::precomputed && rng.chance(0.3);
    c.batched = !c.monolithic && rng.chance(0.15);
    c.bias = rng.chance(c.activation == ActivationKind::swiglu_oai ? 0.6 : 0.15);
  } else {  // the CUDA monolithic experts, drawn from a stream of its own so that a CUDA seed's
            // other fields stay what they were before CUDA had monolithic experts
    Rng mono(seed ^ 0x6d6f6e6fULL);
    c.monolithic = c.routing != RoutingMethod::precomputed && mono.chance(0.3);
    Rng format(seed ^ 0x62617463ULL);  // the batched format, likewise from its own stream
    c.batched = !c.monolithic && format.chance(0.15);
  }
  if (rng.chance(0.15)) {
    std::vector<Fault> faults = {Fault::hidden_dtype, Fault::hidden_shape, Fault::expert_map_twice,
                                 Fault::workspace_small, Fault::top_k_too_large};
    if (c.routing != RoutingMethod::precomputed) faults.push_back(Fault::logits_dtype);
    if (c.quant != QuantScheme::bf16) faults.push_back(Fault::scale_shape);
    if (cuda) faults.push_back(Fault::misaligned_out);
    if (!cuda && !c.monolithic) faults.push_back(Fault::strict_bad_id);
    if (c.batched) faults.push_back(Fault::batched_overflow);
    c.fault = rng.pick(faults);
    if (c.fault == Fault::expert_map_twice && c.experts < 2) c.fault = Fault::hidden_shape;
    if (c.tokens == 0 && c.fault != Fault::top_k_too_large && c.fault != Fault::expert_map_twice &&
        c.fault != Fault::scale_shape)
      c.tokens = 3;  // call-time faults need rows to be checked against
    if (c.fault == Fault::batched_overflow && c.tokens < 2) c.tokens = 2;
  }
  if (!cuda && c.fault == Fault::none && c.experts >= 2 && rng.chance(0.2)) {
    c.ep_ranks = int(rng.range(2, std::min<int64_t>(4, c.experts)));
    // The batched format travels only through the all-to-all PrepareFinalize.
    c.ep_dispatch = c.batched || rng.chance(0.5) ? EpDispatch::all_to_all : EpDispatch::all_gather;
    c.map = MapKind::none;  // the ranks' placement is the map
  }
  if (cuda) {  // fp4 weights and expert biases on CUDA, from a stream of their own (as monolithic)
    Rng extra(seed ^ 0x66703462ULL);
    if (c.quant == QuantScheme::bf16 && extra.chance(0.5))
      c.quant = extra.pick(std::array{QuantScheme::nvfp4, QuantScheme::mxfp4});  // sizes: % 64 fits them too
    c.bias = extra.chance(c.activation == ActivationKind::swiglu_oai ? 0.6 : 0.15);
    // fp8-tensor and fp8-channel (the block-scaled kernels with their scales), likewise: sizes % 128 fit them.
    Rng fp8(seed ^ 0x66703874ULL);
    if (c.quant == QuantScheme::fp8_block && fp8.chance(0.5))
      c.quant = fp8.pick(std::array{QuantScheme::fp8_per_tensor, QuantScheme::fp8_per_channel});
  }
  return c;
}

const char* fault_name(Fault f) {
  switch (f) {
    case Fault::none: return "none";
    case Fault::hidden_dtype: return "hidden-dtype";
    case Fault::hidden_shape: return "hidden-shape";
    case Fault::strict_bad_id: return "strict-bad-id";
    case Fault::expert_map_twice: return "expert-map-twice";
    case Fault::scale_shape: return "scale-shape";
    case Fault::workspace_small: return "workspace-small";
    case Fault::logits_dtype: return "logits-dtype";
    case Fault::batched_overflow: return "batched-overflow";
    case Fault::top_k_too_large: return "top-k-too-large";
    case Fault::misaligned_out: return "misaligned-out";
  }
  return "?";
}

std::string describe(const FuzzCase& c) {
  std::ostringstream os;
  os << "backend=" << backend_name(c.backend) << " M=" << c.tokens << " E=" << c.experts << " K=" << c.hidden
     << " I=" << c.intermediate << " k=" << c.top_k << " quant=" << quant_scheme_name(c.quant)
     << " act=" << activation_name(c.activation) << " routing=" << routing_method_name(c.routing);
  if (c.routing == RoutingMethod::deepseek_v3)
    os << "(groups=" << c.groups << ",topk_group=" << c.topk_group << ",bias=" << c.correction_bias
       << ",renorm=" << c.renormalize << ")";
  os << " scale=" << c.scaling << " skew=" << c.skew
     << " map=" << (c.map == MapKind::none ? "none" : c.map == MapKind::holes ? "holes" : "permutation")
     << (c.monolithic ? " monolithic" : " modular") << (c.batched ? " batched" : "") << (c.bias ? " biases" : "")
     << " fault=" << fault_name(c.fault);
  if (c.ep_ranks > 1)
    os << " ep=" << c.ep_ranks
       << (c.monolithic ? "" : c.ep_dispatch == EpDispatch::all_to_all ? "(all-to-all)" : "(all-gather)");
  return os.str();
}

}  // namespace fusedmoe::fuzz
