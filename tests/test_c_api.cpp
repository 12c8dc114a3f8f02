// The C API (libfusedmoe_c) on the CPU: a layer built from raw pointers gives the C++ kernel's
// output bit for bit, for bf16, fp8-block, nvfp4 (global scales) and mxfp4 with expert biases and
// swiglu-oai (gpt-oss's layer); bad descriptors and calls return 1 with the library's message and write
// nothing to the output; fp4 weights are packed in place for the CUDA kernels.
#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "fusedmoe/c_api.h"
#include "fusedmoe/formats.h"
#include "test_util.h"

namespace fusedmoe::test {
namespace {

fmoe_layer_desc describe(const Problem& p, const char* quant, const char* activation) {
  const ExpertWeights& w = p.weights.weights;
  auto ptr = [](const Tensor& t) -> const void* { return t.defined() ? t.data() : nullptr; };
  fmoe_layer_desc d{};
  d.num_experts = p.config.num_experts;
  d.hidden_size = p.config.hidden_size;
  d.intermediate_size = p.config.intermediate_size;
  d.top_k = p.config.routing.top_k;
  d.quant = quant;
  d.activation = activation;
  d.routing = "topk-softmax";
  d.device = -1;
  d.w13 = ptr(w.w13), d.w2 = ptr(w.w2), d.w13_scale = ptr(w.w13_scale), d.w2_scale = ptr(w.w2_scale);
  d.w13_global_scale = ptr(w.w13_global_scale), d.w2_global_scale = ptr(w.w2_global_scale);
  d.w13_bias = ptr(w.w13_bias), d.w2_bias = ptr(w.w2_bias);
  return d;
}

TEST(CApi, EverySchemeWithBiasesEqualsTheCppKernel) {
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  for (QuantScheme s : {QuantScheme::bf16, QuantScheme::fp8_block, QuantScheme::nvfp4, QuantScheme::mxfp4}) {
    SCOPED_TRACE(quant_scheme_name(s));
    MoEConfig c = small_config(s, 8, 256, 128, 4);
    c.activation.kind = ActivationKind::swiglu_oai;
    c.routing.method = RoutingMethod::topk_softmax;
    const int64_t M = 9;
    const Problem p = make_problem(c, M, seed, /*with_bias=*/true);
    const fmoe_layer_desc d = describe(p, quant_scheme_name(s), "swiglu-oai");
    fmoe_layer* layer = nullptr;
    char err[512] = "";
    ASSERT_EQ(fmoe_layer_create(&d, &layer, err, sizeof(err)), 0) << err;
    Buffer got = poisoned_bf16(M, 256);
    ASSERT_EQ(fmoe_layer_forward(layer, p.hidden.view().data(), p.logits.view().data(), got.view().data(), M, nullptr, nullptr, err,
                                 sizeof(err)),
              0)
        << err;
    fmoe_layer_destroy(layer);
    Buffer want = poisoned_bf16(M, 256);
    make_kernel(p.config, p.weights.weights).forward(p.hidden, p.logits, want);
    EXPECT_TRUE(bits_equal(got, want));
  }
}

TEST(CApi, BadDescriptorsAreErrorsWithTheLibraryMessage) {
  const Problem p = make_problem(small_config(QuantScheme::nvfp4, 8, 256, 128, 2), 3, 1);
  char err[512] = "";
  fmoe_layer* layer = nullptr;
  fmoe_layer_desc d = describe(p, "nvfp4", "silu");
  d.w13_global_scale = nullptr;  // nvfp4 needs its global scales
  EXPECT_EQ(fmoe_layer_create(&d, &layer, err, sizeof(err)), 1);
  EXPECT_NE(std::string(err).find("w13_global_scale"), std::string::npos) << err;
  EXPECT_EQ(layer, nullptr);
  d = describe(p, "fp5", "silu");
  EXPECT_EQ(fmoe_layer_create(&d, &layer, err, sizeof(err)), 1);
  EXPECT_NE(std::string(err).find("unknown quant 'fp5'"), std::string::npos) << err;
  // A forward without hidden states: an error, the output untouched.
  d = describe(p, "nvfp4", "silu");
  ASSERT_EQ(fmoe_layer_create(&d, &layer, err, sizeof(err)), 0) << err;
  Buffer out = poisoned_bf16(3, 256);
  EXPECT_EQ(fmoe_layer_forward(layer, nullptr, p.logits.view().data(), out.view().data(), 3, nullptr, nullptr, err,
                               sizeof(err)),
            1);
  EXPECT_NE(std::string(err).find("hidden"), std::string::npos) << err;
  EXPECT_TRUE(bits_equal(out, poisoned_bf16(3, 256)));
  fmoe_layer_destroy(layer);
}

// fmoe_pack_fp4_weights_sm90 rewrites the described w13 and w2 in place (here on the CPU) into the sm90 packing; the
// CPU layer then refuses them (it reads the checkpoint's order), and fp4_packing takes 0 or 1 only.
TEST(CApi, PacksFp4WeightsInPlace) {
  Problem p = make_problem(small_config(QuantScheme::mxfp4, 8, 256, 128, 2), 3, 2);
  const Buffer before = copy_to(p.weights.weights.w2, Device::cpu());
  fmoe_layer_desc d = describe(p, "mxfp4", "silu");
  char err[512] = "";
  ASSERT_EQ(fmoe_pack_fp4_weights_sm90(&d, err, sizeof(err)), 0) << err;
  const int64_t row_bytes = p.config.intermediate_size / 2;  // w2's rows
  for (int64_t at = 0; at < static_cast<int64_t>(before.nbytes()); at += 16) {
    const int64_t r = at / row_bytes, seg = at % row_bytes / 16;
    uint32_t in[4], want[4], got[4];
    std::memcpy(in, before.data_as<const uint8_t>() + at, 16);
    std::memcpy(got, p.weights.weights.w2.data_as<const uint8_t>() + fp4_sm90_segment_offset(r, seg, row_bytes), 16);
    fp4_pack_segment_sm90(in, want);
    ASSERT_EQ(std::memcmp(got, want, 16), 0) << "row " << r << " segment " << seg;
  }
  fmoe_layer* layer = nullptr;
  d.fp4_packing = 1;
  EXPECT_EQ(fmoe_layer_create(&d, &layer, err, sizeof(err)), 1);
  EXPECT_NE(std::string(err).find("the CPU experts read fp4 weights in the checkpoint's order"), std::string::npos)
      << err;
  d.fp4_packing = 2;
  EXPECT_EQ(fmoe_layer_create(&d, &layer, err, sizeof(err)), 1);
  EXPECT_NE(std::string(err).find("fp4_packing must be 0"), std::string::npos) << err;
  EXPECT_EQ(layer, nullptr);
  d = describe(p, "mxfp4", "silu");
  d.quant = "bf16";
  EXPECT_EQ(fmoe_pack_fp4_weights_sm90(&d, err, sizeof(err)), 1);
}

}  // namespace
}  // namespace fusedmoe::test
