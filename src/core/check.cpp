#include "core/check.h"

#include <sstream>

#include "fusedmoe/error.h"

namespace fusedmoe {

static std::string expected_str(DType dtype, std::span<const int64_t> shape, Device device) {
  std::ostringstream os;
  os << "a contiguous " << dtype_name(dtype) << "[";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << "] on " << device.str();
  return os.str();
}

void check_tensor(const Tensor& t, const char* name, DType dtype, std::span<const int64_t> shape, Device device) {
  bool ok = t.defined() && t.dtype() == dtype && t.device() == device &&
            t.ndim() == static_cast<int>(shape.size()) && t.is_contiguous();
  for (size_t d = 0; ok && d < shape.size(); ++d) ok = t.size(static_cast<int>(d)) == shape[d];
  if (ok && t.numel() > 0) ok = t.data() != nullptr;
  if (ok && t.numel() > 0 && dtype_size(dtype) > 1)
    ok = reinterpret_cast<uintptr_t>(t.data()) % dtype_size(dtype) == 0;
  if (!ok) {
    std::string got = t.describe();
    if (t.defined() && t.numel() > 0 && t.data() == nullptr) got += " with a null data pointer";
    if (t.defined() && t.data() && reinterpret_cast<uintptr_t>(t.data()) % dtype_size(t.dtype()) != 0)
      got += " at a misaligned address";
    FMOE_FAIL(name, " must be ", expected_str(dtype, shape, device), ", got ", got);
  }
}

void check_optional_tensor(const Tensor& t, const char* name, DType dtype, std::initializer_list<int64_t> shape,
                           Device device) {
  if (t.defined()) check_tensor(t, name, dtype, shape, device);
}

void check_absent(const Tensor& t, const char* name, const char* why) {
  FMOE_CHECK(!t.defined(), name, " must be undefined (", why, "), got ", t.describe());
}

}  // namespace fusedmoe
