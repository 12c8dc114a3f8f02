// CUDA modular experts (standard and batched formats): row plan -> GEMM1 (+ w13 bias) -> activation (+ fp8
// 1x128 re-quantization) -> GEMM2 (+ w2 bias), writing unweighted bf16 rows grouped by expert for
// the PrepareFinalize to reduce (bf16 decode batches with large experts: all of it in the fused decode kernel,
// decode_fused.cu). Two paths over the same plan (heuristics.h): the row-plan kernels (small-M
// streaming kernels for decode-sized batches; our wgmma grouped GEMMs on 256-row plan items for fp4 above 24
// rows per expert and bf16 at 24-512, on 128-row items for fp8-block at 12-64) and the CUTLASS grouped GEMMs (after
// a row gather) for the rest. fp4 weights (nvfp4, mxfp4) are W4A16, dequantized in registers; their grouped path
// (forced only) dequantizes a chunk of experts at a time to bf16 in the workspace and runs the bf16 GEMM on it.
// Stream-ordered with no host synchronisation, so a forward is graph-capturable.
#include <algorithm>
#include <cstdlib>
#include <tuple>
#include <utility>
#include <vector>

#include "core/activation_math.h"
#include "core/check.h"
#include "core/weight_layout.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_util.h"
#include "cuda/cutlass/grouped_gemm.h"
#include "cuda/experts_cuda.h"
#include "cuda/heuristics.h"
#include "cuda/kernels/kernels.h"
#include "fusedmoe/error.h"

