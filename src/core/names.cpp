// Names of the public enums, for messages, the CLI and JSON.
#include <array>
#include <string_view>
#include <utility>

#include "fusedmoe/config.h"
#include "fusedmoe/factory.h"
#include "fusedmoe/quant.h"
#include "fusedmoe/routing.h"

namespace fusedmoe {
namespace {

template <class Enum, size_t N>
const char* name_of(const std::array<std::pair<Enum, const char*>, N>& table, Enum value) {
  for (const auto& [e, name] : table)
    if (e == value) return name;
  return "?";
}

template <class Enum, size_t N>
std::optional<Enum> parse(const std::array<std::pair<Enum, const char*>, N>& table, std::string_view text) {
  for (const auto& [e, name] : table)
    if (text == name) return e;
  return std::nullopt;
}

constexpr std::array<std::pair<QuantScheme, const char*>, 6> kQuantNames = {{
    {QuantScheme::bf16, "bf16"},
    {QuantScheme::fp8_per_tensor, "fp8-tensor"},
    {QuantScheme::fp8_per_channel, "fp8-channel"},
    {QuantScheme::fp8_block, "fp8-block"},
    {QuantScheme::nvfp4, "nvfp4"},
    {QuantScheme::mxfp4, "mxfp4"},
}};

constexpr std::array<std::pair<RoutingMethod, const char*>, 8> kRoutingNames = {{
    {RoutingMethod::softmax_topk, "softmax-topk"},
    {RoutingMethod::topk_softmax, "topk-softmax"},
    {RoutingMethod::softmax_topk_renormalize, "softmax-topk-renormalize"},
    {RoutingMethod::deepseek_v3, "deepseek-v3"},
    {RoutingMethod::llama4, "llama4"},
    {RoutingMethod::sigmoid_topk, "sigmoid-topk"},
    {RoutingMethod::sigmoid_topk_renormalize, "sigmoid-topk-renormalize"},
    {RoutingMethod::precomputed, "precomputed"},
}};

constexpr std::array<std::pair<ActivationKind, const char*>, 5> kActivationNames = {{
    {ActivationKind::silu_mul, "silu"},
    {ActivationKind::gelu_mul, "gelu"},
    {ActivationKind::gelu_tanh_mul, "gelu-tanh"},
    {ActivationKind::swiglu_oai, "swiglu-oai"},
    {ActivationKind::relu2, "relu2"},
}};

constexpr std::array<std::pair<Backend, const char*>, 3> kBackendNames = {{
    {Backend::auto_select, "auto"},
    {Backend::cpu, "cpu"},
    {Backend::cuda, "cuda"},
}};

}  // namespace

const char* quant_scheme_name(QuantScheme s) { return name_of(kQuantNames, s); }
std::optional<QuantScheme> parse_quant_scheme(std::string_view n) { return parse(kQuantNames, n); }
const char* routing_method_name(RoutingMethod m) { return name_of(kRoutingNames, m); }
std::optional<RoutingMethod> parse_routing_method(std::string_view n) { return parse(kRoutingNames, n); }
const char* activation_name(ActivationKind k) { return name_of(kActivationNames, k); }
std::optional<ActivationKind> parse_activation(std::string_view n) { return parse(kActivationNames, n); }
const char* backend_name(Backend b) { return name_of(kBackendNames, b); }
std::optional<Backend> parse_backend(std::string_view n) { return parse(kBackendNames, n); }

}  // namespace fusedmoe
