// Workspace bump allocator.
#include "fusedmoe/workspace.h"

#include "fusedmoe/error.h"

namespace fusedmoe {

size_t workspace_tensor_bytes(DType dtype, std::span<const int64_t> shape) {
  size_t n = dtype_size(dtype);
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  return align_workspace(n);
}

Workspace::Workspace(const Tensor& bytes)
    : base_(bytes.data_as<uint8_t>()), capacity_(bytes.defined() ? bytes.nbytes() : 0), device_(bytes.device()) {
  FMOE_CHECK(!bytes.defined() || (bytes.dtype() == DType::u8 && bytes.ndim() == 1 && bytes.is_contiguous()),
             "workspace must be a contiguous u8 [n] tensor, got ", bytes.describe());
  // Any address is accepted: the first slice starts at the next kWorkspaceAlignment boundary.
  const size_t skip = (kWorkspaceAlignment - reinterpret_cast<uintptr_t>(base_) % kWorkspaceAlignment) %
                      kWorkspaceAlignment;
  base_ += skip;
  capacity_ = capacity_ > skip ? capacity_ - skip : 0;
}

Tensor Workspace::take(DType dtype, std::span<const int64_t> shape) {
  const size_t bytes = workspace_tensor_bytes(dtype, shape);
  FMOE_CHECK(used_ + bytes <= capacity_, "workspace too small: need at least ", used_ + bytes, " bytes, have ",
             capacity_);
  Tensor t(base_ + used_, dtype, shape, device_);
  used_ += bytes;
  return t;
}

}  // namespace fusedmoe
