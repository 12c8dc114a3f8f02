// Boundary validation helpers: each throws fusedmoe::Error naming the argument, what was
// expected and what came.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <span>

#include "fusedmoe/tensor.h"

namespace fusedmoe {

// `t` must be defined, of `dtype`, exactly `shape`, contiguous, on `device`.
void check_tensor(const Tensor& t, const char* name, DType dtype, std::span<const int64_t> shape, Device device);
inline void check_tensor(const Tensor& t, const char* name, DType dtype, std::initializer_list<int64_t> shape,
                         Device device) {
  check_tensor(t, name, dtype, std::span<const int64_t>(shape.begin(), shape.size()), device);
}

// Like check_tensor, but an undefined tensor passes.
void check_optional_tensor(const Tensor& t, const char* name, DType dtype, std::initializer_list<int64_t> shape,
                           Device device);

// `t` must be undefined (the scheme or config has no use for it).
void check_absent(const Tensor& t, const char* name, const char* why);

}  // namespace fusedmoe
