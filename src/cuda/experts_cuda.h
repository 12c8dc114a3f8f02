// CudaExperts: the CUDA modular experts (standard or batched format), and the pieces of it the monolithic
// experts reuse: the row plan's buffers and the experts run on a plan that is already built.
#pragma once

#include <optional>
#include <string>

#include "cuda/cutlass/grouped_gemm.h"
#include "cuda/heuristics.h"
#include "cuda/kernels/kernels.h"
#include "fusedmoe/experts.h"
#include "fusedmoe/weights.h"

namespace fusedmoe::cuda {

// The row plan of M tokens, carved from a workspace (RowPlan's pointers, and slot_rows as a tensor).
struct PlanBuffers {
  RowPlan plan;
  Tensor slot_rows;  // i32 [M, k]
  int32_t* scratch;  // plan_scratch_ints(M * k, E_local) ints for launch_plan (null if 0)
};

class CudaExperts final : public ModularExperts {
 public:
  CudaExperts(const MoEConfig& config, const ExpertWeights& weights);

  std::string name() const override {
    return std::string(batched_ ? "cuda.BatchedExperts[" : "cuda.Experts[") + quant_scheme_name(config_.quant) + "]";
  }
  ActivationFormat activation_format() const override { return config_.activation_format; }
  Device device() const override { return device_; }
  // fp8-tensor's static input scale (device f32 [1]); undefined for the other schemes.
  Tensor static_input_scale() const override { return weights_.a13_scale; }
  size_t workspace_bytes(int64_t M) const override;
  // Standard: plans the rows of in.topk_ids, then runs the experts on them. Batched: plans the
  // batches of in.expert_num_tokens.
  ExpertsOutput apply(const PreparedActivations& in, Workspace& ws) const override;

  // The plan's share of workspace_bytes(M), and taking it (first, before the rest).
  static size_t plan_bytes(int64_t M, int top_k, int64_t num_local);
  PlanBuffers take_plan(int64_t M, Workspace& ws) const;
  // The experts on rows already planned (in.topk_ids give M; the plan is of those ids).
  ExpertsOutput run_planned(const PreparedActivations& in, const PlanBuffers& planned, Workspace& ws) const;
  // The fused decode kernel (decode_fused.cu: both GEMMs and the activation in one launch) for a standard-format
  // batch of M tokens: whether it runs (bf16 weights; choose_fused_decode, FUSEDMOE_FUSED_DECODE=1 / 0 forcing it
  // on / off).
  bool fused_decode_runs(int64_t M) const;
  // Gives `planned` the kernel's work items and takes its counters from ws, which the launch that builds the
  // plan must zero (launch_plan's or launch_route_plan's `zero`).
  Tensor prepare_fused_decode(int64_t M, PlanBuffers& planned, Workspace& ws) const;
  // The kernel on the planned rows of x [M, K]: returns y, the experts' bf16 rows [M k, K] in plan order, and
  // with out set also writes out [M, K] = the top-k sum weighted by topk_weights (null: unweighted).
  Tensor run_fused_decode(const Tensor& x, const PlanBuffers& planned, const Tensor& counters,
                          const float* topk_weights, bf16* out, Workspace& ws) const;
  // Device expert_map (global -> local), or null when every expert is local.
  const int32_t* device_expert_map() const;
  int64_t num_local() const { return num_local_; }
  const ExpertWeights& weights() const { return weights_; }
  int sm_count() const { return sm_count_; }

 private:
  ExpertsOutput apply_batched(const PreparedActivations& in, Workspace& ws) const;
  // GEMM1, activation, GEMM2 of R planned rows of x; the bf16 output rows [R, K].
  Tensor run_rows(const Tensor& x, const Tensor& x_scales, const RowPlan& plan, int64_t R, const ExpertsPath& path,
                  Workspace& ws) const;
  // run_rows' share of the workspace; gemm1_rows: rows of room for GEMM1's output before the activation.
  size_t rows_workspace_bytes(int64_t R, bool grouped, int64_t gemm1_rows) const;
  // The heuristic's path (heuristics.h) for this layer at `tokens` tokens over `experts` experts.
  ExpertsPath path_for(int64_t tokens, int64_t experts) const;
  // Whether the path's GEMM1 is the gated one (it writes h2, not GEMM1's output), and the rows of
  // GEMM1 output a workspace for M tokens keeps room for (workspace_bytes never shrinks as M grows).
  bool gated_gemm1_runs(const ExpertsPath& path) const;
  int64_t gemm1_out_rows(int64_t M) const;
  // GEMM of the planned rows with w13 or w2 (fp4: chunk by chunk through `dequant`); tile_m: the
  // grouped GEMM variant's rows per tile (ExpertsPath::gemm_tile_m). gated_act > 0 (w13 only):
  // GEMM1 with the activation in its epilogue, d is then h2, N/2 wide.
  void run_gemm_weights(const void* a, const float* a_scales, bool w13, void* d, int64_t N, int64_t K,
                        const RowPlan& plan, int tile_m, const Tensor& scratch, const Tensor& dequant,
                        cudaStream_t s, int gated_act = 0) const;
  // Grouped GEMM of local experts [e0, e0 + num_experts), b holding exactly those experts.
  void run_gemm(const void* a, const float* a_scales, const void* b, const float* b_scales, void* d, int64_t N,
                int64_t K, int64_t e0, int64_t num_experts, const RowPlan& plan, int tile_m, const Tensor& scratch,
                cudaStream_t s, int gated_act = 0, const float* group_scales = nullptr) const;
  void choose_gated_gemm1();
  int64_t fp4_dequant_elements() const;
  Buffer transpose_block_scales(const float* host_scales, int64_t E, int64_t NB, int64_t KB) const;
  // The block scales of every fp8 scheme: fp8-block's own; for fp8-tensor every 128x128 block of expert e
  // takes its scale, for fp8-channel 1 (its per-row scales go in separately).
  void make_block_scales();
  // fp4 weights in the checkpoint's order: w13 and w2 copied into the sm90 packing the fp4 kernels read
  // (packed_w13_, packed_w2_), weights_ pointing at the copies. Weights packed in place beforehand
  // (pack_fp4_weights_sm90) are read where they lie.
  void pack_fp4_weights();

