// The C API (fusedmoe/c_api.h) over FusedMoEKernel: builds views of the caller's memory and
// turns every fusedmoe::Error into a return code and a message.
#include "fusedmoe/c_api.h"

#include <cstring>
#include <memory>
#include <string>

#include "fusedmoe/fusedmoe.h"

struct fmoe_layer {
  fusedmoe::MoEConfig config;
  std::unique_ptr<fusedmoe::FusedMoEKernel> kernel;
  fusedmoe::Device device;
};

namespace {

using namespace fusedmoe;

void write_error(const char* message, char* err, size_t len) {
  if (!err || len == 0) return;
  std::strncpy(err, message, len - 1);
  err[len - 1] = '\0';
}

template <class F>
int guarded(char* err, size_t len, F&& f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    write_error(e.what(), err, len);
    return 1;
  }
}

template <class T, class Parse>
T parse_or_fail(const char* name, const char* what, Parse parse) {
  FMOE_CHECK(name, what, " must be given");
  const auto v = parse(name);
  FMOE_CHECK(v.has_value(), "unknown ", what, " '", name, "'");
  return *v;
}

Tensor view(const void* p, DType dtype, std::initializer_list<int64_t> shape, Device device) {
  return p ? Tensor(const_cast<void*>(p), dtype, shape, device) : Tensor();
}

}  // namespace

extern "C" int fmoe_layer_create(const fmoe_layer_desc* d, fmoe_layer** out, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    FMOE_CHECK(d && out, "fmoe_layer_create needs a descriptor and an output pointer");
    auto layer = std::make_unique<fmoe_layer>();
    MoEConfig& c = layer->config;
    c.num_experts = d->num_experts;
    c.hidden_size = d->hidden_size;
    c.intermediate_size = d->intermediate_size;
    c.quant = parse_or_fail<QuantScheme>(d->quant, "quant", parse_quant_scheme);
    c.activation.kind = parse_or_fail<ActivationKind>(d->activation, "activation", parse_activation);
    c.routing.method = parse_or_fail<RoutingMethod>(d->routing, "routing", parse_routing_method);
    c.routing.top_k = d->top_k;
    c.routing.num_expert_group = d->num_expert_group > 0 ? d->num_expert_group : 1;
    c.routing.topk_group = d->topk_group > 0 ? d->topk_group : 1;
    c.routing.renormalize = d->renormalize != 0;
    c.routing.routed_scaling_factor = d->routed_scaling_factor != 0.0f ? d->routed_scaling_factor : 1.0f;
    const Device dev = d->device < 0 ? Device::cpu() : Device::cuda(d->device);
    layer->device = dev;
    c.routing.correction_bias = view(d->correction_bias, DType::f32, {c.num_experts}, dev);
    validate_config(c);
    const int64_t E = c.num_local_experts(), N1 = c.w13_rows(), K = c.hidden_size, I = c.intermediate_size;
    ExpertWeights w;
    const bool fp8 = c.quant == QuantScheme::fp8_block;
    FMOE_CHECK(c.quant == QuantScheme::bf16 || fp8, "the C API takes bf16 or fp8-block weights, got ",
               quant_scheme_name(c.quant));
    const DType wt = fp8 ? DType::fp8_e4m3 : DType::bf16;
    w.w13 = view(d->w13, wt, {E, N1, K}, dev);
    w.w2 = view(d->w2, wt, {E, K, I}, dev);
    if (fp8) {
      w.w13_scale = view(d->w13_scale, DType::f32, {E, (N1 + 127) / 128, (K + 127) / 128}, dev);
      w.w2_scale = view(d->w2_scale, DType::f32, {E, (K + 127) / 128, (I + 127) / 128}, dev);
    }
    KernelOptions opt;
    opt.use_monolithic = d->use_monolithic != 0;
    layer->kernel = std::make_unique<FusedMoEKernel>(make_kernel(c, w, opt));
    *out = layer.release();
  });
}

extern "C" void fmoe_layer_destroy(fmoe_layer* layer) { delete layer; }

extern "C" size_t fmoe_layer_workspace_bytes(const fmoe_layer* layer, int64_t num_tokens) {
  return layer ? layer->kernel->workspace_bytes(num_tokens) : 0;
}

extern "C" int fmoe_layer_forward(const fmoe_layer* layer, const void* hidden, const void* router_logits, void* out,
                                  int64_t M, void* workspace, void* stream, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    FMOE_CHECK(layer, "fmoe_layer_forward needs a layer");
    const MoEConfig& c = layer->config;
    const Device dev = layer->device;
    const CudaStreamGuard guard(stream);
    const Tensor ws = workspace ? Tensor(workspace, DType::u8, {int64_t(layer->kernel->workspace_bytes(M))}, dev)
                                : Tensor();
    layer->kernel->forward(view(hidden, DType::bf16, {M, c.hidden_size}, dev),
                           view(router_logits, DType::f32, {M, c.num_experts}, dev),
                           view(out, DType::bf16, {M, c.hidden_size}, dev), ws);
  });
}
