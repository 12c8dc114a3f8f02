// Number formats: hand-computed encodings, rounding ties, saturation, round trips, the
// vectorized row decoders against the scalar definitions, and the sm90 packing of fp4 data.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <tuple>
#include <utility>
#include <vector>

#include "cpu/decode_rows.h"
#include "fusedmoe/formats.h"
#include "fusedmoe/weights.h"

using namespace fusedmoe;

TEST(Fp8E4m3, HandComputedValues) {
  EXPECT_EQ(float_to_fp8_e4m3(0.0f), 0x00);
  EXPECT_EQ(float_to_fp8_e4m3(-0.0f), 0x80);
  EXPECT_EQ(float_to_fp8_e4m3(1.0f), 0x38);    // exp 7, man 0
  EXPECT_EQ(float_to_fp8_e4m3(-2.0f), 0xc0);
  EXPECT_EQ(float_to_fp8_e4m3(448.0f), 0x7e);  // max finite
  EXPECT_EQ(float_to_fp8_e4m3(0.001953125f), 0x01);  // 2^-9, smallest subnormal
  EXPECT_EQ(float_to_fp8_e4m3(0.015625f), 0x08);     // 2^-6, smallest normal
  EXPECT_EQ(float_to_fp8_e4m3(1.125f), 0x39);
  EXPECT_FLOAT_EQ(fp8_e4m3_to_float(0x7e), 448.0f);
  EXPECT_FLOAT_EQ(fp8_e4m3_to_float(0x01), 0.001953125f);
  EXPECT_FLOAT_EQ(fp8_e4m3_to_float(0x07), 7 * 0.001953125f);
  EXPECT_TRUE(std::isnan(fp8_e4m3_to_float(0x7f)));
  EXPECT_TRUE(std::isnan(fp8_e4m3_to_float(0xff)));
}

TEST(Fp8E4m3, RoundsHalfToEvenAndSaturates) {
  EXPECT_EQ(float_to_fp8_e4m3(1.0625f), 0x38);   // halfway 1.0 / 1.125 -> even (1.0)
  EXPECT_EQ(float_to_fp8_e4m3(1.1875f), 0x3a);   // halfway 1.125 / 1.25 -> even (1.25)
  EXPECT_EQ(float_to_fp8_e4m3(1.07f), 0x39);     // above half -> up
  EXPECT_EQ(float_to_fp8_e4m3(0.0029296875f), 0x02);  // 1.5 * 2^-9 -> even (2 * 2^-9)
  EXPECT_EQ(float_to_fp8_e4m3(0.0009765625f), 0x00);  // 0.5 * 2^-9 -> even (0)
  EXPECT_EQ(float_to_fp8_e4m3(464.0f), 0x7e);    // would round to 480: saturates
  EXPECT_EQ(float_to_fp8_e4m3(1e9f), 0x7e);
  EXPECT_EQ(float_to_fp8_e4m3(-INFINITY), 0xfe);
  EXPECT_EQ(float_to_fp8_e4m3(NAN) & 0x7f, 0x7f);
}

TEST(Fp8E4m3, EveryCodeRoundTrips) {
  for (int v = 0; v < 256; ++v) {
    if ((v & 0x7f) == 0x7f) continue;
    EXPECT_EQ(float_to_fp8_e4m3(fp8_e4m3_to_float(uint8_t(v))), v) << "code " << v;
  }
}

TEST(Fp4E2m1, ValuesTiesAndSaturation) {
  const float values[8] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
  for (int c = 0; c < 16; ++c) {
    const float v = (c & 8) ? -values[c & 7] : values[c & 7];
    EXPECT_EQ(fp4_e2m1_to_float(uint8_t(c)), v);
    if (c != 8) EXPECT_EQ(float_to_fp4_e2m1(v), c);  // -0 encodes as 0x8 too
  }
  EXPECT_EQ(float_to_fp4_e2m1(0.25f), 0);   // tie 0 / 0.5 -> 0
  EXPECT_EQ(float_to_fp4_e2m1(0.75f), 2);   // tie 0.5 / 1 -> 1.0
  EXPECT_EQ(float_to_fp4_e2m1(1.25f), 2);   // tie 1 / 1.5 -> 1.0
  EXPECT_EQ(float_to_fp4_e2m1(1.75f), 4);   // tie 1.5 / 2 -> 2.0
  EXPECT_EQ(float_to_fp4_e2m1(2.5f), 4);    // tie 2 / 3 -> 2
  EXPECT_EQ(float_to_fp4_e2m1(3.5f), 6);    // tie 3 / 4 -> 4
  EXPECT_EQ(float_to_fp4_e2m1(5.0f), 6);    // tie 4 / 6 -> 4
  EXPECT_EQ(float_to_fp4_e2m1(5.1f), 7);
  EXPECT_EQ(float_to_fp4_e2m1(100.0f), 7);  // saturates at 6
  EXPECT_EQ(float_to_fp4_e2m1(-100.0f), 15);
  EXPECT_EQ(float_to_fp4_e2m1(-0.3f), 9);   // -0.5
}

