// fp8 grouped GEMM variant with one f32 scale per group, applied to the f32 accumulators in the epilogue
// (D = scale[g] * A.B^T, then bf16): fp8-tensor, whose activations share one static scale and whose
// expert's weights share one, so nothing varies along k. CUTLASS's FP8FastAccum mainloop accumulates in
// the tensor cores without promoting every k block (the blockwise kernels' cost; vLLM's per-tensor fp8
// kernels run the same schedule). 128x256x128 tiles, cooperative, the bf16 variant's tile; the 64-row
// tiles are grouped_gemm_fp8_group_scaled_pingpong64.cu.
#include "cuda/cutlass/grouped_gemm_sm90.cuh"

namespace fusedmoe::cuda {
namespace {
using Variant = sm90::GroupedGemm<cutlass::float_e4m3_t, cute::Shape<cute::_128, cute::_256, cute::_128>,
                                  cute::Shape<cute::_1, cute::_1, cute::_1>,
                                  cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperativeFP8FastAccum,
                                  cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative, false>;
}
const GroupedGemmVariant kGroupedGemmFp8GroupScaledCoop128x256{&Variant::workspace_bytes, &sm90::run<Variant>};
}  // namespace fusedmoe::cuda
