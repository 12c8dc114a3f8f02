// Factories: pick the backend, validate config and weights, build the stages.
#include "fusedmoe/factory.h"

#include "core/backend_registry.h"
#include "core/rank_agreement.h"
#include "fusedmoe/error.h"

namespace fusedmoe {

bool backend_available(Backend backend) {
  for (const BackendImpl* b : registered_backends())
    if (b->id == backend || (backend == Backend::auto_select && b->id == Backend::cpu)) return b->available();
  return false;
}

static const BackendImpl& resolve_backend(Backend backend, Device device) {
  if (backend == Backend::auto_select) return backend_for_device(device);
  const BackendImpl& impl = backend_by_id(backend);
  FMOE_CHECK(impl.device_kind == device.kind, "backend '", impl.name, "' runs on ",
             impl.device_kind == DeviceKind::cpu ? "cpu" : "cuda", " tensors, but the weights are on ", device.str());
  return impl;
}

std::unique_ptr<PrepareFinalize> make_prepare_finalize(const MoEConfig& config, const Communicator* communicator,
                                                       bool use_monolithic, Backend backend) {
  validate_config(config);
  const int ranks = communicator ? communicator->size() : 1;
  FMOE_CHECK(config.parallel.ep_size == ranks, "parallel.ep_size (", config.parallel.ep_size,
             ") must equal the communicator's size (", ranks, communicator ? ", " + communicator->name() : std::string(),
             ")");
  if (communicator)
    FMOE_CHECK(config.parallel.ep_rank == communicator->rank(), "parallel.ep_rank (", config.parallel.ep_rank,
               ") must equal the communicator's rank (", communicator->rank(), ")");
  // Before the backend's PrepareFinalize posts any collective sized by the config.
  if (ranks > 1) check_ranks_agree(config, use_monolithic, *communicator);
  const BackendImpl& impl =
      backend == Backend::auto_select ? *registered_backends().front() : backend_by_id(backend);
  return impl.make_prepare_finalize(config, ranks > 1 ? communicator : nullptr, use_monolithic);
}

std::unique_ptr<Experts> make_experts(const MoEConfig& config, const ExpertWeights& weights, Backend backend,
                                      bool use_monolithic) {
  validate_config(config);
  validate_weights(config, weights);
  return resolve_backend(backend, weights.w13.device()).make_experts(config, weights, use_monolithic);
}

FusedMoEKernel make_kernel(const MoEConfig& config, const ExpertWeights& weights, const KernelOptions& options) {
  validate_config(config);
  validate_weights(config, weights);
  const BackendImpl& impl = resolve_backend(options.backend, weights.w13.device());
  std::unique_ptr<Experts> experts = impl.make_experts(config, weights, options.use_monolithic);
  std::unique_ptr<PrepareFinalize> pf =
      make_prepare_finalize(config, options.communicator, options.use_monolithic, impl.id);
  return FusedMoEKernel(config, std::move(pf), std::move(experts));
}

}  // namespace fusedmoe
