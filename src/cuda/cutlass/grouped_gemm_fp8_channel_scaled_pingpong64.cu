// The fp8-channel variant of grouped_gemm_fp8_channel_scaled.cu (promoting fp8 mainloop, activation and weight
// row scales in the epilogue) with 64-row tiles, one per consumer warpgroup in turn (pingpong): 64x128x128, for
// experts of up to 128 rows (ExpertsPath::gemm_tile_m).
#include "cuda/cutlass/grouped_gemm_sm90.cuh"

namespace fusedmoe::cuda {
namespace {
using Variant = sm90::GroupedGemm<cutlass::float_e4m3_t, cute::Shape<cute::_64, cute::_128, cute::_128>,
                                  cute::Shape<cute::_1, cute::_1, cute::_1>,
                                  cutlass::gemm::KernelPtrArrayTmaWarpSpecializedPingpong,
                                  cutlass::epilogue::PtrArrayTmaWarpSpecializedPingpong, false,
                                  sm90::Epi::channel_scaled>;
}
const GroupedGemmVariant kGroupedGemmFp8ChannelScaledPingpong64x128{&Variant::workspace_bytes, &sm90::run<Variant>};
}  // namespace fusedmoe::cuda
