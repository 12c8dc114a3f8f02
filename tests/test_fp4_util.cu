// fp4_util.cuh's helpers, checked on the host (runs without a GPU).
// The sm90 packing: for every byte (pair of e2m1 codes) in every place of a segment, with random neighbours,
// packing then e2m1x8_sm90_bf16_times_2m126 gives both codes' values times 2^-126, decoded here by e2m1's
// definition, in the pair the kernels expect (word c, pair q = the checkpoint's byte c + 4q); packing
// round-trips.
// The nvfp4 group multipliers: for every pair of e4m3 scale
// bytes, nv_multipliers_f32 gives s * 2^118 of each byte, in its place (byte 0 -> x, byte 1 -> y), exactly, with
// NaN for 0x7f / 0xff, and the value survives the caller's rounding to bf16 unchanged. s is decoded here from the
// e4m3 bits by its definition, independently of the f16 conversion the function uses. (On the host the conversion
// is cuda_fp8.h's software path; the device's cvt.rn.f16x2.e4m3x2 has the same, exact, semantics.)
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>

#include "cuda/kernels/fp4_util.cuh"

namespace {

double e4m3_value(uint32_t b) {  // sign, 4 exponent bits (bias 7), 3 mantissa bits; subnormals at exponent 0
  const int e = (b >> 3) & 0xf, m = b & 7;
  const double mag = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1.0 + m / 8.0, e - 7);
  return (b & 0x80) ? -mag : mag;
}

void expect_multiplier(float got, uint32_t byte, uint32_t pair) {
  if ((byte & 0x7f) == 0x7f) {
    EXPECT_TRUE(std::isnan(got)) << "scale byte 0x" << std::hex << byte << " of pair 0x" << pair;
    return;
  }
  const double want = std::ldexp(e4m3_value(byte), 118);
  ASSERT_EQ(static_cast<double>(got), want) << "scale byte 0x" << std::hex << byte << " of pair 0x" << pair;
  EXPECT_EQ(__bfloat162float(__float2bfloat16_rn(got)), got) << "not exact in bf16: byte 0x" << std::hex << byte;
}

TEST(Fp4Util, NvMultipliersAreExactForEveryScalePair) {
  for (uint32_t pair = 0; pair < 0x10000; ++pair) {
    const float2 m = fusedmoe::cuda::nv_multipliers_f32(pair | 0xabcd0000u);  // the upper half is ignored
    expect_multiplier(m.x, pair & 0xff, pair);
    expect_multiplier(m.y, pair >> 8, pair);
  }
}

double e2m1_value(uint32_t code) {  // sign, 2 exponent bits (bias 1), 1 mantissa bit; subnormal 0.5 at exponent 0
  static constexpr double kMagnitude[8] = {0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0};
  return (code & 8) ? -kMagnitude[code & 7] : kMagnitude[code & 7];
}

double bf16_bits_value(uint32_t bits) {
  const uint32_t f32 = bits << 16;
  float f;
  std::memcpy(&f, &f32, 4);
  return f;
}

TEST(Fp4Util, Sm90PackingUnpacksEveryPairInEveryPlace) {
  std::mt19937 rng(20261206u);
  const auto r = [&] { return static_cast<uint32_t>(rng()); };
  for (int byte = 0; byte < 16; ++byte)  // checkpoint byte `byte` of the segment: values 2 byte, 2 byte + 1
    for (uint32_t pair = 0; pair < 256; ++pair)
      for (int fill = 0; fill < 4; ++fill) {
        uint32_t seg[4] = {r(), r(), r(), r()};
        const int shift = 8 * (byte % 4);
        seg[byte / 4] = (seg[byte / 4] & ~(0xffu << shift)) | (pair << shift);
        uint32_t packed[4], back[4];
        fusedmoe::fp4_pack_segment_sm90(seg, packed);
        fusedmoe::fp4_unpack_segment_sm90(packed, back);
        for (int i = 0; i < 4; ++i) ASSERT_EQ(back[i], seg[i]) << "round trip, word " << i;
        const int c = byte % 4, q = byte / 4;  // checkpoint byte c + 4q is pair q of packed word c
        uint32_t out[4];
        fusedmoe::cuda::e2m1x8_sm90_bf16_times_2m126(packed[c], out);
        for (int h = 0; h < 2; ++h) {
          const uint32_t code = (pair >> (4 * h)) & 0xfu, half = (out[q] >> (16 * h)) & 0xffffu;
          const double got = std::ldexp(bf16_bits_value(half), 126), want = e2m1_value(code);
          ASSERT_EQ(got, want) << "code " << code << " as value " << 2 * byte + h << " (word " << c << ", pair " << q
                               << ") of byte 0x" << std::hex << pair << "; bf16 bits 0x" << half;
          if (code == 8) ASSERT_EQ(half, 0x8000u) << "-0 keeps its sign";
        }
      }
}

}  // namespace