  MoEConfig config_;
  ExpertWeights weights_;
  Device device_;
  int sm_count_ = 0;
  int64_t num_local_ = 0;
  bool fp8_ = false, fp4_ = false, batched_ = false;
  SmallMWeights weight_format_ = SmallMWeights::bf16;
  int64_t fp4_chunk_experts_ = 0;  // experts dequantized at a time on the fp4 grouped path
  // The grouped path's GEMMs. fp8-channel: the row's activation scale and each weight row's scale in the
  // epilogue (fp8_channel_scaled); fp8-tensor: a scale per expert (fp8_group_scaled). Both promote the tensor
  // cores' sums every k block, or, with FUSEDMOE_FP8_FAST_ACCUM=1, run CUTLASS's FP8FastAccum variants.
  GroupedGemmKind gemm_kind_ = GroupedGemmKind::bf16;
  bool fp8_fast_accum_ = false;
  size_t gemm_scratch_bytes_ = 0;
  Buffer expert_map_, w13_scale_mn_, w2_scale_mn_;
  Buffer packed_w13_, packed_w2_;
  // The fp8 schemes all run the block-scaled kernels: the weight scales per 128x128 block ([E, N/128,
  // K/128]: the small-M kernels'; *_scale_mn_ is the CUTLASS kernels' [E, K/128, N/128]), the checkpoint's
  // for fp8-block, made at construction for fp8-tensor and fp8-channel (w13_blocks_, w2_blocks_).
  // fp8-channel's blocks are 1: its per-row scales (row_scale13_, row_scale2_: weights.w13_scale, w2_scale)
  // go to the small-M kernels' epilogue and, as *_scale_mn_, to the CUTLASS kernels: [E, N] (our aligned
  // copy) for the channel-scaled epilogue; its activation quantizes GEMM2's input per row. fp8-tensor's static
  // a2 scale quantizes GEMM2's input, and its *_scale_mn_ are [E] group scales (a13 or a2 times the expert's
  // weight scale) for the group-scaled CUTLASS variants.
  const float* w13_block_scales_ = nullptr;
  const float* w2_block_scales_ = nullptr;
  Buffer w13_blocks_, w2_blocks_;
  const float* row_scale13_ = nullptr;
  const float* row_scale2_ = nullptr;
  const float* static_a2_ = nullptr;
  // The grouped path's GEMM1 with the gated activation in its epilogue (sm90 GatedAct, 0: GEMM1
  // then the activation kernel). It reads w13's gate and up blocks where they lie
  // (src/cuda/cutlass/gate_up_mainloop_sm90.cuh), so it costs no copy of the weights.
  int gated_gemm1_ = 0;
  // The small-M path's GEMM1 with the activation in its epilogue (SmallMGemm::act_epilogue): bf16 and
  // fp4 weights, split-k 8-token tiles, and the persistent fp4 wgmma kernel (silu_mul, swiglu_oai);
  // FUSEDMOE_SMALL_M_ACT_EPILOGUE=0 turns it off.
  bool small_m_act_epilogue_ = false;
  // FUSEDMOE_FP4_PERSISTENT: 1 runs the fp4 wgmma kernel persistent wherever it runs, 0 never, unset as the path says.
  std::optional<bool> fp4_persistent_;
  std::optional<bool> x_in_place_;  // FUSEDMOE_X_IN_PLACE, read at construction (else ExpertsPath::x_in_place)
  // The bf16 wgmma GEMM1 applies the gated activation itself (silu_mul, swiglu_oai; FUSEDMOE_WGMMA_GATE_UP=0: off).
  bool bf16_wgmma_act_ = false;
  // The wgmma GEMM2 runs in GEMM1's tail (WgmmaOverlap: bf16 blocks alone, the persistent fp4 kernel;
  // FUSEDMOE_GEMM2_EARLY=0: after GEMM1).
  bool gemm2_early_ = true;
  // GEMM2's fp4 split-k blocks start in GEMM1's tail where the path says (ExpertsPath::fp4_gemm2_overlap;
  // FUSEDMOE_FP4_GEMM2_OVERLAP=0: never).
  bool fp4_gemm2_overlap_ = true;
  // FUSEDMOE_FP4_SPLIT_K_WARPS=4 or 8: the fp4 split-k blocks' warps for both GEMMs, over the path's choice.
  std::optional<int> fp4_split_k_warps_;
  bool fp4_split_k_fit_ = true;  // SmallMGemm::split_k_fit (FUSEDMOE_FP4_SPLIT_K_FIT)
  // The fused decode kernel: whether the shape allows it, FUSEDMOE_FUSED_DECODE, one expert's bf16 weight bytes.
  bool fused_decode_supported_ = false;
  FusedDecodeMode fused_decode_mode_ = FusedDecodeMode::automatic;
  int64_t expert_bytes_ = 0;
};

}  // namespace fusedmoe::cuda
