// The fusedmoe Python extension (nanobind). Arrays arrive through DLPack or the buffer
// protocol (torch, numpy, cupy, ...) and are wrapped as fusedmoe::Tensor views without a copy;
// fusedmoe::Error becomes fusedmoe.Error (a ValueError) with the same message.
// numpy has no bfloat16: bf16 arguments also accept uint16 arrays of bf16 bit patterns, and
// fp8 e4m3, packed e2m1 pairs and ue8m0 scales uint8 arrays (torch: tensor.view(torch.uint8)).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/unique_ptr.h>
#include <nanobind/stl/vector.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/weight_layout.h"
#include "fusedmoe/fusedmoe.h"

namespace nb = nanobind;
using namespace fusedmoe;

namespace {

using Array = nb::ndarray<nb::ro>;
constexpr int kDlCpu = 1, kDlCuda = 2, kDlCudaHost = 3;

// DLPack's element type as the array libraries name it (float16, bfloat16, uint8, ...).
std::string dtype_text(nb::dlpack::dtype d) {
  using C = nb::dlpack::dtype_code;
  std::string base;
  switch (static_cast<C>(d.code)) {
    case C::Int: base = "int"; break;
    case C::UInt: base = "uint"; break;
    case C::Float: base = "float"; break;
    case C::Bfloat: base = "bfloat"; break;
    case C::Complex: base = "complex"; break;
    case C::Bool: return "bool";
    default:  // DLPack's codes past nanobind's list: 7 on are the float8, float6 and float4 formats
      if (d.code < 7) return "DLPack dtype code " + std::to_string(d.code) + " (" + std::to_string(d.bits) + " bits)";
      base = "float";
  }
  std::string s = base + std::to_string(d.bits);
  if (d.lanes != 1) s += "x" + std::to_string(d.lanes);
  return s;
}

std::string describe(const Array& a) {
  std::string s = dtype_text(a.dtype()) + " [";
  for (size_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  s += "] on ";
  switch (a.device_type()) {
    case kDlCpu: return s + "cpu";
    case kDlCuda: return s + "cuda:" + std::to_string(a.device_id());
    case kDlCudaHost: return s + "pinned host memory";
    default: return s + "DLPack device type " + std::to_string(a.device_type());
  }
}

bool dtype_matches(const Array& a, DType want) {
  const auto d = a.dtype();
  using C = nb::dlpack::dtype_code;
  auto is = [&](C code, int bits) { return d.code == uint8_t(code) && d.bits == bits && d.lanes == 1; };
  switch (want) {
    case DType::f32: return is(C::Float, 32);
    case DType::bf16: return is(C::Bfloat, 16) || is(C::UInt, 16);
    case DType::fp8_e4m3: return is(C::UInt, 8) || is(C::Int, 8) || (d.bits == 8 && d.code >= 7);  // float8 codes
    case DType::i32: return is(C::Int, 32);
    case DType::u8:
    case DType::fp4x2_e2m1:  // packed pairs, low nibble first
    case DType::ue8m0: return is(C::UInt, 8) || is(C::Int, 8);
    default: return false;
  }
}

// A contiguous view of `a` as `want`; the caller keeps `a` alive.
Tensor view(const Array& a, DType want, const char* name) {
  FMOE_CHECK(dtype_matches(a, want), name, " must be ", dtype_name(want),
             want == DType::bf16 ? " (torch.bfloat16, or uint16 bf16 bits)" : "",
             want == DType::fp8_e4m3 ? " (torch.float8_e4m3fn, or uint8 bits)" : "",
             want == DType::fp4x2_e2m1 || want == DType::ue8m0 ? " (uint8)" : "", ", got ", describe(a));
  FMOE_CHECK(a.device_type() == kDlCpu || a.device_type() == kDlCuda || a.device_type() == kDlCudaHost, name,
             " must be on the CPU or a CUDA device, got ", describe(a));
  std::vector<int64_t> shape(a.ndim());
  int64_t expected = 1;
  for (int i = int(a.ndim()) - 1; i >= 0; --i) {
    shape[i] = int64_t(a.shape(i));
    FMOE_CHECK(a.shape(i) <= 1 || a.stride(i) == expected, name, " must be contiguous (row-major), got strides that ",
               "are not, ", describe(a));
    expected *= int64_t(a.shape(i));
  }
  FMOE_CHECK(a.ndim() >= 1 && a.ndim() <= size_t(Tensor::kMaxDims), name, " must have 1 to ", Tensor::kMaxDims,
             " dimensions, got ", a.ndim());
  const Device dev = a.device_type() == kDlCuda ? Device::cuda(a.device_id()) : Device::cpu();
  return Tensor(const_cast<void*>(a.data()), want, std::span<const int64_t>(shape.data(), shape.size()), dev);
}

template <class E>
E parse_enum(const std::string& s, std::optional<E> (*parse)(std::string_view), const char* what) {
  const auto v = parse(s);
  FMOE_CHECK(v.has_value(), "unknown ", what, " '", s, "'");
  return *v;
}

// One layer: the config, the kernel, and the arrays its views point into.
struct Layer {
  MoEConfig config;
  std::vector<Array> keep_alive;
  std::unique_ptr<FusedMoEKernel> kernel;

  size_t workspace_bytes(int64_t tokens) const { return kernel->workspace_bytes(tokens); }

  void forward(const Array& hidden, const Array& logits, const Array& out, std::optional<Array> workspace,
               uintptr_t stream) const {
    const bool bf16_logits = logits.dtype().code == uint8_t(nb::dlpack::dtype_code::Bfloat);
    FMOE_CHECK(bf16_logits || dtype_matches(logits, DType::f32), "router_logits must be f32 or bf16, got ",
               describe(logits));
    // Views (and their errors) with the GIL held; only the kernel runs without it.
    const Tensor ws = workspace ? view(*workspace, DType::u8, "workspace") : Tensor();
    const Tensor h = view(hidden, DType::bf16, "hidden");
    const Tensor l = view(logits, bf16_logits ? DType::bf16 : DType::f32, "router_logits");
    const Tensor o = view(out, DType::bf16, "out");
    const CudaStreamGuard guard(reinterpret_cast<void*>(stream));
    nb::gil_scoped_release release;
    kernel->forward(h, l, o, ws);
  }

  void apply(const Array& hidden, const Array& ids, const Array& weights, const Array& out,
             std::optional<Array> workspace, uintptr_t stream) const {
    const Tensor ws = workspace ? view(*workspace, DType::u8, "workspace") : Tensor();
    const Tensor h = view(hidden, DType::bf16, "hidden"), i = view(ids, DType::i32, "topk_ids");
    const Tensor w = view(weights, DType::f32, "topk_weights"), o = view(out, DType::bf16, "out");
    const CudaStreamGuard guard(reinterpret_cast<void*>(stream));
    nb::gil_scoped_release release;
    kernel->apply(h, i, w, o, ws);
  }
};

MoEConfig make_config(int64_t num_experts, int64_t hidden_size, int64_t intermediate_size, int top_k,
                      const std::string& quant, const std::string& activation, const std::string& routing,
                      int num_expert_group, int topk_group, bool renormalize, float routed_scaling_factor) {
  MoEConfig c;
  c.num_experts = num_experts;
  c.hidden_size = hidden_size;
  c.intermediate_size = intermediate_size;
  c.quant = parse_enum<QuantScheme>(quant, parse_quant_scheme, "quant");
  c.activation.kind = parse_enum<ActivationKind>(activation, parse_activation, "activation");
  c.routing.method = parse_enum<RoutingMethod>(routing, parse_routing_method, "routing");
  c.routing.top_k = top_k;
  c.routing.num_expert_group = num_expert_group;
  c.routing.topk_group = topk_group;
  c.routing.renormalize = renormalize;
  c.routing.routed_scaling_factor = routed_scaling_factor;
  return c;
}

using WeightDict = std::map<std::string, Array>;

// ExpertWeights from {"w13": ..., "w2": ..., "w13_scale": ..., ...}: every name of the scheme's
// layout table (weights.h), each array viewed with the dtype the table gives.
ExpertWeights weights_from(const MoEConfig& c, const WeightDict& arrays, std::vector<Array>* keep_alive) {
  ExpertWeights w;
  for (const WeightTensorSpec& spec : weight_layout(c, c.num_local_experts())) {
    const std::string key = std::string(spec.name).substr(std::string("weights.").size());
    const auto it = arrays.find(key);
    if (it == arrays.end()) continue;  // validate_weights reports what a scheme needs
    w.*spec.member = view(it->second, spec.dtype, spec.name);
    if (keep_alive) keep_alive->push_back(it->second);
  }
  for (const auto& [name, array] : arrays) {
    bool known = false;
    for (const WeightTensorSpec& spec : weight_layout(c, c.num_local_experts()))
      known |= std::string(spec.name) == "weights." + name;
    FMOE_CHECK(known, "unknown weight '", name, "'; the names are w13, w2, w13_scale, w2_scale, w13_global_scale, ",
               "w2_global_scale, a13_scale, a2_scale, w13_bias, w2_bias");
  }
  return w;
}

std::unique_ptr<Layer> make_layer(int64_t num_experts, int64_t hidden_size, int64_t intermediate_size, int top_k,
                                  const std::string& quant, const std::string& activation, const std::string& routing,
                                  int num_expert_group, int topk_group, bool renormalize, float routed_scaling_factor,
                                  std::optional<Array> correction_bias, const WeightDict& weights,
                                  const std::string& backend, bool monolithic, const std::string& fp4_packing) {
  auto layer = std::make_unique<Layer>();
  layer->config = make_config(num_experts, hidden_size, intermediate_size, top_k, quant, activation, routing,
                              num_expert_group, topk_group, renormalize, routed_scaling_factor);
  MoEConfig& c = layer->config;
  if (correction_bias) {
    c.routing.correction_bias = view(*correction_bias, DType::f32, "correction_bias");
    layer->keep_alive.push_back(*correction_bias);
  }
  ExpertWeights w = weights_from(c, weights, &layer->keep_alive);
  FMOE_CHECK(fp4_packing == "checkpoint" || fp4_packing == "sm90",
             "fp4_packing must be 'checkpoint' or 'sm90', got '", fp4_packing, "'");
  w.fp4_packing = fp4_packing == "sm90" ? Fp4Packing::sm90 : Fp4Packing::checkpoint;
  KernelOptions opt;
  opt.backend = parse_enum<Backend>(backend, parse_backend, "backend");
  opt.use_monolithic = monolithic;
  layer->kernel = std::make_unique<FusedMoEKernel>(make_kernel(c, w, opt));
  return layer;
}

// fp4 weights (w13, w2 and the scheme's scales) rewritten in place from the checkpoint's order to the sm90
// packing the CUDA kernels read (pack_fp4_weights_sm90).
void pack_fp4(int64_t num_experts, int64_t hidden_size, int64_t intermediate_size, const std::string& quant,
              const WeightDict& weights) {
  const MoEConfig c = make_config(num_experts, hidden_size, intermediate_size, 1, quant, "silu", "precomputed", 1, 1,
                                  true, 1.0f);
  ExpertWeights w = weights_from(c, weights, nullptr);
  pack_fp4_weights_sm90(c, w);
}

// float64 reference output [M, K] for given ids/weights (CPU arrays), as a numpy array.
nb::ndarray<nb::numpy, double> reference(int64_t num_experts, int64_t hidden_size, int64_t intermediate_size,
                                         int top_k, const std::string& quant, const std::string& activation,
                                         const WeightDict& weights, const Array& hidden, const Array& ids,
                                         const Array& topk_weights) {
  MoEConfig c = make_config(num_experts, hidden_size, intermediate_size, top_k, quant, activation, "precomputed", 1,
                            1, true, 1.0f);
  const ExpertWeights w = weights_from(c, weights, nullptr);
  validate_weights(c, w);
  auto* out = new std::vector<double>(
      reference_moe(c, w, view(hidden, DType::bf16, "hidden"), view(ids, DType::i32, "topk_ids"),
                    view(topk_weights, DType::f32, "topk_weights")));
  nb::capsule owner(out, [](void* p) noexcept { delete static_cast<std::vector<double>*>(p); });
  const size_t M = hidden.shape(0);
  return nb::ndarray<nb::numpy, double>(out->data(), {M, size_t(hidden_size)}, owner);
}

}  // namespace

NB_MODULE(_C, m) {
  m.doc() = "fusedmoe: Mixture-of-Experts layer kernels (C++/CUDA) — low-level bindings";
  nb::exception<Error>(m, "Error", PyExc_ValueError);
  nb::class_<Layer>(m, "Layer")
      .def("forward", &Layer::forward, nb::arg("hidden"), nb::arg("router_logits"), nb::arg("out"),
           nb::arg("workspace") = nb::none(), nb::arg("stream") = 0)
      .def("apply", &Layer::apply, nb::arg("hidden"), nb::arg("topk_ids"), nb::arg("topk_weights"), nb::arg("out"),
           nb::arg("workspace") = nb::none(), nb::arg("stream") = 0)
      .def("workspace_bytes", &Layer::workspace_bytes, nb::arg("num_tokens"));
  m.def("make_layer", &make_layer, nb::arg("num_experts"), nb::arg("hidden_size"), nb::arg("intermediate_size"),
        nb::arg("top_k"), nb::arg("quant"), nb::arg("activation"), nb::arg("routing"), nb::arg("num_expert_group"),
        nb::arg("topk_group"), nb::arg("renormalize"), nb::arg("routed_scaling_factor"),
        nb::arg("correction_bias").none(), nb::arg("weights"), nb::arg("backend"), nb::arg("monolithic"),
        nb::arg("fp4_packing"));
  m.def("pack_fp4_weights_sm90", &pack_fp4, nb::arg("num_experts"), nb::arg("hidden_size"),
        nb::arg("intermediate_size"), nb::arg("quant"), nb::arg("weights"));
  m.def("reference", &reference, nb::arg("num_experts"), nb::arg("hidden_size"), nb::arg("intermediate_size"),
        nb::arg("top_k"), nb::arg("quant"), nb::arg("activation"), nb::arg("weights"), nb::arg("hidden"),
        nb::arg("topk_ids"), nb::arg("topk_weights"));
  m.def("backend_available", [](const std::string& b) {
    return backend_available(parse_enum<Backend>(b, parse_backend, "backend"));
  });
}
