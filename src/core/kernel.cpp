// FusedMoEKernel: composition checks, workspace sizing, boundary validation and the
// prepare -> experts -> finalize sequence. Nothing is written to `out` before every argument
// has been validated.
#include "fusedmoe/kernel.h"

#include <cstdint>

#include "core/backend_registry.h"
#include "core/check.h"
#include "fusedmoe/error.h"

namespace fusedmoe {
namespace {

const ModularPrepareFinalize& modular_pf(const PrepareFinalize& pf) {
  return static_cast<const ModularPrepareFinalize&>(pf);
}
const ModularExperts& modular_experts(const Experts& e) { return static_cast<const ModularExperts&>(e); }

void check_hidden_and_out(const MoEConfig& c, const Tensor& hidden, const Tensor& out, Device device) {
  FMOE_CHECK(hidden.defined() && hidden.ndim() == 2, "hidden must be a 2-D [M, hidden_size=", c.hidden_size,
             "] tensor, got ", hidden.describe());
  const int64_t M = hidden.size(0);
  check_tensor(hidden, "hidden", DType::bf16, {M, c.hidden_size}, device);
  check_tensor(out, "out", DType::bf16, {M, c.hidden_size}, device);
  if (device.kind == DeviceKind::cuda) {  // the CUDA kernels move rows in 16-byte vectors
    FMOE_CHECK(reinterpret_cast<uintptr_t>(hidden.data()) % 16 == 0, "hidden must be 16-byte aligned on ",
               device.str(), ", got address ", hidden.data());
    FMOE_CHECK(reinterpret_cast<uintptr_t>(out.data()) % 16 == 0, "out must be 16-byte aligned on ", device.str(),
               ", got address ", out.data());
  }
}

void check_ids(const MoEConfig& c, const Tensor& ids) {
  if (!c.strict_expert_ids || ids.device().kind != DeviceKind::cpu) return;
  const int32_t* p = ids.data_as<const int32_t>();
  for (int64_t i = 0; i < ids.numel(); ++i)
    FMOE_CHECK(p[i] >= 0 && p[i] < c.num_experts, "topk_ids[", i / ids.size(1), ", ", i % ids.size(1),
               "] must be in [0, num_experts=", c.num_experts, ") (strict_expert_ids), got ", p[i]);
}

}  // namespace

FusedMoEKernel::FusedMoEKernel(const MoEConfig& config, std::unique_ptr<PrepareFinalize> prepare_finalize,
                               std::unique_ptr<Experts> experts)
    : config_(config), prepare_finalize_(std::move(prepare_finalize)), experts_(std::move(experts)) {
  validate_config(config_);
  FMOE_CHECK(prepare_finalize_ && experts_, "FusedMoEKernel needs a PrepareFinalize and an Experts, got ",
             prepare_finalize_ ? "no Experts" : "no PrepareFinalize");
  const PrepareFinalize& pf = *prepare_finalize_;
  const Experts& ex = *experts_;
  FMOE_CHECK(pf.is_monolithic() == ex.is_monolithic(), "cannot compose ", pf.name(), " (",
             pf.is_monolithic() ? "monolithic: moves router logits and hidden only" : "modular: hands over top-k ids",
             ") with ", ex.name(), " (",
             ex.is_monolithic() ? "monolithic: needs router logits" : "modular: needs top-k ids and prepared activations",
             "); pair modular with modular and monolithic with monolithic");
  FMOE_CHECK(pf.activation_format() == ex.activation_format(), "cannot compose ", pf.name(), " (produces the ",
             pf.activation_format() == ActivationFormat::batched ? "batched" : "standard", " format) with ", ex.name(),
             " (consumes the ", ex.activation_format() == ActivationFormat::batched ? "batched" : "standard",
             " format)");
  FMOE_CHECK(pf.device() == ex.device(), "cannot compose ", pf.name(), " on ", pf.device().str(), " with ", ex.name(),
             " on ", ex.device().str());
  if (ex.is_monolithic())
    FMOE_CHECK(config_.routing.method != RoutingMethod::precomputed,
               "monolithic experts route the logits themselves; routing method 'precomputed' needs modular experts");
  else
    FMOE_CHECK(dynamic_cast<const ModularPrepareFinalize*>(&pf) && dynamic_cast<const ModularExperts*>(&ex),
               "modular stages must derive from ModularPrepareFinalize and ModularExperts");
}

size_t FusedMoEKernel::workspace_bytes(int64_t M) const {
  const int64_t prepared = prepare_finalize_->max_prepared_tokens(M);
  // kWorkspaceAlignment: room to align a caller's workspace that starts off a kWorkspaceAlignment boundary.
  size_t bytes = kWorkspaceAlignment + prepare_finalize_->workspace_bytes(M) + experts_->workspace_bytes(prepared);
  if (!is_monolithic()) {
    const int64_t k = config_.routing.top_k;
    bytes += workspace_tensor_bytes(DType::i32, {M, k}) + workspace_tensor_bytes(DType::f32, {M, k});  // forward
  }
  return bytes;
}

static Workspace open_workspace(const Tensor& workspace, size_t needed, Device device, Buffer& owned) {
  if (!workspace.defined()) {
    // Allocating here is not allowed while a CUDA graph is being captured: pass a workspace.
    owned = Buffer::bytes(needed, device);
    return Workspace(owned.view());
  }
  FMOE_CHECK(workspace.dtype() == DType::u8 && workspace.ndim() == 1 && workspace.is_contiguous() &&
                 workspace.device() == device,
             "workspace must be a contiguous u8 [n] tensor on ", device.str(), ", got ", workspace.describe());
  FMOE_CHECK(workspace.nbytes() >= needed, "workspace must hold at least workspace_bytes(M) = ", needed,
             " bytes, got ", workspace.nbytes());
  return Workspace(workspace);
}

void FusedMoEKernel::apply(const Tensor& hidden, const Tensor& topk_ids, const Tensor& topk_weights, const Tensor& out,
                           const Tensor& workspace) const {
  FMOE_CHECK(!is_monolithic(), "apply() takes top-k ids, but this kernel is monolithic: call apply_monolithic()");
  check_hidden_and_out(config_, hidden, out, device());
  const int64_t M = hidden.size(0), k = config_.routing.top_k;
  check_tensor(topk_ids, "topk_ids", DType::i32, {M, k}, device());
  check_tensor(topk_weights, "topk_weights", DType::f32, {M, k}, device());
  check_ids(config_, topk_ids);
  Buffer owned;
  Workspace ws = open_workspace(workspace, workspace_bytes(M), device(), owned);
  if (M > 0 || is_collective()) run_modular(hidden, topk_ids, topk_weights, false, out, ws);
}

void FusedMoEKernel::run_modular(const Tensor& hidden, const Tensor& topk_ids, const Tensor& topk_weights,
                                 bool after_router, const Tensor& out, Workspace& ws) const {
  const ModularPrepareFinalize& pf = modular_pf(*prepare_finalize_);
  const ModularExperts& ex = modular_experts(*experts_);
  const PreparedActivations prepared =
      pf.prepare(hidden, topk_ids, topk_weights, ex.static_input_scale(), after_router, ws);
  const ExpertsOutput expert_out = ex.apply(prepared, ws);
  pf.finalize(expert_out, prepared, out, ws);
}

static void check_logits(const MoEConfig& c, const Tensor& logits, int64_t M, Device device) {
  FMOE_CHECK(logits.defined() && (logits.dtype() == DType::f32 || logits.dtype() == DType::bf16),
             "router_logits must be f32 or bf16, got ", logits.describe());
  check_tensor(logits, "router_logits", logits.dtype(), {M, c.num_experts}, device);
}

void FusedMoEKernel::apply_monolithic(const Tensor& hidden, const Tensor& router_logits, const Tensor& out,
                                      const Tensor& workspace) const {
  FMOE_CHECK(is_monolithic(), "apply_monolithic() takes router logits, but this kernel is modular: call apply() ",
             "or forward()");
  check_hidden_and_out(config_, hidden, out, device());
  const int64_t M = hidden.size(0);
  check_logits(config_, router_logits, M, device());
  Buffer owned;
  Workspace ws = open_workspace(workspace, workspace_bytes(M), device(), owned);
  if (M == 0 && !is_collective()) return;
  const auto& pf = static_cast<const MonolithicPrepareFinalize&>(*prepare_finalize_);
  const auto& ex = static_cast<const MonolithicExperts&>(*experts_);
  const MonolithicPrepareFinalize::Prepared prepared = pf.prepare(hidden, router_logits, ws);
  const Tensor expert_out = pf.experts_output(out, prepared.hidden.size(0), ws);
  ex.apply_monolithic(prepared.hidden, prepared.router_logits, expert_out, ws);
  pf.finalize(expert_out, out, ws);
}

void FusedMoEKernel::forward(const Tensor& hidden, const Tensor& router_logits, const Tensor& out,
                             const Tensor& workspace) const {
  if (is_monolithic()) return apply_monolithic(hidden, router_logits, out, workspace);
  FMOE_CHECK(config_.routing.method != RoutingMethod::precomputed,
             "forward() routes the logits, but the routing method is 'precomputed': call apply() with ids and weights");
  check_hidden_and_out(config_, hidden, out, device());
  const int64_t M = hidden.size(0), k = config_.routing.top_k;
  check_logits(config_, router_logits, M, device());
  Buffer owned;
  Workspace ws = open_workspace(workspace, workspace_bytes(M), device(), owned);
  if (M == 0 && !is_collective()) return;
  const Tensor ids = ws.take(DType::i32, {M, k});
  const Tensor weights = ws.take(DType::f32, {M, k});
  if (M > 0) backend_for_device(device()).route(config_.routing, router_logits, ids, weights);
  run_modular(hidden, ids, weights, M > 0, out, ws);
}

}  // namespace fusedmoe