TEST(Ue8m0, ScalesArePowersOfTwo) {
  EXPECT_EQ(ue8m0_to_float(127), 1.0f);
  EXPECT_EQ(ue8m0_to_float(130), 8.0f);
  EXPECT_EQ(ue8m0_to_float(1), std::ldexp(1.0f, -126));
  EXPECT_EQ(ue8m0_to_float(0), std::ldexp(1.0f, -127));
  EXPECT_TRUE(std::isnan(ue8m0_to_float(255)));
  // OCP MX: 2^(floor(log2 amax) - 2)
  EXPECT_EQ(mx_e2m1_scale_from_amax(6.0f), 127);   // 2^2 * 2^-2 = 1: 6 fits exactly
  EXPECT_EQ(mx_e2m1_scale_from_amax(7.9f), 127);   // clips to 6 by definition
  EXPECT_EQ(mx_e2m1_scale_from_amax(8.0f), 128);
  EXPECT_EQ(mx_e2m1_scale_from_amax(0.5f), 124);
  EXPECT_EQ(mx_e2m1_scale_from_amax(0.0f), 0);
}

TEST(Bf16, RoundsHalfToEven) {
  EXPECT_EQ(float_to_bf16(1.0f).bits, 0x3f80);
  EXPECT_EQ(float_to_bf16(1.00390625f).bits, 0x3f80);  // halfway -> even
  EXPECT_EQ(float_to_bf16(1.01171875f).bits, 0x3f82);  // halfway 0x3f81/0x3f82 -> even
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(NAN))));
  EXPECT_EQ(bf16_to_float(float_to_bf16(INFINITY)), INFINITY);
}

TEST(RowDecoders, MatchScalarDefinitions) {
  uint8_t codes[256];
  float fast[256];
  for (int v = 0; v < 256; ++v) codes[v] = uint8_t(v);
  cpu::decode_fp8_row(codes, 256, fast);
  for (int v = 0; v < 256; ++v) {
    const float ref = fp8_e4m3_to_float(uint8_t(v));
    if (std::isnan(ref)) EXPECT_TRUE(std::isnan(fast[v])) << v;
    else EXPECT_EQ(fast[v], ref) << "code " << v;
  }
  const float scales[8] = {1, 2, 0.5f, 3, 1, 1, 1, 1};
  float fp4[256];
  cpu::decode_fp4_row(codes, 256, scales, 32, fp4);
  for (int i = 0; i < 256; ++i) EXPECT_EQ(fp4[i], fp4x2_get(codes, i) * scales[i / 32]) << i;
}

// The sm90 packing of fp4 data (formats.h): value i of a segment, read back through fp4_sm90_bit, is the
// checkpoint's value i; segments lie segment-major in tiles of 16 rows; pack_fp4_weights_sm90 rewrites w13 and w2
// in place (here on the CPU; test_cuda_experts runs it on a GPU) and marks the weights, and copies of them keep the
// mark.
uint8_t sm90_code(const uint32_t (&packed)[4], int i) {
  const int byte = i / 2, c = byte % 4, q = byte / 4;
  uint32_t code = 0;
  for (int j = 0; j < 4; ++j) code |= ((packed[c] >> fp4_sm90_bit(2 * q + i % 2, j)) & 1u) << j;
  return uint8_t(code);
}

