// Quantizers: activation quantization against hand-computed values, and the bf16 -> scheme
// weight conversion against the format definitions (round trips within one grid step).
#include "test_util.h"

namespace fusedmoe::test {
namespace {

TEST(ActivationQuantization, HandComputedFp8Groups) {
  // One row of 130 values: the block scheme gives two groups (128 + a 2-value tail).
  Buffer x = Buffer::empty(DType::bf16, {1, 130});
  for (int i = 0; i < 130; ++i) x.data_as<bfloat16>()[i] = float_to_bf16(i < 128 ? 0.5f : 8.0f);
  x.data_as<bfloat16>()[3] = float_to_bf16(-4.0f);
  Buffer q = Buffer::empty(DType::fp8_e4m3, {1, 130}), s = Buffer::empty(DType::f32, {1, 2});
  quantize_activations_fp8(QuantScheme::fp8_block, x, 0.0f, q, s);
  EXPECT_EQ(s.data_as<float>()[0], 4.0f / 448.0f);
  EXPECT_EQ(s.data_as<float>()[1], 8.0f / 448.0f);
  EXPECT_EQ(q.data_as<uint8_t>()[3], 0xfe);    // -448
  EXPECT_EQ(q.data_as<uint8_t>()[0], float_to_fp8_e4m3(0.5f / (4.0f / 448.0f)));  // 56
  EXPECT_EQ(fp8_e4m3_to_float(q.data_as<uint8_t>()[0]), 56.0f);
  EXPECT_EQ(q.data_as<uint8_t>()[129], 0x7e);  // +448
  Buffer s1 = Buffer::empty(DType::f32, {1, 1});
  quantize_activations_fp8(QuantScheme::fp8_per_channel, x, 0.0f, q, s1);
  EXPECT_EQ(s1.data_as<float>()[0], 8.0f / 448.0f);
  quantize_activations_fp8(QuantScheme::fp8_per_tensor, x, 0.25f, q, s1);
  EXPECT_EQ(q.data_as<uint8_t>()[0], float_to_fp8_e4m3(2.0f));
  EXPECT_EQ(q.data_as<uint8_t>()[129], float_to_fp8_e4m3(32.0f));
}

class WeightConversion : public ::testing::TestWithParam<QuantScheme> {};

TEST_P(WeightConversion, RoundTripsWithinTheGrid) {
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  MoEConfig c = small_config(GetParam(), 3, 256, 96, 2);
  const int64_t N1 = c.w13_rows(), K = c.hidden_size;
  const Buffer w13 = testing::random_bf16({3, N1, K}, seed, 0.05f);
  const Buffer w2 = testing::random_bf16({3, K, 96}, seed + 1, 0.05f);
  WeightQuantOptions opt{4.0f, 2.0f};
  const OwnedExpertWeights q = quantize_expert_weights(c, w13, w2, opt);
  validate_weights(c, q.weights);
  // Dequantize w13 with the reference's definition and compare to the bf16 source.
  double worst = 0.0, amax = 0.0;
  for (int64_t e = 0; e < 3; ++e)
    for (int64_t n = 0; n < N1; ++n)
      for (int64_t k = 0; k < K; ++k) {
        const double src = bf16_to_float(w13.data_as<bfloat16>()[(e * N1 + n) * K + k]);
        double deq = 0.0;
        const int64_t idx = (e * N1 + n) * K + k;
        switch (c.quant) {
          case QuantScheme::bf16: deq = bf16_to_float(q.weights.w13.data_as<bfloat16>()[idx]); break;
          case QuantScheme::fp8_per_tensor:
            deq = fp8_e4m3_to_float(q.weights.w13.data_as<uint8_t>()[idx]) * q.weights.w13_scale.data_as<float>()[e];
            break;
          case QuantScheme::fp8_per_channel:
            deq = fp8_e4m3_to_float(q.weights.w13.data_as<uint8_t>()[idx]) *
                  q.weights.w13_scale.data_as<float>()[e * N1 + n];
            break;
          case QuantScheme::fp8_block:
            deq = fp8_e4m3_to_float(q.weights.w13.data_as<uint8_t>()[idx]) *
                  q.weights.w13_scale.data_as<float>()[(e * ((N1 + 127) / 128) + n / 128) * (K / 128) + k / 128];
            break;
          case QuantScheme::nvfp4:
            deq = fp4x2_get(q.weights.w13.data_as<uint8_t>() + (e * N1 + n) * K / 2, k) *
                  fp8_e4m3_to_float(q.weights.w13_scale.data_as<uint8_t>()[(e * N1 + n) * (K / 16) + k / 16]) *
                  q.weights.w13_global_scale.data_as<float>()[e];
            break;
          case QuantScheme::mxfp4:
            deq = fp4x2_get(q.weights.w13.data_as<uint8_t>() + (e * N1 + n) * K / 2, k) *
                  ue8m0_to_float(q.weights.w13_scale.data_as<uint8_t>()[(e * N1 + n) * (K / 32) + k / 32]);
            break;
        }
        worst = std::max(worst, std::fabs(deq - src));
        amax = std::max(amax, std::fabs(src));
      }
  // One grid step relative to the block max: fp8 2^-3 of the binade, e2m1 up to 1/3 (the
  // MX scale may clip the block max to 6 * scale), bf16 exact.
  const double bound = c.quant == QuantScheme::bf16 ? 0.0 : scheme_is_fp4(c.quant) ? 0.34 * amax : 0.0625 * amax;
  EXPECT_LE(worst, bound) << quant_scheme_name(c.quant);
  if (c.quant == QuantScheme::fp8_per_tensor) {
    EXPECT_EQ(*q.weights.a13_scale.data_as<float>(), 4.0f / 448.0f);
    EXPECT_EQ(*q.weights.a2_scale.data_as<float>(), 2.0f / 448.0f);
  }
}

INSTANTIATE_TEST_SUITE_P(AllSchemes, WeightConversion,
                         ::testing::Values(QuantScheme::bf16, QuantScheme::fp8_per_tensor,
                                           QuantScheme::fp8_per_channel, QuantScheme::fp8_block, QuantScheme::nvfp4,
                                           QuantScheme::mxfp4));

TEST(WeightConversion, Fp4PacksLowNibbleFirstAndSnapsExactGridValues) {
  // Weights already on the e2m1 grid with a power-of-two block max convert losslessly (MX).
  MoEConfig c = small_config(QuantScheme::mxfp4, 1, 32, 32, 1);
  Buffer w13 = Buffer::empty(DType::bf16, {1, 64, 32}), w2 = Buffer::empty(DType::bf16, {1, 32, 32});
  const float grid[8] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
  for (int i = 0; i < 64 * 32; ++i) w13.data_as<bfloat16>()[i] = float_to_bf16(i % 32 == 0 ? 6.0f : grid[i % 8]);
  for (int i = 0; i < 32 * 32; ++i) w2.data_as<bfloat16>()[i] = float_to_bf16(i % 32 == 0 ? -6.0f : -grid[i % 8]);
  const OwnedExpertWeights q = quantize_expert_weights(c, w13, w2);
  EXPECT_EQ(q.weights.w13_scale.data_as<uint8_t>()[0], 127);  // scale 1
  EXPECT_EQ(q.weights.w13.data_as<uint8_t>()[0], 0x07 | (0x01 << 4));  // 6 then 0.5
  for (int i = 0; i < 64 * 32; ++i)
    ASSERT_EQ(fp4x2_get(q.weights.w13.data_as<uint8_t>(), i), bf16_to_float(w13.data_as<bfloat16>()[i])) << i;
}

}  // namespace
}  // namespace fusedmoe::test
