// Tensor views, Buffer storage, dtype and device names.
#include "fusedmoe/tensor.h"

#include <sstream>

#include "core/backend_registry.h"
#include "fusedmoe/error.h"

namespace fusedmoe {

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::f32: case DType::i32: return 4;
    case DType::bf16: case DType::f16: return 2;
    case DType::i64: return 8;
    case DType::fp8_e4m3: case DType::fp4x2_e2m1: case DType::ue8m0: case DType::u8: return 1;
  }
  return 1;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::f32: return "f32";
    case DType::bf16: return "bf16";
    case DType::f16: return "f16";
    case DType::fp8_e4m3: return "fp8_e4m3";
    case DType::fp4x2_e2m1: return "fp4x2_e2m1";
    case DType::ue8m0: return "ue8m0";
    case DType::u8: return "u8";
    case DType::i32: return "i32";
    case DType::i64: return "i64";
  }
  return "?";
}

std::string Device::str() const {
  return kind == DeviceKind::cpu ? std::string("cpu") : "cuda:" + std::to_string(index);
}

Tensor::Tensor(void* data, DType dtype, std::span<const int64_t> shape, Device device)
    : data_(data), dtype_(dtype), device_(device), ndim_(static_cast<int>(shape.size())) {
  FMOE_CHECK(shape.size() >= 1 && shape.size() <= kMaxDims, "a tensor has 1 to ", kMaxDims, " dims, got ",
             shape.size());
  int64_t stride = 1;
  for (int d = ndim_ - 1; d >= 0; --d) {
    FMOE_CHECK(shape[d] >= 0, "tensor dims must be >= 0, got ", shape[d], " at dim ", d);
    shape_[d] = shape[d];
    strides_[d] = stride;
    stride *= shape[d];
  }
}

Tensor::Tensor(void* data, DType dtype, std::span<const int64_t> shape, std::span<const int64_t> strides,
               Device device)
    : Tensor(data, dtype, shape, device) {
  FMOE_CHECK(strides.size() == shape.size(), "strides must have ", shape.size(), " entries, got ", strides.size());
  for (int d = 0; d < ndim_; ++d) strides_[d] = strides[d];
}

int64_t Tensor::numel() const {
  if (ndim_ == 0) return 0;
  int64_t n = 1;
  for (int d = 0; d < ndim_; ++d) n *= shape_[d];
  return n;
}

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (int d = ndim_ - 1; d >= 0; --d) {
    if (shape_[d] != 1 && strides_[d] != expected) return false;
    expected *= shape_[d];
  }
  return true;
}

std::string Tensor::shape_str() const {
  std::ostringstream os;
  os << "[";
  for (int d = 0; d < ndim_; ++d) os << (d ? ", " : "") << shape_[d];
  os << "]";
  return os.str();
}

std::string Tensor::describe() const {
  if (!defined()) return "an undefined tensor";
  std::ostringstream os;
  os << dtype_name(dtype_) << shape_str();
  if (!is_contiguous()) {
    os << " strides [";
    for (int d = 0; d < ndim_; ++d) os << (d ? ", " : "") << strides_[d];
    os << "]";
  }
  os << " on " << device_.str();
  return os.str();
}

Buffer Buffer::empty(DType dtype, std::span<const int64_t> shape, Device device) {
  const BackendImpl& backend = backend_for_device(device);
  Buffer buffer;
  buffer.view_ = Tensor(nullptr, dtype, shape, device);  // validates the shape
  const size_t bytes = buffer.view_.nbytes();
  void* data = backend.allocate(bytes == 0 ? 1 : bytes, device);
  buffer.storage_ = std::shared_ptr<void>(data, [&backend, device](void* p) { backend.deallocate(p, device); });
  buffer.view_ = Tensor(data, dtype, shape, device);
  return buffer;
}

Buffer Buffer::bytes(size_t num_bytes, Device device) {
  const int64_t n = static_cast<int64_t>(num_bytes);
  return empty(DType::u8, std::span<const int64_t>(&n, 1), device);
}

void copy_tensor(const Tensor& dst, const Tensor& src) {
  FMOE_CHECK(dst.defined() && src.defined() && dst.dtype() == src.dtype() && dst.numel() == src.numel() &&
                 dst.is_contiguous() && src.is_contiguous(),
             "copy_tensor needs two contiguous tensors of one dtype and size, got ", dst.describe(), " and ",
             src.describe());
  if (dst.nbytes() == 0) return;
  // The backend of the non-CPU side does the copy (the CPU backend when both are on the CPU).
  const Device device = dst.device().kind != DeviceKind::cpu ? dst.device() : src.device();
  backend_for_device(device).copy(dst.data(), dst.device(), src.data(), src.device(), dst.nbytes());
}

Buffer copy_to(const Tensor& src, Device device) {
  Buffer out = Buffer::empty(src.dtype(), src.shape(), device);
  copy_tensor(out, src);
  return out;
}

}  // namespace fusedmoe