TEST(Fp4Sm90Packing, EveryValueInItsPlace) {
  uint32_t state = 12345u;
  for (int trial = 0; trial < 1000; ++trial) {
    uint32_t seg[4], packed[4];
    for (uint32_t& w : seg) w = state = state * 1664525u + 1013904223u;
    fp4_pack_segment_sm90(seg, packed);
    const auto* bytes = reinterpret_cast<const uint8_t*>(seg);
    for (int i = 0; i < 32; ++i)
      ASSERT_EQ(sm90_code(packed, i), (i % 2 ? bytes[i / 2] >> 4 : bytes[i / 2] & 0xf)) << "value " << i;
  }
}

TEST(Fp4Sm90Packing, TilesOf16RowsSegmentMajor) {
  // Rows of 64 bytes (4 segments): row 17 is row 1 of the second tile (at 16 x 64 bytes), its segment 2 in
  // segment column 2 (at 2 x 256 bytes), after row 0's (16 bytes).
  EXPECT_EQ(fp4_sm90_segment_offset(17, 2, 64), 16 * 64 + 2 * 256 + 16);
  EXPECT_EQ(fp4_sm90_segment_offset(0, 0, 64), 0);
  EXPECT_EQ(fp4_sm90_segment_offset(15, 3, 64), 3 * 256 + 15 * 16);  // a tile's last 16 bytes
  // Every segment of 3 tiles of rows of 48 bytes has its own place, inside its tile.
  std::vector<int> seen(3 * 16 * 48 / 16, 0);
  for (int r = 0; r < 48; ++r)
    for (int seg = 0; seg < 3; ++seg) {
      const int64_t at = fp4_sm90_segment_offset(r, seg, 48);
      ASSERT_EQ(at % 16, 0);
      ASSERT_EQ(at / (16 * 48), r / 16) << "row " << r << " segment " << seg;
      ++seen[at / 16];
    }
  for (size_t i = 0; i < seen.size(); ++i) EXPECT_EQ(seen[i], 1) << "16 bytes at " << 16 * i;
}

TEST(Fp4Sm90Packing, PacksWeightsInPlace) {
  for (QuantScheme s : {QuantScheme::nvfp4, QuantScheme::mxfp4}) {
    MoEConfig c;  // rows of 64 (w13) and 32 (w2) bytes: 4 and 2 segments
    c.num_experts = 4, c.hidden_size = 128, c.intermediate_size = 64, c.quant = s;
    c.routing.top_k = 2;
    OwnedExpertWeights owned = allocate_expert_weights(c, c.num_experts);
    ExpertWeights& w = owned.weights;
    uint8_t n = 7;
    for (const Tensor* t : {&w.w13, &w.w2, &w.w13_scale, &w.w2_scale, &w.w13_global_scale, &w.w2_global_scale})
      if (t->defined())
        for (size_t b = 0; b < t->nbytes(); ++b) static_cast<uint8_t*>(t->data())[b] = n = uint8_t(n * 37 + 11);
    const OwnedExpertWeights before = copy_expert_weights(w, Device::cpu());
    pack_fp4_weights_sm90(c, w);
    EXPECT_EQ(w.fp4_packing, Fp4Packing::sm90);
    EXPECT_EQ(copy_expert_weights(w, Device::cpu()).weights.fp4_packing, Fp4Packing::sm90);
    for (auto [now, was, row_bytes] : {std::tuple{&w.w13, &before.weights.w13, c.hidden_size / 2},
                                       std::tuple{&w.w2, &before.weights.w2, c.intermediate_size / 2}}) {
      const int64_t rows = static_cast<int64_t>(now->nbytes()) / row_bytes;
      ASSERT_EQ(rows % 16, 0);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t seg = 0; seg < row_bytes / 16; ++seg) {
          uint32_t in[4], want[4], got[4];
          std::memcpy(in, static_cast<const uint8_t*>(was->data()) + r * row_bytes + seg * 16, 16);
          std::memcpy(got, static_cast<const uint8_t*>(now->data()) + fp4_sm90_segment_offset(r, seg, row_bytes), 16);
          fp4_pack_segment_sm90(in, want);
          for (int i = 0; i < 4; ++i)
            ASSERT_EQ(got[i], want[i]) << quant_scheme_name(s) << " row " << r << " segment " << seg;
        }
    }
    EXPECT_EQ(std::memcmp(w.w13_scale.data(), before.weights.w13_scale.data(), w.w13_scale.nbytes()), 0)
        << "scales are left as they are";
  }
}
