// The fp8-tensor variant of grouped_gemm_fp8_group_scaled.cu (one f32 scale per group in the epilogue,
// promoting fp8 mainloop) with 64-row tiles, one per consumer warpgroup in turn (pingpong): 64x128x128, for
// experts of up to 128 rows (ExpertsPath::gemm_tile_m).
#include "cuda/cutlass/grouped_gemm_sm90.cuh"

namespace fusedmoe::cuda {
namespace {
using Variant = sm90::GroupedGemm<cutlass::float_e4m3_t, cute::Shape<cute::_64, cute::_128, cute::_128>,
                                  cute::Shape<cute::_1, cute::_1, cute::_1>,
                                  cutlass::gemm::KernelPtrArrayTmaWarpSpecializedPingpong,
                                  cutlass::epilogue::PtrArrayTmaWarpSpecializedPingpong, false>;
}
const GroupedGemmVariant kGroupedGemmFp8GroupScaledPingpong64x128{&Variant::workspace_bytes, &sm90::run<Variant>};
}  // namespace fusedmoe::cuda