namespace fusedmoe::cuda {

namespace {

bool is_fp4(QuantScheme q) { return q == QuantScheme::nvfp4 || q == QuantScheme::mxfp4; }

SmallMWeights small_m_weights(QuantScheme q) {
  switch (q) {
    case QuantScheme::fp8_per_tensor:  // every fp8 scheme runs as block-scaled (see experts_cuda.h)
    case QuantScheme::fp8_per_channel:
    case QuantScheme::fp8_block: return SmallMWeights::fp8_block;
    case QuantScheme::nvfp4: return SmallMWeights::nvfp4;
    case QuantScheme::mxfp4: return SmallMWeights::mxfp4;
    default: return SmallMWeights::bf16;
  }
}

const float* f32_or_null(const Tensor& t) { return t.defined() ? t.data_as<const float>() : nullptr; }

// Values of one expert's larger weight matrix (w13 or w2): the fp4 dequantization scratch per expert.
int64_t larger_weight_values(const MoEConfig& c) {
  return std::max(c.w13_rows() * c.hidden_size, c.hidden_size * c.intermediate_size);
}

}  // namespace

void check_supported(const MoEConfig& c) {
  // Every scheme there is; the check stays for a scheme added later.
  FMOE_CHECK(c.quant == QuantScheme::bf16 || scheme_quantizes_activations(c.quant) || is_fp4(c.quant),
             "the CUDA backend runs the bf16, fp8-tensor, fp8-channel, fp8-block, nvfp4 and mxfp4 schemes; got ",
             quant_scheme_name(c.quant));
  const int64_t align = scheme_quantizes_activations(c.quant) ? 128 : 64;
  FMOE_CHECK(c.hidden_size % align == 0, "the CUDA ", quant_scheme_name(c.quant), " experts need hidden_size % ",
             align, " == 0, got hidden_size=", c.hidden_size);
  FMOE_CHECK(c.intermediate_size % align == 0, "the CUDA ", quant_scheme_name(c.quant),
             " experts need intermediate_size % ", align, " == 0, got intermediate_size=", c.intermediate_size);
  FMOE_CHECK(c.num_local_experts() <= kMaxPlanExperts, "the CUDA backend handles up to ", kMaxPlanExperts,
             " local experts, got ", c.num_local_experts());
  FMOE_CHECK(c.routing.top_k <= 32, "the CUDA backend handles top_k <= 32, got ", c.routing.top_k);
}

void check_monolithic_format(const MoEConfig& c) {
  FMOE_CHECK(c.activation_format == ActivationFormat::standard,
             "monolithic experts take tokens x hidden (standard format), got the batched format");
}

CudaExperts::CudaExperts(const MoEConfig& config, const ExpertWeights& weights) : config_(config), weights_(weights) {
  device_ = weights.w13.device();
  require_sm90(device_, "the CUDA experts");
  check_supported(config);
  for (const WeightTensorSpec& spec : weight_layout(config, config.num_local_experts())) {
    const Tensor& t = weights.*spec.member;
    if (t.defined())
      FMOE_CHECK(t.device() == device_, "weights.", spec.name, " must be on ", device_.str(), " like w13, got ",
                 t.describe());
  }
  DeviceGuard guard(device_);
  sm_count_ = device_info(device_.index).sm_count;
  num_local_ = config.num_local_experts();
  if (config.parallel.expert_map.defined()) expert_map_ = copy_to(config.parallel.expert_map, device_);
  fp8_ = scheme_quantizes_activations(config.quant);
  fp4_ = is_fp4(config.quant);
  weight_format_ = small_m_weights(config.quant);
  for (const Tensor* bias : {&weights.w13_bias, &weights.w2_bias})
    if (bias->defined())
      FMOE_CHECK(reinterpret_cast<uintptr_t>(bias->data()) % 16 == 0,
                 "the CUDA experts need 16-byte aligned expert biases, got ", bias->describe());
  if (fp4_) {
    fp4_chunk_experts_ = choose_fp4_chunk_experts(2 * larger_weight_values(config), num_local_);
    if (weights.fp4_packing == Fp4Packing::checkpoint) pack_fp4_weights();
  }
  gemm_kind_ = config.quant == QuantScheme::fp8_per_tensor    ? GroupedGemmKind::fp8_group_scaled
               : config.quant == QuantScheme::fp8_per_channel ? GroupedGemmKind::fp8_channel_scaled
               : fp8_                                         ? GroupedGemmKind::fp8_block
                                                              : GroupedGemmKind::bf16;
  fp8_fast_accum_ = env_switch("FUSEDMOE_FP8_FAST_ACCUM").value_or(false);
  if (fp8_) make_block_scales();
  batched_ = config.activation_format == ActivationFormat::batched;
  if (batched_)
    FMOE_CHECK(num_local_ * config.max_tokens_per_expert < (int64_t(1) << 31),
               "the CUDA batched experts need num_local_experts x max_tokens_per_expert < 2^31 rows, got ", num_local_,
               " x ", config.max_tokens_per_expert);
  choose_gated_gemm1();
  const char* act_epilogue = std::getenv("FUSEDMOE_SMALL_M_ACT_EPILOGUE");
  small_m_act_epilogue_ = !fp8_ && !(act_epilogue && act_epilogue[0] == '0');
  fp4_persistent_ = env_switch("FUSEDMOE_FP4_PERSISTENT");
  x_in_place_ = env_switch("FUSEDMOE_X_IN_PLACE");
  bf16_wgmma_act_ = !batched_ && config.quant == QuantScheme::bf16 && is_sigmoid_gated(config.activation.kind) &&
                    config.intermediate_size % 8 == 0 && small_m_act_epilogue_ &&
                    env_switch("FUSEDMOE_WGMMA_GATE_UP").value_or(true);
  gemm2_early_ = env_switch("FUSEDMOE_GEMM2_EARLY").value_or(true);
  fp4_gemm2_overlap_ = env_switch("FUSEDMOE_FP4_GEMM2_OVERLAP").value_or(true);
  fp4_split_k_fit_ = env_switch("FUSEDMOE_FP4_SPLIT_K_FIT").value_or(true);
  if (const char* v = std::getenv("FUSEDMOE_FP4_SPLIT_K_WARPS"); v && v[0]) {
    FMOE_CHECK(std::string(v) == "4" || std::string(v) == "8", "FUSEDMOE_FP4_SPLIT_K_WARPS must be 4 or 8, got '", v,
               "'");
    fp4_split_k_warps_ = v[0] - '0';
  }
  fused_decode_mode_ = fused_decode_mode_from_env();
  expert_bytes_ = (config.w13_rows() + config.intermediate_size) * config.hidden_size * 2;
  fused_decode_supported_ = config.quant == QuantScheme::bf16 && !batched_ && config.hidden_size % 32 == 0 &&
                            config.intermediate_size % 32 == 0 && num_local_ <= 1024;
  gemm_scratch_bytes_ = grouped_gemm_workspace_bytes(gemm_kind_, static_cast<int>(num_local_), sm_count_);
}

void CudaExperts::pack_fp4_weights() {
  const int64_t w13_row_bytes = config_.hidden_size / 2, w2_row_bytes = config_.intermediate_size / 2;
  for (auto [t, copy, row_bytes] : {std::tuple{&weights_.w13, &packed_w13_, w13_row_bytes},
                                    std::tuple{&weights_.w2, &packed_w2_, w2_row_bytes}}) {
    *copy = copy_to(*t, device_);
    launch_pack_fp4_sm90(copy->data_as<uint8_t>(), static_cast<int64_t>(copy->nbytes()), row_bytes, stream());
    *t = copy->view();
  }
  FMOE_CUDA_CHECK(cudaStreamSynchronize(stream()));
  weights_.fp4_packing = Fp4Packing::sm90;
}

namespace {
// Room for the work items of a plan of R rows at the smallest tile (8 rows), the most items.
int64_t item_capacity(int64_t R, int64_t num_local) { return plan_max_items(R, num_local, 8); }

constexpr int64_t kItemInts = sizeof(PlanItem) / sizeof(int32_t);

// The items, then RowPlan::work_counters (the counters and one per item), in one workspace tensor.
int64_t items_ints(int64_t R, int64_t num_local) {
  return (kItemInts + 1) * item_capacity(R, num_local) + kPlanCounterInts;
}

size_t items_bytes(int64_t R, int64_t num_local) {
  return workspace_tensor_bytes(DType::i32, {items_ints(R, num_local)});
}

// The plan's work items for the path's small-M tile (none on the grouped path).
void take_items(RowPlan& plan, int64_t R, int64_t num_local, const ExpertsPath& path, Workspace& ws) {
  int32_t* ints = ws.take(DType::i32, {items_ints(R, num_local)}).data_as<int32_t>();
  plan.items = reinterpret_cast<PlanItem*>(ints);
  plan.item_rows = path.small_m ? path.tile_tokens : 0;
  plan.item_grid = static_cast<int>(plan_max_items(R, num_local, plan.item_rows));  // the grids' rows
  plan.work_counters = ints + kItemInts * item_capacity(R, num_local);
}
}  // namespace

size_t CudaExperts::plan_bytes(int64_t M, int top_k, int64_t num_local) {
  const int64_t R = M * top_k;
  return 3 * workspace_tensor_bytes(DType::i32, {num_local + 1}) + workspace_tensor_bytes(DType::i32, {M, top_k}) +
         2 * workspace_tensor_bytes(DType::i32, {R}) +
         workspace_tensor_bytes(DType::i32, {std::max<int64_t>(plan_scratch_ints(R, num_local), 1)}) +
         items_bytes(R, num_local);
}

ExpertsPath CudaExperts::path_for(int64_t tokens, int64_t experts) const {
  return choose_experts_path(tokens, config_.routing.top_k, experts, config_.quant, config_.intermediate_size,
                             fp8_fast_accum_, config_.hidden_size, config_.w13_rows());
}

size_t CudaExperts::workspace_bytes(int64_t M) const {
  const int k = config_.routing.top_k;
  const int64_t K = config_.hidden_size;
  if (batched_) {  // the plan of E x T rows, then the rows; fp4 keeps room for either path
    const int64_t R = num_local_ * config_.max_tokens_per_expert;
    return 3 * workspace_tensor_bytes(DType::i32, {num_local_ + 1}) + 2 * workspace_tensor_bytes(DType::i32, {R}) +
           items_bytes(R, num_local_) + rows_workspace_bytes(R, /*grouped=*/true, /*gemm1_rows=*/R);
  }
  const ExpertsPath path = path_for(M, num_local_);
  // The fused decode kernel's counters for up to M tokens (the most items: 8-row ones); its h2 and y fit in the
  // rows' share.
  const int most_items = static_cast<int>(plan_max_items(M * k, num_local_, 8));
  const size_t counters =
      fused_decode_supported_ ? workspace_tensor_bytes(DType::i32, {fused_decode_counters(most_items, K)}) : 0;
  return plan_bytes(M, k, num_local_) + counters + rows_workspace_bytes(M * k, !path.small_m, gemm1_out_rows(M));
}

// fp4 fuses only from the 128-row tiles on (more rows per expert): with 64-row tiles, on H200,
// qwen3-nvfp4 at 1024/2048 tokens was 5%/3.5% slower fused with 256 MiB chunks (each chunk's GEMM1
// about one wave, the epilogue not hidden), and with 1 GiB chunks still 2.2%/0.7% slower
// (gpt-oss-120b 2048/4096: 0.999x/1.014x).
bool CudaExperts::gated_gemm1_runs(const ExpertsPath& path) const {
  return !path.small_m && gated_gemm1_ > 0 && (!fp4_ || path.gemm_tile_m == 128);
}

// The gated GEMM1 runs on parts of the token range (where the heuristic takes the grouped path: for bf16, above 512
// rows per expert, 2048 for narrow layers), and a workspace sized for M must serve every smaller count: GEMM1's output
// rows of the largest count up to M that writes them. The heuristic's bounds on the rows per expert (M k / E)
// are whole numbers, so the path is the same for every count in (j E / k, (j + 1) E / k]: the largest count
// of each such piece is tried, from M down (only while the gated GEMM1 runs at M).
int64_t CudaExperts::gemm1_out_rows(int64_t M) const {
  const int k = config_.routing.top_k;
  const auto writes = [&](int64_t m) {
    return !gated_gemm1_runs(path_for(m, num_local_));
  };
  if (writes(M)) return M * k;
  for (int64_t j = (M * k + num_local_ - 1) / num_local_ - 1; j >= 0; --j) {
    const int64_t m = std::min(M, (j + 1) * num_local_ / k);
    if (m < M && writes(m)) return m * k;
  }
  return 0;
}

size_t CudaExperts::rows_workspace_bytes(int64_t R, bool grouped, int64_t gemm1_rows) const {
  const int64_t K = config_.hidden_size, I = config_.intermediate_size, N1 = config_.w13_rows();
  const DType act = fp8_ ? DType::fp8_e4m3 : DType::bf16;
  const int64_t scale_rows = m_major_scale_rows(R);  // (the fp8 wgmma GEMM's M-major scales: padded rows)
  size_t b = workspace_tensor_bytes(act, {R, K}) + workspace_tensor_bytes(DType::f32, {scale_rows, K / 128});  // input
  b += workspace_tensor_bytes(DType::bf16, {gemm1_rows, N1});  // GEMM1 out
  b += workspace_tensor_bytes(act, {R, I}) + workspace_tensor_bytes(DType::f32, {scale_rows, I / 128});  // GEMM2 in
  b += workspace_tensor_bytes(DType::bf16, {R, K});                                                  // output rows
  b += workspace_tensor_bytes(DType::u8, {static_cast<int64_t>(gemm_scratch_bytes_)});
  if (fp4_ && grouped) b += workspace_tensor_bytes(DType::bf16, {fp4_dequant_elements()});
  return b;
}

PlanBuffers CudaExperts::take_plan(int64_t M, Workspace& ws) const {
  const int64_t k = config_.routing.top_k, R = M * k, E = num_local_;
  PlanBuffers p;
  p.plan.counts = ws.take(DType::i32, {E + 1}).data_as<int32_t>();
  p.plan.offsets = ws.take(DType::i32, {E + 1}).data_as<int32_t>();
  p.plan.active = ws.take(DType::i32, {E + 1}).data_as<int32_t>();
  p.slot_rows = ws.take(DType::i32, {M, k});
  p.plan.slot_rows = p.slot_rows.data_as<int32_t>();
  p.plan.row_token = ws.take(DType::i32, {R}).data_as<int32_t>();
  p.plan.row_expert = ws.take(DType::i32, {R}).data_as<int32_t>();
  p.scratch = ws.take(DType::i32, {std::max<int64_t>(plan_scratch_ints(R, E), 1)}).data_as<int32_t>();
  take_items(p.plan, R, E, path_for(M, E), ws);
  return p;
}

const int32_t* CudaExperts::device_expert_map() const {
  return expert_map_.view().defined() ? expert_map_.data_as<const int32_t>() : nullptr;
}

ExpertsOutput CudaExperts::apply(const PreparedActivations& in, Workspace& ws) const {
  DeviceGuard guard(device_);
  if (batched_) return apply_batched(in, ws);
  const int64_t M = in.topk_ids.size(0);
  PlanBuffers planned = take_plan(M, ws);
  const bool fused = fused_decode_runs(M);
  if (fused) check_tensor(in.a1q, "a1q", DType::bf16, {M, config_.hidden_size}, device_);
  const Tensor counters = fused ? prepare_fused_decode(M, planned, ws) : Tensor{};
  launch_plan(in.topk_ids.data_as<const int32_t>(), M, config_.routing.top_k, static_cast<int>(config_.num_experts),
              device_expert_map(), static_cast<int>(num_local_), planned.plan, planned.scratch, stream(),
              fused ? counters.data_as<int32_t>() : nullptr, fused ? counters.numel() : 0);
  if (fused)
    return {ExpertsOutputKind::sorted, run_fused_decode(in.a1q, planned, counters, nullptr, nullptr, ws),
            planned.slot_rows};
  return run_planned(in, planned, ws);
}

bool CudaExperts::fused_decode_runs(int64_t M) const {
  return fused_decode_supported_ && M >= 1 && M <= kMaxFusedDecodeRows &&
         choose_fused_decode(M, config_.routing.top_k, num_local_, expert_bytes_, fused_decode_mode_,
                             wgmma_streams_decode(M, config_.routing.top_k, num_local_, config_.quant,
                                                  config_.hidden_size, config_.w13_rows(), config_.intermediate_size));
}

Tensor CudaExperts::prepare_fused_decode(int64_t M, PlanBuffers& planned, Workspace& ws) const {
  RowPlan& plan = planned.plan;
  plan.item_rows = fused_decode_item_rows(M);
  plan.item_grid = static_cast<int>(plan_max_items(M * config_.routing.top_k, num_local_, plan.item_rows));
  return ws.take(DType::i32, {fused_decode_counters(plan.item_grid, config_.hidden_size)});
}

Tensor CudaExperts::run_fused_decode(const Tensor& x, const PlanBuffers& planned, const Tensor& counters,
                                     const float* topk_weights, bf16* out, Workspace& ws) const {
  const int64_t M = x.size(0), k = config_.routing.top_k, K = config_.hidden_size, I = config_.intermediate_size;
  FusedDecode f{};
  f.x = x.data_as<const bf16>();
  f.w13 = weights_.w13.data_as<const bf16>();
  f.w2 = weights_.w2.data_as<const bf16>();
  f.b13 = f32_or_null(weights_.w13_bias);
  f.b2 = f32_or_null(weights_.w2_bias);
  f.topk_weights = topk_weights;
  f.act = config_.activation;
  f.M = M, f.K = K, f.I = I;
  f.top_k = static_cast<int>(k);
  f.max_items = planned.plan.item_grid;
  f.h2 = ws.take(DType::bf16, {M * k, I}).data_as<bf16>();
  const Tensor y = ws.take(DType::bf16, {M * k, K});
  f.y = y.data_as<bf16>();
  f.out = out;
  f.counters = counters.data_as<int32_t>();
  f.done_a = f.counters + 1;
  f.done_b = f.done_a + f.max_items;
  launch_fused_decode(f, planned.plan, sm_count_, stream());
  return y;
}

// Batched input [E, T, K] (+ scales [E, T, G]) with expert_num_tokens [E] on the device: a plan
// whose expert e owns rows e*T .. e*T + count (the rest skipped), the same kernels as the
// standard format on it, output rows in batch order. The path is the standard format's for the
// prepared token count (topk_ids' rows; T when a producer does not pass them).
ExpertsOutput CudaExperts::apply_batched(const PreparedActivations& in, Workspace& ws) const {
  const int64_t E = num_local_, T = config_.max_tokens_per_expert, R = E * T, K = config_.hidden_size;
  FMOE_CHECK(in.format == ActivationFormat::batched, name(), " takes the batched format");
  check_tensor(in.a1q, "a1q", fp8_ ? DType::fp8_e4m3 : DType::bf16, {E, T, K}, device_);
  if (fp8_) check_tensor(in.a1q_scale, "a1q_scale", DType::f32, {E, T, K / 128}, device_);
  check_tensor(in.expert_num_tokens, "expert_num_tokens", DType::i32, {E}, device_);
  RowPlan plan{};
  plan.counts = ws.take(DType::i32, {E + 1}).data_as<int32_t>();
  plan.offsets = ws.take(DType::i32, {E + 1}).data_as<int32_t>();
  plan.active = ws.take(DType::i32, {E + 1}).data_as<int32_t>();
  plan.row_token = ws.take(DType::i32, {R}).data_as<int32_t>();
  plan.row_expert = ws.take(DType::i32, {R}).data_as<int32_t>();
  const int64_t tokens = in.topk_ids.defined() ? in.topk_ids.size(0) : T;
  const ExpertsPath path = path_for(tokens, E);
  take_items(plan, R, E, path, ws);
  launch_batched_plan(in.expert_num_tokens.data_as<const int32_t>(), static_cast<int>(E), T, plan, stream());
  const Tensor y = run_rows(in.a1q, in.a1q_scale, plan, R, path, ws);
  return {ExpertsOutputKind::batched, Tensor(y.data(), DType::bf16, {E, T, K}), {}};
}

ExpertsOutput CudaExperts::run_planned(const PreparedActivations& in, const PlanBuffers& planned,
                                       Workspace& ws) const {
  DeviceGuard guard(device_);
  const int64_t M = in.topk_ids.size(0), k = config_.routing.top_k;
  const ExpertsPath path = path_for(M, num_local_);
  return {ExpertsOutputKind::sorted, run_rows(in.a1q, in.a1q_scale, planned.plan, M * k, path, ws), planned.slot_rows};
}

// The experts on the R planned rows of x: row r of the plan reads x[row_token[r]] (with its
// row-major scales for fp8). Returns the bf16 output rows [R, K], in plan order.
Tensor CudaExperts::run_rows(const Tensor& x, const Tensor& x_scales, const RowPlan& plan, int64_t R,
                             const ExpertsPath& path, Workspace& ws) const {
  const cudaStream_t s = stream();
  const int64_t E = num_local_;
  const int64_t K = config_.hidden_size, I = config_.intermediate_size, N1 = config_.w13_rows();
  const DType act = fp8_ ? DType::fp8_e4m3 : DType::bf16;
  const int64_t scale_rows = m_major_scale_rows(R);
  const Tensor x_sorted = ws.take(act, {R, K});
  const Tensor x_sorted_scales = ws.take(DType::f32, {scale_rows, K / 128});
  // GEMM1's output before the activation; the gated GEMM1 writes h2 directly (no room taken for h).
  const bool gated = gated_gemm1_runs(path);
  const Tensor h = gated ? Tensor{} : ws.take(DType::bf16, {R, N1});
  const Tensor h2 = ws.take(act, {R, I});
  const Tensor h2_scales = ws.take(DType::f32, {scale_rows, I / 128});
  const Tensor y = ws.take(DType::bf16, {R, K});
  const Tensor gemm_scratch = ws.take(DType::u8, {static_cast<int64_t>(gemm_scratch_bytes_)});

  const float* x_scale_ptr = fp8_ ? x_scales.data_as<const float>() : nullptr;
  float* h2_scale_ptr = fp8_ ? h2_scales.data_as<float>() : nullptr;
  const float* b13 = f32_or_null(weights_.w13_bias);
  const float* b2 = f32_or_null(weights_.w2_bias);
  // fp8-channel: the GEMMs apply the per-row weight scales (small-M: SmallMGemm::w_row_scales; grouped: the
  // channel-scaled CUTLASS epilogue), and its activation quantizes per row.
  // The wgmma grouped GEMMs: bf16 weights in 256-row items, fp8-block, fp8-tensor and fp8-channel (its row scales
  // in the consumers' epilogue) in 128-row items (whose activation scales they read M-major, [groups, scale_rows]).
  // Their TMA copies read rows in plan order: they and the grouped path read x gathered into plan order (the other
  // small-M kernels gather as they load).
  const bool bf16_wgmma = path.small_m && path.tile_tokens == 256 && weight_format_ == SmallMWeights::bf16;
  const bool fp8_wgmma = path.small_m && path.tile_tokens == 128 && weight_format_ == SmallMWeights::fp8_block;
  const bool wgmma = bf16_wgmma || fp8_wgmma;
  ActivationOut act_out{h2.data(), h2_scale_ptr, static_a2_, /*per_row=*/row_scale13_ != nullptr};
  if (fp8_wgmma) act_out.scale_rows = scale_rows;
  // Decode batches (ExpertsPath::x_in_place): the wgmma GEMM1 reads each planned row's token row of x where it lies
  // (x_row; for fp8 with its row-major scales), and no gather pass runs. Plans with slot_rows (not the batched
  // format's, whose rows are x's own).
  const bool x_in_place =
      wgmma && plan.slot_rows && !path.wgmma_pairs && x_in_place_.value_or(path.x_in_place);
  if (!path.small_m || (wgmma && !x_in_place)) {
    const int64_t row_bytes = K * static_cast<int64_t>(dtype_size(act));
    launch_gather_rows(x.data(), row_bytes, x_scale_ptr, K / 128, plan, static_cast<int>(E), R,
                       static_cast<int>(config_.routing.top_k), x_sorted.data(),
                       fp8_ ? x_sorted_scales.data_as<float>() : nullptr, s, fp8_wgmma ? scale_rows : 0);
  }
  if (path.small_m) {
    // (x's rows for a GEMM that reads them in place, else R planned rows)
    const auto gemm = [&](const SmallMGemm& g, WgmmaOverlap overlap, Fp4DecodeOverlap fp4_overlap) {
      const int64_t x_rows = g.x_row ? x.size(0) : R;
      if (bf16_wgmma) launch_bf16_wgmma_gemm(g, plan, x_rows, E, path.wgmma_pairs, s, overlap);
      else if (fp8_wgmma) launch_fp8_wgmma_gemm(g, plan, x_rows, E, s);
      else if (overlap != WgmmaOverlap::none) launch_fp4_wgmma_gemm(g, plan, s, overlap);  // (fp4_wgmma_act)
      else launch_small_m_gemm(g, plan, path.tile_tokens, s, fp4_overlap);
    };
    const bool sorted = wgmma && !x_in_place;
    SmallMGemm g1{sorted ? x_sorted.data() : x.data(), sorted ? nullptr : plan.row_token,
                  fp8_wgmma && sorted ? x_sorted_scales.data_as<const float>() : x_scale_ptr,
                  weights_.w13.data(), w13_block_scales_,
                  fp4_ ? weights_.w13_scale.data_as<const uint8_t>() : nullptr, f32_or_null(weights_.w13_global_scale),
                  b13, h.data_as<bf16>(), N1, K, weight_format_, path.warp_tiles};
    g1.w_row_scales = row_scale13_;
    g1.persistent = fp4_persistent_.value_or(path.fp4_persistent);
    // GEMM1 writes h2 itself where its kernel carries the activation epilogue: the split-k kernels of 8-token
    // tiles (act_epilogue.cuh) and, for silu_mul and swiglu_oai, the persistent fp4 wgmma kernel (store_gated_tiles)
    // and the bf16 wgmma kernel (w13's rows read as groups of 8 gate and 8 up rows, gated_rows_map; H200, session 59:
    // 1.003-1.037x end to end at 16-8192 tokens).
    const bool fp4_wgmma_act = fp4_ && path.tile_tokens == kFp4WgmmaTileTokens && g1.persistent &&
                               is_sigmoid_gated(config_.activation.kind) && I % 8 == 0;
    g1.act_epilogue =
        small_m_act_epilogue_ && ((path.tile_tokens == kActEpilogueTileTokens && !path.warp_tiles) || fp4_wgmma_act);
    if (bf16_wgmma && bf16_wgmma_act_) g1.act_epilogue = true;
    g1.act = config_.activation;
    if (g1.act_epilogue) g1.y = h2.data_as<bf16>();
    // The wgmma GEMM2 starts in GEMM1's tail, on its items' counts (WgmmaOverlap): bf16 where the blocks run alone
    // (up to 128 rows an expert; in pairs it ran 0.99x, session 68), fp4 in the persistent kernel.
    const bool gemm2_early = gemm2_early_ && g1.act_epilogue && ((bf16_wgmma && !path.wgmma_pairs) || fp4_wgmma_act);
    // GEMM2's fp4 split-k blocks start in GEMM1's tail at 1 token (ExpertsPath::fp4_gemm2_overlap): GEMM1's blocks let
    // it launch early, and it reads its plan (written two launches back) and its first weights before its wait.
    const bool fp4_overlap = fp4_gemm2_overlap_ && path.fp4_gemm2_overlap;
    g1.split_k_warps = fp4_split_k_warps_.value_or(path.fp4_split_k_warps1);
    g1.split_k_fit = fp4_split_k_fit_;
    gemm(g1, gemm2_early ? WgmmaOverlap::signal : WgmmaOverlap::none, Fp4DecodeOverlap{fp4_overlap, false});
    if (!g1.act_epilogue)
      launch_activation(config_.activation, h.data_as<const bf16>(), nullptr, I, plan, static_cast<int>(E), R, act_out,
                        s);
    SmallMGemm g2{h2.data(), nullptr, h2_scale_ptr, weights_.w2.data(), w2_block_scales_,
                  fp4_ ? weights_.w2_scale.data_as<const uint8_t>() : nullptr, f32_or_null(weights_.w2_global_scale),
                  b2, y.data_as<bf16>(), K, I, weight_format_, path.warp_tiles};
    g2.w_row_scales = row_scale2_;
    g2.persistent = fp4_persistent_.value_or(path.fp4_persistent);
    g2.x_rows = R;
    g2.split_k_warps = fp4_split_k_warps_.value_or(path.fp4_split_k_warps2);
    g2.split_k_fit = fp4_split_k_fit_;
    gemm(g2, gemm2_early ? WgmmaOverlap::await : WgmmaOverlap::none, Fp4DecodeOverlap{fp4_overlap, fp4_overlap});
  } else {
    const Tensor dequant = fp4_ ? ws.take(DType::bf16, {fp4_dequant_elements()}) : Tensor{};
    if (gated) {  // GEMM1 writes act(gate) * up to h2
      run_gemm_weights(x_sorted.data(), nullptr, /*w13=*/true, h2.data(), N1, K, plan, path.gemm_tile_m, gemm_scratch,
                       dequant, s, gated_gemm1_);
    } else {
      run_gemm_weights(x_sorted.data(), fp8_ ? x_sorted_scales.data_as<const float>() : nullptr, /*w13=*/true,
                       h.data(), N1, K, plan, path.gemm_tile_m, gemm_scratch, dequant, s);
      launch_activation(config_.activation, h.data_as<const bf16>(), b13, I, plan, static_cast<int>(E), R, act_out, s);
    }
    run_gemm_weights(h2.data(), h2_scale_ptr, /*w13=*/false, y.data(), K, I, plan, path.gemm2_tile_m, gemm_scratch,
                     dequant, s);
    if (b2) launch_add_expert_bias(y.data_as<bf16>(), K, b2, plan, static_cast<int>(E), R, s);
  }
  return y;
}

// FUSEDMOE_FUSED_GEMM1 (read here, at construction): unset or 1, on; 0, off. Gated activations
// without a w13 bias and I % 128 == 0 only. It reads w13 where it lies (gate_up_mainloop_sm90.cuh);
// until session 75 it read a blocked copy of w13, so bf16 weights had it opt-in.
void CudaExperts::choose_gated_gemm1() {
  const ActivationKind a = config_.activation.kind;
  const int act = a == ActivationKind::silu_mul        ? 1
                  : a == ActivationKind::gelu_mul      ? 2
                  : a == ActivationKind::gelu_tanh_mul ? 3
                                                       : 0;
  const char* env = std::getenv("FUSEDMOE_FUSED_GEMM1");
  const bool wanted = !env || !env[0] || env[0] == '1';
  if (!wanted || act == 0 || fp8_ || weights_.w13_bias.defined() || config_.intermediate_size % 128 != 0) return;
  gated_gemm1_ = act;
}

int64_t CudaExperts::fp4_dequant_elements() const {
  return fp4_chunk_experts_ * larger_weight_values(config_);
}

void CudaExperts::run_gemm_weights(const void* a, const float* a_scales, bool w13, void* d, int64_t N, int64_t K,
                                   const RowPlan& plan, int tile_m, const Tensor& scratch, const Tensor& dequant,
                                   cudaStream_t s, int gated_act) const {
  const Tensor& w = w13 ? weights_.w13 : weights_.w2;
  if (!fp4_) {
    const Buffer& w_scale_mn = w13 ? w13_scale_mn_ : w2_scale_mn_;
    if (gemm_kind_ == GroupedGemmKind::fp8_group_scaled) {  // w_scale_mn holds a scale per expert
      run_gemm(a, nullptr, w.data(), nullptr, d, N, K, 0, num_local_, plan, tile_m, scratch, s, 0,
               w_scale_mn.data_as<const float>());
      return;
    }
    run_gemm(a, a_scales, w.data(), fp8_ ? w_scale_mn.data_as<const float>() : nullptr, d, N, K, 0, num_local_, plan,
             tile_m, scratch, s, gated_act);
    return;
  }
  // fp4: a chunk of experts at a time, dequantized to bf16, then the bf16 grouped GEMM on it.
  const Tensor& scales = w13 ? weights_.w13_scale : weights_.w2_scale;
  const float* global = f32_or_null(w13 ? weights_.w13_global_scale : weights_.w2_global_scale);
  for (int64_t e0 = 0; e0 < num_local_; e0 += fp4_chunk_experts_) {
    const int64_t n = std::min(fp4_chunk_experts_, num_local_ - e0);
    launch_dequant_fp4(weight_format_, w.data_as<const uint8_t>(), scales.data_as<const uint8_t>(), global, e0, n, N,
                       K, dequant.data_as<bf16>(), s);
    run_gemm(a, nullptr, dequant.data(), nullptr, d, N, K, e0, n, plan, tile_m, scratch, s, gated_act);
  }
}

void CudaExperts::run_gemm(const void* a, const float* a_scales, const void* b, const float* b_scales, void* d,
                           int64_t N, int64_t K, int64_t e0, int64_t num_experts, const RowPlan& plan, int tile_m,
                           const Tensor& scratch, cudaStream_t s, int gated_act, const float* group_scales) const {
  GroupedGemmProblem p;
  p.num_groups = static_cast<int>(num_experts);
  p.N = N;
  p.K = K;
  p.a = a;
  p.a_scales = a_scales;
  p.b = b;
  p.b_scales = b_scales;
  p.group_scales = group_scales;
  p.d = d;
  p.counts = plan.counts + e0;  // group g is local expert e0 + g
  p.offsets = plan.offsets + e0;
  p.sm_count = sm_count_;
  p.tile_m = tile_m;
  p.fast_accum = fp8_fast_accum_;
  p.gated_act = gated_act;
  const char* err = run_grouped_gemm(gemm_kind_, p, scratch.data(), scratch.nbytes(), s);
  FMOE_CHECK(err[0] == '\0', "grouped GEMM (N=", N, ", K=", K, ", ", num_local_, " experts): ", err);
}

// f32 [E, NB, KB] on the host -> [E, KB, NB] on the device (construction time only).
Buffer CudaExperts::transpose_block_scales(const float* src, int64_t E, int64_t NB, int64_t KB) const {
  Buffer t = Buffer::empty(DType::f32, {E, KB, NB});
  float* dst = t.data_as<float>();
  for (int64_t e = 0; e < E; ++e)
    for (int64_t n = 0; n < NB; ++n)
      for (int64_t kb = 0; kb < KB; ++kb) dst[(e * KB + kb) * NB + n] = src[(e * NB + n) * KB + kb];
  return copy_to(t, device_);
}

// The fp8 schemes' scales for the block-scaled kernels (see experts_cuda.h). Construction time only.
void CudaExperts::make_block_scales() {
  const QuantScheme q = config_.quant;
  const int64_t E = num_local_, K = config_.hidden_size, I = config_.intermediate_size, N1 = config_.w13_rows();
  // fp8-tensor's static activation scales (the layout check saw their shapes; the values live on the device).
  float a13 = 0.0f, a2 = 0.0f;
  if (q == QuantScheme::fp8_per_tensor) {
    for (const auto& [t, name, v] : {std::tuple{&weights_.a13_scale, "weights.a13_scale", &a13},
                                     std::tuple{&weights_.a2_scale, "weights.a2_scale", &a2}}) {
      *v = copy_to(*t, Device::cpu()).data_as<const float>()[0];
      FMOE_CHECK(*v > 0.0f && *v < 1e30f, name, " must be a positive finite scale, got ", *v);
    }
    static_a2_ = weights_.a2_scale.data_as<const float>();
  }
  // One weight matrix: its [E, NB, KB] block scales on the device for the small-M kernels (returned), and the
  // CUTLASS kernels' copy: fp8-block's [E, KB, NB] (MN-major); fp8-tensor's [E] group scales (its activations'
  // times the expert's); fp8-channel's [E, N] row scales (our copy: the epilogue reads them 16 bytes at a time).
  const auto blocks = [&](const Tensor& scale, float a_scale, int64_t N, int64_t cols, Buffer& made,
                          Buffer& mn) -> const float* {
    const int64_t NB = (N + 127) / 128, KB = cols / 128;
    const Buffer host_scale = copy_to(scale, Device::cpu());
    const float* src = host_scale.data_as<const float>();
    if (q == QuantScheme::fp8_block) {
      mn = transpose_block_scales(src, E, NB, KB);
      return scale.data_as<const float>();
    }
    Buffer host = Buffer::empty(DType::f32, {E, NB, KB});
    for (int64_t e = 0; e < E; ++e)
      std::fill_n(host.data_as<float>() + e * NB * KB, NB * KB, q == QuantScheme::fp8_per_tensor ? src[e] : 1.0f);
    if (q == QuantScheme::fp8_per_tensor) {  // the grouped path's scale per expert
      Buffer group = Buffer::empty(DType::f32, {E});
      for (int64_t e = 0; e < E; ++e) group.data_as<float>()[e] = a_scale * src[e];
      mn = copy_to(group.view(), device_);
    } else {
      mn = copy_to(host_scale.view(), device_);
    }
    made = copy_to(host.view(), device_);
    return made.data_as<const float>();
  };
  w13_block_scales_ = blocks(weights_.w13_scale, a13, N1, K, w13_blocks_, w13_scale_mn_);
  w2_block_scales_ = blocks(weights_.w2_scale, a2, K, I, w2_blocks_, w2_scale_mn_);
  if (q == QuantScheme::fp8_per_channel) {
    row_scale13_ = weights_.w13_scale.data_as<const float>();
    row_scale2_ = weights_.w2_scale.data_as<const float>();
  }
}

namespace {
const GroupedGemmVariant& gemm_variant(GroupedGemmKind kind, int tile_m, bool fast_accum) {
  const bool tile64 = tile_m == 64;
  if (kind == GroupedGemmKind::fp8_group_scaled && fast_accum)
    return tile64 ? kGroupedGemmFp8GroupScaledFastAccumPingpong64x256 : kGroupedGemmFp8GroupScaledFastAccumCoop128x256;
  if (kind == GroupedGemmKind::fp8_group_scaled)
    return tile64 ? kGroupedGemmFp8GroupScaledPingpong64x128 : kGroupedGemmFp8GroupScaledCoop128x128;
  if (kind == GroupedGemmKind::fp8_channel_scaled && fast_accum)
    return tile64 ? kGroupedGemmFp8ChannelScaledFastAccumPingpong64x256
                  : kGroupedGemmFp8ChannelScaledFastAccumCoop128x256;
  if (kind == GroupedGemmKind::fp8_channel_scaled)
    return tile64 ? kGroupedGemmFp8ChannelScaledPingpong64x128 : kGroupedGemmFp8ChannelScaledCoop128x128;
  if (kind == GroupedGemmKind::fp8_block)
    return tile_m == 64 ? kGroupedGemmFp8Pingpong64x128 : kGroupedGemmFp8Coop128x128;
  return tile_m == 64 ? kGroupedGemmBf16Pingpong64x256 : kGroupedGemmBf16Coop128x256;
}
}  // namespace

size_t grouped_gemm_workspace_bytes(GroupedGemmKind kind, int num_groups, int sm_count) {
  size_t bytes = kGroupedGemmBf16GatedCoop128x256.workspace_bytes(num_groups, sm_count);
  for (int tile_m : {128, 64})
    for (bool fast_accum : {false, true})
      bytes = std::max(bytes, gemm_variant(kind, tile_m, fast_accum).workspace_bytes(num_groups, sm_count));
  return bytes;
}

const char* run_grouped_gemm(GroupedGemmKind kind, const GroupedGemmProblem& p, void* workspace, size_t bytes,
                             cudaStream_t stream) {
  if (p.tile_m != 64 && p.tile_m != 128) return "tile_m must be 64 or 128";
  if (p.gated_act > 0) {  // one variant, whatever the tile of the plain GEMMs
    if (kind != GroupedGemmKind::bf16 || p.N % 256 != 0) return "the gated GEMM1 takes bf16 and N % 256 == 0";
    return kGroupedGemmBf16GatedCoop128x256.run(p, workspace, bytes, stream);
  }
  return gemm_variant(kind, p.tile_m, p.fast_accum).run(p, workspace, bytes, stream);
}

std::unique_ptr<Experts> make_experts(const MoEConfig& config, const ExpertWeights& weights, bool monolithic) {
  if (monolithic) return make_monolithic_experts(config, weights);
  return std::make_unique<CudaExperts>(config, weights);
}

}  // namespace fusedmoe::cuda
