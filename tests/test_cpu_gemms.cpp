// The CPU backend's two GEMM implementations, each held to the contracts on its own: the AMX
// tile GEMMs (where the CPU has AMX: the default there) and the f32 GEMMs (CPUs without AMX,
// FUSEDMOE_CPU_AMX=0). Both against the float64 reference at shapes on and off their tiles,
// run-twice bitwise, and batch-invariant, for every scheme; the AMX cases skip where the CPU
// lacks it.
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <utility>

#include "cpu/amx_gemm.h"
#include "test_util.h"

namespace fusedmoe::test {
namespace {

// Sets FUSEDMOE_CPU_AMX for one scope and restores what was there.
class AmxSwitch {
 public:
  explicit AmxSwitch(bool on) {
    if (const char* v = std::getenv("FUSEDMOE_CPU_AMX")) old_ = v;
    if (on) unsetenv("FUSEDMOE_CPU_AMX");
    else setenv("FUSEDMOE_CPU_AMX", "0", 1);
  }
  ~AmxSwitch() {
    if (old_) setenv("FUSEDMOE_CPU_AMX", old_->c_str(), 1);
    else unsetenv("FUSEDMOE_CPU_AMX");
  }

 private:
  std::optional<std::string> old_;
};

Buffer run_cpu(const Problem& p, int64_t first_token, int64_t tokens) {
  KernelOptions opt;
  opt.backend = Backend::cpu;
  const FusedMoEKernel kernel = make_kernel(p.config, p.weights.weights, opt);
  const int64_t K = p.config.hidden_size, k = p.config.routing.top_k;
  const Tensor h(p.hidden.data_as<bfloat16>() + first_token * K, DType::bf16, {tokens, K});
  const Tensor ids(p.ids.data_as<int32_t>() + first_token * k, DType::i32, {tokens, k});
  const Tensor w(p.topk_weights.data_as<float>() + first_token * k, DType::f32, {tokens, k});
  Buffer out = poisoned_bf16(tokens, K);
  kernel.apply(h, ids, w, out);
  return out;
}

using PathScheme = std::tuple<bool, QuantScheme>;  // (AMX, scheme)

class CpuGemms : public ::testing::TestWithParam<PathScheme> {
 protected:
  void SetUp() override {
    if (std::get<0>(GetParam()) && !cpu::amx::supported()) GTEST_SKIP() << "this CPU or OS gives no AMX tiles";
  }
};

// Experts of 0-70 rows (one to five tiles of 16 rows, and past an item's 64 rows), with w13 and w2 biases, at two
// shapes. Off the tiles: k ends inside a 32-wide step (bf16 and fp8: K = 200; nvfp4: K = 208) or a 64-wide
// conversion chunk (fp4, mxfp4: K = 224), and weight rows end inside a 16-row tile (bf16 and fp8: I = 76). On them:
// K = 256, I = 128 (bf16 weights read where they lie).
TEST_P(CpuGemms, MatchTheReferenceOnAndOffTheirTiles) {
  const auto [amx, scheme] = GetParam();
  const AmxSwitch path(amx);
  ASSERT_EQ(cpu::amx::enabled(), amx);
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  const std::pair<int64_t, int64_t> off = scheme == QuantScheme::nvfp4   ? std::pair<int64_t, int64_t>{208, 80}
                                          : scheme == QuantScheme::mxfp4 ? std::pair<int64_t, int64_t>{224, 96}
                                                                         : std::pair<int64_t, int64_t>{200, 76};
  for (const auto [K, I] : {off, std::pair<int64_t, int64_t>{256, 128}}) {
    SCOPED_TRACE("K " + std::to_string(K) + ", I " + std::to_string(I));
    MoEConfig c = small_config(scheme, /*E=*/6, K, I, /*top_k=*/2);
    c.routing.method = RoutingMethod::precomputed;
    c.activation.kind = ActivationKind::swiglu_oai;
    Problem p = make_problem(c, /*M=*/90, seed, /*with_bias=*/true);
    // Rows per expert, in slot order: 70, 46, 33, 16, 15 and none.
    const int32_t rows[6] = {70, 46, 33, 16, 15, 0};
    for (int32_t e = 0, slot = 0; e < 6; ++e)
      for (int32_t i = 0; i < rows[e]; ++i, ++slot) p.ids.data_as<int32_t>()[slot] = e;
    const Buffer out = run_cpu(p, 0, 90);
    expect_matches_reference(p, out, p.ids, p.topk_weights);
    EXPECT_TRUE(bits_equal(out, run_cpu(p, 0, 90))) << "run twice differs";
  }
}

TEST_P(CpuGemms, BatchInvariant) {
  const auto [amx, scheme] = GetParam();
  const AmxSwitch path(amx);
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  const Problem p = make_problem(small_config(scheme, 12, 256, 128, 4), 70, seed);
  const Buffer full = run_cpu(p, 0, 70);
  const int64_t K = p.config.hidden_size;
  for (int64_t t : {0, 33, 69}) {
    const Buffer alone = run_cpu(p, t, 1);
    EXPECT_EQ(std::memcmp(alone.data_as<bfloat16>(), full.data_as<bfloat16>() + t * K, K * 2), 0)
        << "token " << t << " alone differs from its row in the batch";
  }
}

INSTANTIATE_TEST_SUITE_P(BothPaths, CpuGemms,
                         ::testing::Combine(::testing::Bool(),
                                            ::testing::Values(QuantScheme::bf16, QuantScheme::fp8_per_tensor,
                                                              QuantScheme::fp8_per_channel, QuantScheme::fp8_block,
                                                              QuantScheme::nvfp4, QuantScheme::mxfp4)),
                         [](const auto& info) {
                           std::string n = std::string(std::get<0>(info.param) ? "amx_" : "f32_") +
                                           quant_scheme_name(std::get<1>(info.param));
                           for (char& ch : n)
                             if (ch == '-') ch = '_';
                           return n;
                         });

// FUSEDMOE_CPU_AMX=0 keeps the f32 GEMMs.
TEST(CpuGemmsSwitch, EnvironmentAndSchemesChooseThePath) {
  {
    const AmxSwitch off(false);
    EXPECT_FALSE(cpu::amx::enabled());
  }
  {
    const AmxSwitch on(true);
    EXPECT_EQ(cpu::amx::enabled(), cpu::amx::supported());
  }
  EXPECT_EQ(cpu::amx::packed_bytes(100, 8, 200) > 0, cpu::amx::supported());
}

}  // namespace
}  // namespace fusedmoe::test
