// Vectorizable row decoders of the stored formats into f32 (bit-exact to formats.h).
#pragma once

#include <cmath>
#include <cstdint>

#include "fusedmoe/formats.h"

namespace fusedmoe::cpu {

inline void decode_bf16_row(const bfloat16* src, int64_t n, float* dst) {
  const uint16_t* bits = reinterpret_cast<const uint16_t*>(src);
  for (int64_t i = 0; i < n; ++i) dst[i] = bits_float(uint32_t(bits[i]) << 16);
}

// e4m3 magnitude bits shifted into a float's exponent/mantissa are the value times 2^-120,
// subnormals included, so one multiply decodes every code; 0x7f/0xff stay NaN.
inline void decode_fp8_row(const uint8_t* src, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t v = src[i];
    float f = bits_float((v & 0x7fu) << 20) * 0x1p120f;
    f = (v & 0x7fu) == 0x7fu ? NAN : f;
    dst[i] = (v & 0x80u) ? -f : f;
  }
}

// Both e2m1 values of every byte, low nibble first: one table lookup per byte.
struct Fp4PairTable {
  float values[256][2];
  Fp4PairTable() {
    for (int b = 0; b < 256; ++b) {
      values[b][0] = fp4_e2m1_to_float(uint8_t(b & 0xf));
      values[b][1] = fp4_e2m1_to_float(uint8_t(b >> 4));
    }
  }
};

// e2m1 pairs times one scale per `group` values (group even): dst = e2m1 * scale[i / group].
inline void decode_fp4_row(const uint8_t* packed, int64_t n, const float* group_scales, int64_t group, float* dst) {
  static const Fp4PairTable table;
  for (int64_t g0 = 0; g0 < n; g0 += group) {
    const float s = group_scales[g0 / group];
    for (int64_t i = g0; i < g0 + group; i += 2) {
      const float* pair = table.values[packed[i >> 1]];
      dst[i] = pair[0] * s;
      dst[i + 1] = pair[1] * s;
    }
  }
}

}  // namespace fusedmoe::cpu
