// See rank_agreement.h. Floats are compared by their bits (a layer's constants must be the very
// same numbers on every rank).
#include "core/rank_agreement.h"

#include <bit>
#include <sstream>
#include <string>
#include <vector>

#include "fusedmoe/error.h"

namespace fusedmoe {
namespace {

// A field every rank must share; a float's value is its bits.
struct Field {
  const char* name;
  int64_t value;
  bool is_float = false;
};

Field float_field(const char* name, float v) { return {name, int64_t(std::bit_cast<uint32_t>(v)), true}; }

std::vector<Field> shared_fields(const MoEConfig& c, bool use_monolithic) {
  const RoutingConfig& r = c.routing;
  const ParallelConfig& p = c.parallel;
  return {
      {"num_experts", c.num_experts},
      {"hidden_size", c.hidden_size},
      {"intermediate_size", c.intermediate_size},
      {"activation.kind", int64_t(c.activation.kind)},
      float_field("activation.alpha", c.activation.alpha),
      float_field("activation.limit", c.activation.limit),
      {"quant", int64_t(c.quant)},
      {"routing.method", int64_t(r.method)},
      {"routing.top_k", r.top_k},
      {"routing.num_expert_group", r.num_expert_group},
      {"routing.topk_group", r.topk_group},
      {"routing.renormalize", int64_t(r.renormalize)},
      float_field("routing.routed_scaling_factor", r.routed_scaling_factor),
      {"routing.correction_bias (given)", int64_t(r.correction_bias.defined())},
      {"parallel.ep_size", p.ep_size},
      {"parallel.dp_size", p.dp_size},
      {"parallel.max_tokens_per_rank", p.max_tokens_per_rank},
      {"parallel.ep_dispatch", int64_t(p.ep_dispatch)},
      {"parallel.capacity_check_all_ranks", int64_t(p.capacity_check_all_ranks)},
      {"activation_format", int64_t(c.activation_format)},
      {"max_tokens_per_expert", c.max_tokens_per_expert},
      {"strict_expert_ids", int64_t(c.strict_expert_ids)},
      {"use_monolithic", int64_t(use_monolithic)},
  };
}

std::string show(const Field& f, int64_t value) {
  if (!f.is_float) return std::to_string(value);
  std::ostringstream os;
  os << std::bit_cast<float>(static_cast<uint32_t>(value));
  return os.str();
}

}  // namespace

void check_ranks_agree(const MoEConfig& config, bool use_monolithic, const Communicator& comm) {
  const auto fields = shared_fields(config, use_monolithic);
  const int n = comm.size();
  const int64_t F = static_cast<int64_t>(fields.size());
  Buffer host = Buffer::empty(DType::i64, {F});
  for (int64_t f = 0; f < F; ++f) host.data_as<int64_t>()[f] = fields[f].value;
  // Through the communicator's device (NCCL takes device memory); the barrier waits for the gather.
  const Buffer send = copy_to(host.view(), comm.device());
  const Buffer recv = Buffer::empty(DType::i64, {n, F}, comm.device());
  comm.all_gather(send.view().data(), recv.view().data(), static_cast<size_t>(F) * sizeof(int64_t));
  comm.barrier();
  const Buffer all = copy_to(recv.view(), Device::cpu());
  const int64_t* v = all.data_as<const int64_t>();
  std::string differences;
  for (int64_t f = 0; f < F; ++f)
    for (int rank = 1; rank < n; ++rank)
      if (v[rank * F + f] != v[f]) {
        differences += std::string(differences.empty() ? "" : "; ") + fields[f].name + " is " + show(fields[f], v[f]) +
                       " on rank 0 and " + show(fields[f], v[rank * F + f]) + " on rank " + std::to_string(rank);
        break;  // the first rank that differs from rank 0 names the field
      }
  FMOE_CHECK(differences.empty(), "expert-parallel ranks were built with different layers: ", differences,
             ". Every rank must pass the same config apart from parallel.ep_rank and parallel.expert_map "
             "(every rank reports this)");
}

}  // namespace fusedmoe
