// Element types of fusedmoe tensors and the bf16 storage type.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fusedmoe {

enum class DType : uint8_t {
  f32,
  bf16,
  f16,
  fp8_e4m3,    // OCP e4m3fn: no infinities, max 448
  fp4x2_e2m1,  // two e2m1 values packed in one byte: element 2i low nibble, 2i+1 high nibble
  ue8m0,       // 8-bit power-of-two scale 2^(x-127); 0xFF is NaN
  u8,
  i32,
  i64,
};

// Bytes of one stored element (a packed fp4x2 element holds two values).
size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);

// bf16 bits; conversions live in formats.h.
struct bfloat16 {
  uint16_t bits = 0;
};

}  // namespace fusedmoe
