// fp4_util.cuh's nvfp4 group multipliers, checked on the host (runs without a GPU): for every pair of e4m3 scale
// bytes, nv_multipliers_f32 gives s * 2^118 of each byte, in its place (byte 0 -> x, byte 1 -> y), exactly, with
// NaN for 0x7f / 0xff, and the value survives the caller's rounding to bf16 unchanged. s is decoded here from the
// e4m3 bits by its definition, independently of the f16 conversion the function uses. (On the host the conversion
// is cuda_fp8.h's software path; the device's cvt.rn.f16x2.e4m3x2 has the same, exact, semantics.)
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>

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

}  // namespace
