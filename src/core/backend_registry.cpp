// The list of compiled-in backends.
#include "core/backend_registry.h"

#include <array>
#include <sstream>

#include "fusedmoe/error.h"

namespace fusedmoe {

std::span<const BackendImpl* const> registered_backends() {
#ifdef FUSEDMOE_WITH_CUDA
  static const std::array<const BackendImpl*, 2> backends = {&cpu_backend(), &cuda_backend()};
#else
  static const std::array<const BackendImpl*, 1> backends = {&cpu_backend()};
#endif
  return backends;
}

static std::string backend_list() {
  std::ostringstream os;
  for (const BackendImpl* b : registered_backends()) os << (os.tellp() > 0 ? ", " : "") << b->name;
  return os.str();
}

const BackendImpl& backend_by_id(Backend id) {
  for (const BackendImpl* b : registered_backends())
    if (b->id == id) return *b;
  FMOE_FAIL("backend '", backend_name(id), "' is not compiled into this build (available: ", backend_list(), ")");
}

const BackendImpl& backend_for_device(Device device) {
  for (const BackendImpl* b : registered_backends())
    if (b->device_kind == device.kind) return *b;
  FMOE_FAIL("no backend for device ", device.str(), " in this build (available: ", backend_list(), ")");
}

}  // namespace fusedmoe
