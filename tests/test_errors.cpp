// Bad input: every case must throw fusedmoe::Error whose message names the argument, and
// leave the output exactly as it was (poisoned before the call).
#include "test_util.h"

namespace fusedmoe::test {
namespace {

constexpr int64_t kM = 4, kE = 8, kK = 128, kI = 64, kTopK = 2;

class BadInput : public ::testing::Test {
 protected:
  BadInput() : p(make_problem(small_config(QuantScheme::fp8_block, kE, kK, kI, kTopK), kM, test_seed())) {}

  // Runs `call`, which must throw an Error mentioning `needle`; `out` must be untouched.
  template <class Fn>
  void expect_error(Fn call, const std::string& needle) {
    const Buffer before = poisoned_bf16(kM, kK);
    try {
      call();
      ADD_FAILURE() << "no fusedmoe::Error for a bad input (expected a message naming '" << needle << "')";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << "message: " << e.what();
    } catch (const std::exception& e) {
      ADD_FAILURE() << "threw a non-fusedmoe exception: " << e.what();
    }
    EXPECT_TRUE(bits_equal(out, before)) << "the output was written although validation failed";
  }

  FusedMoEKernel kernel(bool monolithic = false) {
    KernelOptions o;
    o.use_monolithic = monolithic;
    return make_kernel(p.config, p.weights.weights, o);
  }

