// Uses only the installed public headers: bf16 weights -> kernel -> forward, checked against
// the float64 reference.
#include <cmath>
#include <cstdio>
#include <vector>

#include <fusedmoe/fusedmoe.h>

int main() {
  using namespace fusedmoe;
  MoEConfig config;
  config.num_experts = 4;
  config.hidden_size = 64;
  config.intermediate_size = 32;
  config.routing.method = RoutingMethod::topk_softmax;
  config.routing.top_k = 2;
  const int64_t E = 4, K = 64, I = 32, M = 3;
  std::vector<bfloat16> w13(E * 2 * I * K), w2(E * K * I), hidden(M * K), out(M * K);
  std::vector<float> logits(M * E);
  for (size_t i = 0; i < w13.size(); ++i) w13[i] = float_to_bf16(std::sin(0.37f * float(i)) * 0.1f);
  for (size_t i = 0; i < w2.size(); ++i) w2[i] = float_to_bf16(std::cos(0.21f * float(i)) * 0.1f);
  for (size_t i = 0; i < hidden.size(); ++i) hidden[i] = float_to_bf16(std::sin(1.3f * float(i)));
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = std::cos(2.1f * float(i));
  const OwnedExpertWeights weights =
      quantize_expert_weights(config, Tensor(w13.data(), DType::bf16, {E, 2 * I, K}),
                              Tensor(w2.data(), DType::bf16, {E, K, I}));
  const FusedMoEKernel kernel = make_kernel(config, weights.weights);
  const Tensor h(hidden.data(), DType::bf16, {M, K}), o(out.data(), DType::bf16, {M, K});
  kernel.forward(h, Tensor(logits.data(), DType::f32, {M, E}), o);
  std::vector<int32_t> ids(M * 2);
  std::vector<float> tw(M * 2);
  const Tensor ids_t(ids.data(), DType::i32, {M, 2}), tw_t(tw.data(), DType::f32, {M, 2});
  route(config.routing, Tensor(logits.data(), DType::f32, {M, E}), ids_t, tw_t);
  const std::vector<double> ref = reference_moe(config, weights.weights, h, ids_t, tw_t);
  double worst = 0.0, scale = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    worst = std::fmax(worst, std::fabs(bf16_to_float(out[i]) - ref[i]));
    scale = std::fmax(scale, std::fabs(ref[i]));
  }
  std::printf("consumer: max |out - ref| = %.3g (max |ref| %.3g)\n", worst, scale);
  return scale > 0.0 && worst <= 2e-2 * scale ? 0 : 1;
}
