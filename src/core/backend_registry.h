// Backends register what they implement here: allocation on their device, Experts and
// PrepareFinalize factories. The factory and Buffer look backends up by id or device kind.
#pragma once

#include <cstddef>
#include <memory>
#include <span>

#include "fusedmoe/config.h"
#include "fusedmoe/experts.h"
#include "fusedmoe/factory.h"
#include "fusedmoe/prepare_finalize.h"
#include "fusedmoe/tensor.h"
#include "fusedmoe/weights.h"

namespace fusedmoe {

struct BackendImpl {
  Backend id;
  const char* name;
  DeviceKind device_kind;
  void* (*allocate)(size_t bytes, Device device);
  void (*deallocate)(void* ptr, Device device);
  // Synchronous copy; one side is this backend's device, the other this device or the CPU.
  void (*copy)(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes);
  std::unique_ptr<Experts> (*make_experts)(const MoEConfig& config, const ExpertWeights& weights, bool monolithic);
  // communicator: null or of size 1 without expert parallelism.
  std::unique_ptr<PrepareFinalize> (*make_prepare_finalize)(const MoEConfig& config, const Communicator* communicator,
                                                            bool monolithic);
  // Whether this machine can run the backend (e.g. has a suitable device).
  bool (*available)();
  // Arguments already validated by route().
  void (*route)(const RoutingConfig& config, const Tensor& logits, const Tensor& topk_ids, const Tensor& topk_weights);
  // Packed fp4 data (whole tiles of 16 rows of row_bytes, row_bytes % 16 == 0) from the checkpoint's order to the
  // sm90 packing, in place (formats.h).
  void (*pack_fp4_sm90)(void* data, size_t bytes, size_t row_bytes, Device device);
};

// Every backend compiled into this build, in preference order.
std::span<const BackendImpl* const> registered_backends();
const BackendImpl& backend_by_id(Backend id);
const BackendImpl& backend_for_device(Device device);

// Defined by each backend.
const BackendImpl& cpu_backend();
#ifdef FUSEDMOE_WITH_CUDA
const BackendImpl& cuda_backend();
#endif

}  // namespace fusedmoe
