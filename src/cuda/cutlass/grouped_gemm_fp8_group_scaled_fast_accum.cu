// fp8-tensor's grouped GEMM with CUTLASS's FP8FastAccum mainloop (vLLM's per-tensor fp8 schedule), taken only with
// FUSEDMOE_FP8_FAST_ACCUM=1: the tensor cores accumulate over all of K without promoting partial sums into f32
// registers, which frees the second accumulator for 128x256x128 tiles (cooperative) and costs accuracy at long K
// (grouped_gemm_fp8_group_scaled.cu promotes). One f32 scale per group in the epilogue. The 64-row tiles are
// grouped_gemm_fp8_group_scaled_fast_accum_pingpong64.cu.
#include "cuda/cutlass/grouped_gemm_sm90.cuh"

namespace fusedmoe::cuda {
namespace {
using Variant = sm90::GroupedGemm<cutlass::float_e4m3_t, cute::Shape<cute::_128, cute::_256, cute::_128>,
                                  cute::Shape<cute::_1, cute::_1, cute::_1>,
                                  cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperativeFP8FastAccum,
                                  cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative, false>;
}
const GroupedGemmVariant kGroupedGemmFp8GroupScaledFastAccumCoop128x256{&Variant::workspace_bytes,
                                                                        &sm90::run<Variant>};
}  // namespace fusedmoe::cuda