  Problem p;
  Buffer out = poisoned_bf16(kM, kK);
};

// ---- call arguments ----------------------------------------------------------------------
TEST_F(BadInput, HiddenWrongDtype) {
  Buffer h = Buffer::empty(DType::f32, {kM, kK});
  expect_error([&] { kernel().apply(h, p.ids, p.topk_weights, out); }, "hidden");
}
TEST_F(BadInput, HiddenWrongHiddenSize) {
  Buffer h = testing::random_bf16({kM, kK + 1}, 1);
  expect_error([&] { kernel().apply(h, p.ids, p.topk_weights, out); }, "hidden");
}
TEST_F(BadInput, HiddenNonContiguous) {
  const int64_t shape[] = {kM, kK}, strides[] = {1, kM};
  const Tensor h(p.hidden.view().data(), DType::bf16, shape, strides, Device::cpu());
  expect_error([&] { kernel().apply(h, p.ids, p.topk_weights, out); }, "hidden");
}
TEST_F(BadInput, HiddenMisaligned) {
  Buffer raw = Buffer::bytes(kM * kK * 2 + 2);
  const Tensor h(raw.data_as<uint8_t>() + 1, DType::bf16, {kM, kK});
  expect_error([&] { kernel().apply(h, p.ids, p.topk_weights, out); }, "misaligned");
}
TEST_F(BadInput, HiddenThreeDimensional) {
  const Tensor h(p.hidden.view().data(), DType::bf16, {1, kM, kK});
  expect_error([&] { kernel().apply(h, p.ids, p.topk_weights, out); }, "hidden");
}
TEST_F(BadInput, HiddenOnADeviceWithoutBackend) {
  const Tensor h(p.hidden.view().data(), DType::bf16, {kM, kK}, Device::cuda(0));
  expect_error([&] { kernel().apply(h, p.ids, p.topk_weights, out); }, "hidden");
}
TEST_F(BadInput, OutWrongRows) {
  Buffer small = poisoned_bf16(kM - 1, kK);
  expect_error([&] { kernel().apply(p.hidden, p.ids, p.topk_weights, small); }, "out");
}
TEST_F(BadInput, OutWrongDtype) {
  Buffer f = Buffer::empty(DType::f32, {kM, kK});
  expect_error([&] { kernel().apply(p.hidden, p.ids, p.topk_weights, f); }, "out");
}
TEST_F(BadInput, TopkIdsWrongDtype) {
  Buffer ids = Buffer::empty(DType::i64, {kM, kTopK});
  expect_error([&] { kernel().apply(p.hidden, ids, p.topk_weights, out); }, "topk_ids");
}
TEST_F(BadInput, TopkIdsWrongK) {
  Buffer ids = Buffer::empty(DType::i32, {kM, kTopK + 1});
  expect_error([&] { kernel().apply(p.hidden, ids, p.topk_weights, out); }, "topk_ids");
}
TEST_F(BadInput, TopkWeightsWrongDtype) {
  Buffer w = Buffer::empty(DType::bf16, {kM, kTopK});
  expect_error([&] { kernel().apply(p.hidden, p.ids, w, out); }, "topk_weights");
}
TEST_F(BadInput, TopkWeightsWrongRows) {
  Buffer w = Buffer::empty(DType::f32, {kM + 2, kTopK});
  expect_error([&] { kernel().apply(p.hidden, p.ids, w, out); }, "topk_weights");
}
TEST_F(BadInput, RouterLogitsWrongExpertCount) {
  Buffer l = testing::random_f32({kM, kE + 1}, 2);
  expect_error([&] { kernel().forward(p.hidden, l, out); }, "router_logits");
}
TEST_F(BadInput, RouterLogitsWrongDtype) {
  Buffer l = Buffer::empty(DType::i32, {kM, kE});
  expect_error([&] { kernel(true).apply_monolithic(p.hidden, l, out); }, "router_logits");
}
TEST_F(BadInput, WorkspaceTooSmall) {
  const FusedMoEKernel k = kernel();
  Buffer ws = Buffer::bytes(k.workspace_bytes(kM) - 64);
  expect_error([&] { k.apply(p.hidden, p.ids, p.topk_weights, out, ws); }, "workspace");
}
TEST_F(BadInput, WorkspaceWrongDtype) {
  Buffer ws = Buffer::empty(DType::f32, {1 << 20});
  expect_error([&] { kernel().apply(p.hidden, p.ids, p.topk_weights, out, ws); }, "workspace");
}
TEST_F(BadInput, StrictIdOutOfRange) {
  p.config.strict_expert_ids = true;
  p.ids.data_as<int32_t>()[3] = kE;
  expect_error([&] { kernel().apply(p.hidden, p.ids, p.topk_weights, out); }, "topk_ids[1, 1]");
}
TEST_F(BadInput, ApplyOnAMonolithicKernel) {
  expect_error([&] { kernel(true).apply(p.hidden, p.ids, p.topk_weights, out); }, "apply_monolithic");
}
TEST_F(BadInput, ApplyMonolithicOnAModularKernel) {
  expect_error([&] { kernel().apply_monolithic(p.hidden, p.logits, out); }, "modular");
}
TEST_F(BadInput, ForwardWithPrecomputedRouting) {
  p.config.routing.method = RoutingMethod::precomputed;
  expect_error([&] { kernel().forward(p.hidden, p.logits, out); }, "precomputed");
}

// ---- configuration -----------------------------------------------------------------------
TEST_F(BadInput, TopKLargerThanExperts) {
  p.config.routing.top_k = kE + 1;
  expect_error([&] { kernel(); }, "routing.top_k");
}
TEST_F(BadInput, ZeroExperts) {
  p.config.num_experts = 0;
  expect_error([&] { kernel(); }, "num_experts");
}
TEST_F(BadInput, ExpertGroupsNotDividingExperts) {
  p.config.routing.method = RoutingMethod::deepseek_v3;
  p.config.routing.num_expert_group = 3;
  expect_error([&] { kernel(); }, "routing.num_expert_group");
}
TEST_F(BadInput, TopkGroupAboveGroupCount) {
  p.config.routing.method = RoutingMethod::deepseek_v3;
  p.config.routing.num_expert_group = 4;
  p.config.routing.topk_group = 5;
  expect_error([&] { kernel(); }, "routing.topk_group");
}
TEST_F(BadInput, Llama4WithTopTwo) {
  p.config.routing.method = RoutingMethod::llama4;
  expect_error([&] { kernel(); }, "routing.top_k == 1");
}
TEST_F(BadInput, CorrectionBiasOutsideDeepSeek) {
  Buffer bias = testing::random_f32({kE}, 3);
  p.config.routing.correction_bias = bias.view();
  expect_error([&] { kernel(); }, "routing.correction_bias");
}
TEST_F(BadInput, ExpertMapSlotTwice) {
  Buffer map = Buffer::empty(DType::i32, {kE});
  const int32_t values[kE] = {0, 1, 1, -1, 2, 3, 4, 5};
  std::copy_n(values, kE, map.data_as<int32_t>());
  p.config.parallel.expert_map = map.view();
  expect_error([&] { kernel(); }, "exactly once");
}
TEST_F(BadInput, ExpertMapValueOutOfRange) {
  Buffer map = Buffer::empty(DType::i32, {kE});
  const int32_t values[kE] = {0, 1, 2, 3, 4, 5, 6, 9};
  std::copy_n(values, kE, map.data_as<int32_t>());
  p.config.parallel.expert_map = map.view();
  expect_error([&] { kernel(); }, "parallel.expert_map[7]");
}
TEST_F(BadInput, ExpertMapWrongLength) {
  Buffer map = Buffer::empty(DType::i32, {kE - 1});
  p.config.parallel.expert_map = map.view();
  expect_error([&] { kernel(); }, "parallel.expert_map");
}
TEST_F(BadInput, SwigluLimitNotPositive) {
  p.config.activation.kind = ActivationKind::swiglu_oai;
  p.config.activation.limit = 0.0f;
  expect_error([&] { kernel(); }, "activation.limit");
}
TEST_F(BadInput, Fp4HiddenSizeNotAMultipleOfTheGroup) {
  MoEConfig c = small_config(QuantScheme::nvfp4, kE, 120, kI, kTopK);
  expect_error([&] { allocate_expert_weights(c, kE); validate_config(c); }, "hidden_size");
}

// ---- weights -----------------------------------------------------------------------------
TEST_F(BadInput, W13WrongShape) {
  Buffer w = Buffer::empty(DType::fp8_e4m3, {kE, 2 * kI + 1, kK});
  p.weights.weights.w13 = w.view();
  expect_error([&] { kernel(); }, "weights.w13");
}
TEST_F(BadInput, BlockScalesMissing) {
  p.weights.weights.w2_scale = Tensor();
  expect_error([&] { kernel(); }, "weights.w2_scale");
}
TEST_F(BadInput, BlockScalesWrongShape) {
  Buffer s = Buffer::empty(DType::f32, {kE, 2, 2});
  p.weights.weights.w13_scale = s.view();
  expect_error([&] { kernel(); }, "weights.w13_scale");
}
TEST_F(BadInput, ScalesGivenToBf16Weights) {
  p.config.quant = QuantScheme::bf16;
  Buffer w13 = Buffer::empty(DType::bf16, {kE, 2 * kI, kK}), w2 = Buffer::empty(DType::bf16, {kE, kK, kI});
  p.weights.weights.w13 = w13.view();
  p.weights.weights.w2 = w2.view();
  expect_error([&] { kernel(); }, "weights.w13_scale must be undefined");
}
TEST_F(BadInput, WeightsOnAnotherDeviceForTheCpuBackend) {
  ExpertWeights w = p.weights.weights;
  w.w13 = Tensor(w.w13.data(), w.w13.dtype(), w.w13.shape(), Device::cuda(0));
  KernelOptions o;
  o.backend = Backend::cpu;
  expect_error([&] { make_kernel(p.config, w, o); }, "weights");
}
// ---- the sm90 fp4 packing (pack_fp4_weights_sm90) ---------------------------------------
TEST_F(BadInput, Fp4PackingOfNonFp4Weights) {
  expect_error([&] { pack_fp4_weights_sm90(p.config, p.weights.weights); }, "nvfp4 or mxfp4");
  p.weights.weights.fp4_packing = Fp4Packing::sm90;
  expect_error([&] { kernel(); }, "weights.fp4_packing");
}
TEST_F(BadInput, Fp4PackingTwice) {
  Problem q = make_problem(small_config(QuantScheme::nvfp4, kE, kK, kI, kTopK), kM, 6);
  pack_fp4_weights_sm90(q.config, q.weights.weights);
  expect_error([&] { pack_fp4_weights_sm90(q.config, q.weights.weights); }, "already in the sm90 packing");
}
TEST_F(BadInput, Sm90PackedFp4WeightsForTheCpuExpertsAndTheReference) {
  Problem q = make_problem(small_config(QuantScheme::mxfp4, kE, kK, kI, kTopK), kM, 7);
  pack_fp4_weights_sm90(q.config, q.weights.weights);
  KernelOptions o;
  o.backend = Backend::cpu;
  expect_error([&] { make_kernel(q.config, q.weights.weights, o); }, "the CPU experts read fp4 weights");
  expect_error([&] { reference_moe(q.config, q.weights.weights, q.hidden, q.ids, q.topk_weights); },
               "the reference read fp4 weights");
}
TEST_F(BadInput, StaticScaleNotFinite) {
  MoEConfig c = small_config(QuantScheme::fp8_per_tensor, kE, kK, kI, kTopK);
  Problem q = make_problem(c, kM, 5);
  *q.weights.weights.a2_scale.data_as<float>() = NAN;
  expect_error([&] { make_kernel(q.config, q.weights.weights); }, "weights.a2_scale");
}

// ---- composition -------------------------------------------------------------------------
TEST_F(BadInput, ModularPrepareFinalizeWithMonolithicExperts) {
  expect_error(
      [&] {
        FusedMoEKernel k(p.config, make_prepare_finalize(p.config, nullptr, false),
                         make_experts(p.config, p.weights.weights, Backend::cpu, true));
      },
      "pair modular with modular");
}
TEST_F(BadInput, BatchedPrepareFinalizeWithStandardExperts) {
  MoEConfig batched = p.config;
  batched.activation_format = ActivationFormat::batched;
  batched.max_tokens_per_expert = 16;
  expect_error(
      [&] {
        FusedMoEKernel k(p.config, make_prepare_finalize(batched, nullptr, false),
                         make_experts(p.config, p.weights.weights, Backend::cpu, false));
      },
      "format");
}
TEST_F(BadInput, MonolithicWithPrecomputedRouting) {
  p.config.routing.method = RoutingMethod::precomputed;
  expect_error([&] { kernel(true); }, "precomputed");
}
TEST_F(BadInput, BatchedCapacityExceeded) {
  p.config.activation_format = ActivationFormat::batched;
  p.config.max_tokens_per_expert = 1;
  for (int64_t i = 0; i < kM * kTopK; ++i) p.ids.data_as<int32_t>()[i] = int32_t(i % 2 ? 3 : 5);
  expect_error([&] { kernel().apply(p.hidden, p.ids, p.topk_weights, out); }, "max_tokens_per_expert=1");
}
TEST_F(BadInput, CommunicatorSizeDisagreesWithConfig) {
  const auto group = make_in_process_group(2);
  KernelOptions o;
  o.communicator = group[0].get();
  expect_error([&] { make_kernel(p.config, p.weights.weights, o); }, "must equal the communicator's size");
}
TEST_F(BadInput, ExpertParallelWithoutMapOrTokenBound) {
  p.config.parallel.ep_size = 2;
  expect_error([&] { make_kernel(p.config, p.weights.weights); }, "parallel.expert_map is required");
}

}  // namespace
}  // namespace fusedmoe::test
