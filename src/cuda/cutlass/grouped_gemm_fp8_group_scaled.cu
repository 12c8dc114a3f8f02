// fp8 grouped GEMM variant with one f32 scale per group, applied to the f32 accumulators in the epilogue
// (D = scale[g] * A.B^T, then bf16): fp8-tensor, whose activations share one static scale and whose
// expert's weights share one, so nothing varies along k. CUTLASS's fp8 mainloop promotes the tensor cores'
// partial sums into f32 accumulators every 128-wide k block: its FP8FastAccum mainloop (vLLM's per-tensor
// schedule) does not, and lost accuracy at long K (fuzz seed 1568, session 42). 128x128x128 tiles,
// cooperative, clusters of 1x2 tiles (the promotion holds a second accumulator: 128x256 tiles would spill);
// the 64-row tiles are grouped_gemm_fp8_group_scaled_pingpong64.cu.
#include "cuda/cutlass/grouped_gemm_sm90.cuh"

namespace fusedmoe::cuda {
namespace {
using Variant = sm90::GroupedGemm<cutlass::float_e4m3_t, cute::Shape<cute::_128, cute::_128, cute::_128>,
                                  cute::Shape<cute::_1, cute::_2, cute::_1>,
                                  cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative,
                                  cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative, false>;
}
const GroupedGemmVariant kGroupedGemmFp8GroupScaledCoop128x128{&Variant::workspace_bytes, &sm90::run<Variant>};
}  // namespace fusedmoe::cuda
