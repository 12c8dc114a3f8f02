// Workspace: a bump allocator over caller-provided scratch bytes (256-byte aligned slices; the
// bytes themselves may start anywhere — up to 255 are skipped, which workspace sizes include).
// 256, where TMA and vector loads need 16: with 64-byte slices where a tensor started within a 128-byte
// line depended on the sizes of the tensors before it, and growing one moved the forward by 1-2% at 8192
// tokens on H100 (bench/results/gpu-h100-session70-2026-12-05.md).
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <span>

#include "fusedmoe/tensor.h"

namespace fusedmoe {

inline constexpr size_t kWorkspaceAlignment = 256;

inline size_t align_workspace(size_t bytes) {
  return (bytes + kWorkspaceAlignment - 1) / kWorkspaceAlignment * kWorkspaceAlignment;
}
// Bytes a tensor of this dtype and shape takes in a workspace, alignment included.
size_t workspace_tensor_bytes(DType dtype, std::span<const int64_t> shape);
inline size_t workspace_tensor_bytes(DType dtype, std::initializer_list<int64_t> shape) {
  return workspace_tensor_bytes(dtype, std::span<const int64_t>(shape.begin(), shape.size()));
}

class Workspace {
 public:
  Workspace() = default;
  explicit Workspace(const Tensor& bytes);  // u8 [n], contiguous
  // Carves a contiguous tensor; throws if the workspace is too small.
  Tensor take(DType dtype, std::span<const int64_t> shape);
  Tensor take(DType dtype, std::initializer_list<int64_t> shape) {
    return take(dtype, std::span<const int64_t>(shape.begin(), shape.size()));
  }
  size_t used() const { return used_; }
  size_t capacity() const { return capacity_; }

 private:
  uint8_t* base_ = nullptr;
  size_t capacity_ = 0;
  size_t used_ = 0;
  Device device_{};
};

}  // namespace fusedmoe
