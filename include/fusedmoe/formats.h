// Bit-exact scalar codecs of the number formats fusedmoe stores: bf16, fp8 e4m3 (OCP
// e4m3fn), fp4 e2m1 and ue8m0. Encoders round to nearest, ties to even, and saturate
// (fp8 at ±448, e2m1 at ±6); NaN encodes to the format's NaN (e2m1 has none: 0).
// Header-only and usable from device code so every backend shares one definition.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "fusedmoe/dtype.h"

#if defined(__CUDACC__)
#define FMOE_HOST_DEVICE __host__ __device__
#else
#define FMOE_HOST_DEVICE
#endif

namespace fusedmoe {

inline constexpr float kFp8E4m3Max = 448.0f;
inline constexpr float kFp4E2m1Max = 6.0f;

FMOE_HOST_DEVICE inline uint32_t float_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}
FMOE_HOST_DEVICE inline float bits_float(uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

// ---- bf16 -------------------------------------------------------------------------------
FMOE_HOST_DEVICE inline float bf16_to_float(bfloat16 v) { return bits_float(uint32_t(v.bits) << 16); }

FMOE_HOST_DEVICE inline bfloat16 float_to_bf16(float x) {
  uint32_t u = float_bits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bfloat16{uint16_t((u >> 16) | 0x40)};  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return bfloat16{uint16_t(u >> 16)};
}

FMOE_HOST_DEVICE inline float round_to_bf16(float x) { return bf16_to_float(float_to_bf16(x)); }

// ---- fp8 e4m3 (bias 7, no inf, 0x7f/0xff NaN, max 448, min subnormal 2^-9) --------------
FMOE_HOST_DEVICE inline float fp8_e4m3_to_float(uint8_t v) {
  const uint32_t sign = (v & 0x80u) << 24;
  const uint32_t exp = (v >> 3) & 0xfu;
  const uint32_t man = v & 0x7u;
  if (exp == 0xf && man == 0x7) return bits_float(sign | 0x7fc00000u);
  if (exp == 0) return bits_float(sign) + (sign ? -1.0f : 1.0f) * float(man) * 0.001953125f;  // man·2^-9
  return bits_float(sign | ((exp + 120u) << 23) | (man << 20));
}

FMOE_HOST_DEVICE inline uint8_t float_to_fp8_e4m3(float x) {
  const uint32_t u = float_bits(x);
  const uint8_t sign = uint8_t((u >> 24) & 0x80u);
  const uint32_t mag = u & 0x7fffffffu;
  if (mag > 0x7f800000u) return uint8_t(sign | 0x7f);  // NaN
  if (mag >= 0x43e00000u) return uint8_t(sign | 0x7e);  // |x| >= 448 (incl. inf): saturate
  if (mag < 0x3c800000u) {                               // |x| < 2^-6: subnormal range, step 2^-9
    const float q = bits_float(mag) * 512.0f;            // exact scaling by a power of two
    // round half to even on the integer q in [0, 8]
    float r = std::nearbyint(q);
    return uint8_t(sign | uint8_t(r));  // r == 8 is exactly the smallest normal 0x08
  }
  // normal: keep 3 mantissa bits, RNE on the 20 dropped bits
  const uint32_t rounded = mag + 0x7ffffu + ((mag >> 20) & 1u);
  const uint32_t exp = (rounded >> 23) - 120u;
  const uint32_t man = (rounded >> 20) & 0x7u;
  if (exp > 15 || (exp == 15 && man == 7)) return uint8_t(sign | 0x7e);
  return uint8_t(sign | (exp << 3) | man);
}

// ---- fp4 e2m1: values ±{0, 0.5, 1, 1.5, 2, 3, 4, 6} --------------------------------------
FMOE_HOST_DEVICE inline float fp4_e2m1_to_float(uint8_t nibble) {
  constexpr float kValues[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  const float v = kValues[nibble & 0x7u];
  return (nibble & 0x8u) ? -v : v;
}

FMOE_HOST_DEVICE inline uint8_t float_to_fp4_e2m1(float x) {
  if (x != x) return 0;
  const uint8_t sign = (float_bits(x) >> 31) ? 0x8 : 0x0;
  const float a = std::fabs(x);
  // Midpoints between neighbours; at a tie the code with an even mantissa (even code) wins.
  uint8_t code;
  if (a <= 0.25f) code = 0;
  else if (a < 0.75f) code = 1;
  else if (a <= 1.25f) code = 2;
  else if (a < 1.75f) code = 3;
  else if (a <= 2.5f) code = 4;
  else if (a < 3.5f) code = 5;
  else if (a <= 5.0f) code = 6;
  else code = 7;
  return uint8_t(sign | code);
}

// ---- ue8m0: 2^(v-127), 0xff NaN ----------------------------------------------------------
FMOE_HOST_DEVICE inline float ue8m0_to_float(uint8_t v) {
  if (v == 0xff) return bits_float(0x7fc00000u);
  if (v == 0) return bits_float(0x00400000u);  // 2^-127 is a float subnormal
  return bits_float(uint32_t(v) << 23);
}

// The OCP MX shared scale of a block with absolute maximum `amax` for e2m1 elements:
// 2^(floor(log2(amax)) - 2), clamped to the ue8m0 range; amax 0 gives the smallest scale.
FMOE_HOST_DEVICE inline uint8_t mx_e2m1_scale_from_amax(float amax) {
  if (!(amax > 0.0f)) return 0;
  const uint32_t u = float_bits(amax);
  int e = int((u >> 23) & 0xffu) - 127;  // floor(log2) for normal floats
  if (((u >> 23) & 0xffu) == 0) e = -127;
  if (((u >> 23) & 0xffu) == 0xff) e = 127;
  int scale_exp = e - 2;
  if (scale_exp < -127) scale_exp = -127;
  if (scale_exp > 127) scale_exp = 127;
  return uint8_t(scale_exp + 127);
}

// Unpacks element i of a row of packed e2m1 bytes.
FMOE_HOST_DEVICE inline float fp4x2_get(const uint8_t* packed, int64_t i) {
  const uint8_t byte = packed[i >> 1];
  return fp4_e2m1_to_float((i & 1) ? uint8_t(byte >> 4) : uint8_t(byte & 0xf));
}

// ---- the sm90 packing of fp4 weights (what the CUDA kernels read) ------------------------
// A row of packed e2m1 (checkpoint order: element 2i in the low nibble of byte i) is cut in 16-byte segments
// of 32 values. In the sm90 packing, word c (little-endian) of a segment holds the checkpoint's bytes c, c + 4,
// c + 8 and c + 12 — its pairs q = 0..3 —, so that one 32-bit word is what a lane of a wgmma A fragment takes
// of two k16 steps, and its 32 bits are placed so that each pair becomes a bf16x2 word in 1-3 instructions
// (src/cuda/kernels/fp4_util.cuh). fp4_sm90_bit(v, j): the bit of value v = 2q + h (h = 0: the pair's first
// value) that holds e2m1 bit j (0: mantissa, 1-2: exponent, 3: sign).
FMOE_HOST_DEVICE constexpr int fp4_sm90_bit(int v, int j) {
  constexpr int kBits[8][4] = {{6, 7, 8, 15},  {22, 23, 24, 31}, {28, 29, 30, 5}, {12, 13, 14, 21},
                               {25, 26, 27, 2}, {9, 10, 11, 18},  {3, 4, 0, 1},   {19, 20, 16, 17}};
  return kBits[v][j];
}

// Where the segments lie: rows in tiles of 16 (a tensor's rows, all experts', counted from its first; the packing
// needs a whole number of tiles, which K % 32 == 0 and N % 32 == 0 give), each tile segment-major — segment s of
// its row i at tile offset 256 s + 16 i — so that the 16 rows' segments s of a k range are 256 contiguous bytes. A
// decode kernel's warp then reads its lanes' 16-byte pieces of 8 rows (4 lanes a row, 4 segments) as four whole
// 128-byte lines; in the rows' own order the same load touched 8 half lines, and a load-only kernel over
// gpt-oss-120b's 1-token weights ran 1.23-1.28x slower that way (bench/micro/fp4_decode_stream.cu, H100).
// fp4_sm90_segment_offset: the byte offset of segment s of row r in a tensor of rows of row_bytes bytes.
inline constexpr int kFp4TileRows = 16;
FMOE_HOST_DEVICE constexpr int64_t fp4_sm90_segment_offset(int64_t r, int64_t s, int64_t row_bytes) {
  return (r / kFp4TileRows) * kFp4TileRows * row_bytes + s * (16 * kFp4TileRows) + (r % kFp4TileRows) * 16;
}

// One segment (four little-endian words) from the checkpoint's order to the sm90 packing, and back.
FMOE_HOST_DEVICE inline void fp4_pack_segment_sm90(const uint32_t (&in)[4], uint32_t (&out)[4]) {
  for (int c = 0; c < 4; ++c) {
    uint32_t w = 0;
    for (int q = 0; q < 4; ++q) {
      const uint32_t byte = (in[q] >> (8 * c)) & 0xffu;  // checkpoint byte c + 4q
      for (int h = 0; h < 2; ++h)
        for (int j = 0; j < 4; ++j) w |= ((byte >> (4 * h + j)) & 1u) << fp4_sm90_bit(2 * q + h, j);
    }
    out[c] = w;
  }
}
FMOE_HOST_DEVICE inline void fp4_unpack_segment_sm90(const uint32_t (&in)[4], uint32_t (&out)[4]) {
  for (int q = 0; q < 4; ++q) out[q] = 0;
  for (int c = 0; c < 4; ++c)
    for (int q = 0; q < 4; ++q)
      for (int h = 0; h < 2; ++h)
        for (int j = 0; j < 4; ++j) out[q] |= ((in[c] >> fp4_sm90_bit(2 * q + h, j)) & 1u) << (8 * c + 4 * h + j);
}

}  // namespace fusedmoe
