// grouped_gemm_fp8_group_scaled_fast_accum.cu (FP8FastAccum, FUSEDMOE_FP8_FAST_ACCUM=1) with 64-row tiles, one per
// consumer warpgroup in turn (pingpong): 64x256x128, for experts of up to 512 rows (ExpertsPath::gemm_tile_m).
#include "cuda/cutlass/grouped_gemm_sm90.cuh"

namespace fusedmoe::cuda {
namespace {
using Variant = sm90::GroupedGemm<cutlass::float_e4m3_t, cute::Shape<cute::_64, cute::_256, cute::_128>,
                                  cute::Shape<cute::_1, cute::_1, cute::_1>,
                                  cutlass::gemm::KernelPtrArrayTmaWarpSpecializedPingpongFP8FastAccum,
                                  cutlass::epilogue::PtrArrayTmaWarpSpecializedPingpong, false>;
}
const GroupedGemmVariant kGroupedGemmFp8GroupScaledFastAccumPingpong64x256{&Variant::workspace_bytes,
                                                                           &sm90::run<Variant>};
}  // namespace fusedmoe::cuda
