// The C API (fusedmoe/c_api.h) over FusedMoEKernel: builds views of the caller's memory and
// turns every fusedmoe::Error into a return code and a message.
#include "fusedmoe/c_api.h"

#include <cstring>
#include <memory>
#include <string>

#include "core/weight_layout.h"
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

// The layer's config from the descriptor (validated).
MoEConfig config_from(const fmoe_layer_desc* d, Device dev) {
  MoEConfig c;
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
  c.routing.correction_bias = view(d->correction_bias, DType::f32, {c.num_experts}, dev);
  validate_config(c);
  return c;
}

// Views of the caller's pointers in the scheme's layout (shapes and dtypes from the one table validation
// reads); make_kernel validates them.
ExpertWeights weights_from(const MoEConfig& c, const fmoe_layer_desc* d, Device dev) {
  const std::pair<Tensor ExpertWeights::*, const void*> given[] = {
      {&ExpertWeights::w13, d->w13},
      {&ExpertWeights::w2, d->w2},
      {&ExpertWeights::w13_scale, d->w13_scale},
      {&ExpertWeights::w2_scale, d->w2_scale},
      {&ExpertWeights::w13_global_scale, d->w13_global_scale},
      {&ExpertWeights::w2_global_scale, d->w2_global_scale},
      {&ExpertWeights::a13_scale, d->a13_scale},
      {&ExpertWeights::a2_scale, d->a2_scale},
      {&ExpertWeights::w13_bias, d->w13_bias},
      {&ExpertWeights::w2_bias, d->w2_bias}};
  ExpertWeights w;
  for (const WeightTensorSpec& spec : weight_layout(c, c.num_local_experts()))
    for (const auto& [member, ptr] : given)
      if (member == spec.member && ptr) w.*member = Tensor(const_cast<void*>(ptr), spec.dtype, spec.shape, dev);
  FMOE_CHECK(d->fp4_packing == 0 || d->fp4_packing == 1,
             "fp4_packing must be 0 (the checkpoint's order) or 1 (the sm90 packing), got ", d->fp4_packing);
  w.fp4_packing = d->fp4_packing ? Fp4Packing::sm90 : Fp4Packing::checkpoint;
  return w;
}

Device device_from(const fmoe_layer_desc* d) { return d->device < 0 ? Device::cpu() : Device::cuda(d->device); }

}  // namespace

extern "C" int fmoe_layer_create(const fmoe_layer_desc* d, fmoe_layer** out, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    FMOE_CHECK(d && out, "fmoe_layer_create needs a descriptor and an output pointer");
    auto layer = std::make_unique<fmoe_layer>();
    layer->device = device_from(d);
    layer->config = config_from(d, layer->device);
    const ExpertWeights w = weights_from(layer->config, d, layer->device);
    KernelOptions opt;
    opt.use_monolithic = d->use_monolithic != 0;
    layer->kernel = std::make_unique<FusedMoEKernel>(make_kernel(layer->config, w, opt));
    *out = layer.release();
  });
}

extern "C" int fmoe_pack_fp4_weights_sm90(const fmoe_layer_desc* d, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    FMOE_CHECK(d, "fmoe_pack_fp4_weights_sm90 needs a descriptor");
    const Device dev = device_from(d);
    const MoEConfig c = config_from(d, dev);
    ExpertWeights w = weights_from(c, d, dev);
    pack_fp4_weights_sm90(c, w);
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
