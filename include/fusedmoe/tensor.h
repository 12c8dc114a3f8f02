// Tensor: a non-owning view (data, dtype, shape, strides in elements, device).
// Buffer: owning storage on a device, handed out through the backend that owns the device.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>

#include "fusedmoe/dtype.h"

namespace fusedmoe {

enum class DeviceKind : uint8_t { cpu, cuda };

struct Device {
  DeviceKind kind = DeviceKind::cpu;
  int index = 0;

  static Device cpu() { return {DeviceKind::cpu, 0}; }
  static Device cuda(int index) { return {DeviceKind::cuda, index}; }
  bool operator==(const Device&) const = default;
  std::string str() const;
};

class Tensor {
 public:
  static constexpr int kMaxDims = 4;

  Tensor() = default;
  // Contiguous (row-major) view.
  Tensor(void* data, DType dtype, std::span<const int64_t> shape, Device device = Device::cpu());
  Tensor(void* data, DType dtype, std::initializer_list<int64_t> shape, Device device = Device::cpu())
      : Tensor(data, dtype, std::span<const int64_t>(shape.begin(), shape.size()), device) {}
  // Strided view; strides count elements.
  Tensor(void* data, DType dtype, std::span<const int64_t> shape, std::span<const int64_t> strides,
         Device device);

  bool defined() const { return ndim_ > 0 || data_ != nullptr; }
  void* data() const { return data_; }
  template <class T>
  T* data_as() const { return static_cast<T*>(data_); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  int ndim() const { return ndim_; }
  int64_t size(int dim) const { return shape_[dim]; }
  int64_t stride(int dim) const { return strides_[dim]; }
  std::span<const int64_t> shape() const { return {shape_.data(), static_cast<size_t>(ndim_)}; }
  int64_t numel() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  bool is_contiguous() const;
  // "bf16[4, 128] strides [128, 1] cpu" — used in error messages.
  std::string describe() const;
  std::string shape_str() const;

 private:
  void* data_ = nullptr;
  DType dtype_ = DType::u8;
  Device device_{};
  int ndim_ = 0;
  std::array<int64_t, kMaxDims> shape_{};
  std::array<int64_t, kMaxDims> strides_{};
};

// Owning, 64-byte aligned storage; copies share it. Allocation goes through the backend
// registered for the device, so a device without a backend is a clear error.
class Buffer {
 public:
  Buffer() = default;
  static Buffer empty(DType dtype, std::span<const int64_t> shape, Device device = Device::cpu());
  static Buffer empty(DType dtype, std::initializer_list<int64_t> shape, Device device = Device::cpu()) {
    return empty(dtype, std::span<const int64_t>(shape.begin(), shape.size()), device);
  }
  static Buffer bytes(size_t num_bytes, Device device = Device::cpu());

  const Tensor& view() const { return view_; }
  operator const Tensor&() const { return view_; }  // NOLINT(google-explicit-constructor)
  template <class T>
  T* data_as() const { return view_.data_as<T>(); }
  size_t nbytes() const { return view_.nbytes(); }

 private:
  std::shared_ptr<void> storage_;
  Tensor view_;
};

}  // namespace fusedmoe

namespace fusedmoe {

// Copies `src` into `dst` (same dtype and shape, both contiguous) between any two devices of
// this build. Synchronous: not for use inside a CUDA graph capture.
void copy_tensor(const Tensor& dst, const Tensor& src);
// A contiguous copy of `src` on `device`.
Buffer copy_to(const Tensor& src, Device device);

}  // namespace fusedmoe
