// fp8-channel's grouped GEMM with CUTLASS's FP8FastAccum mainloop, taken only with FUSEDMOE_FP8_FAST_ACCUM=1: the
// tensor cores accumulate over all of K without promoting partial sums into f32 registers, which frees the
// second accumulator for 128x256x128 tiles (cooperative) and costs accuracy at long K (grouped_gemm_fp8_channel_
// scaled.cu promotes). Epilogue as there: A's row scale times B's row scale (sm90::ChannelScaledEvt). The 64-row
// tiles are grouped_gemm_fp8_channel_scaled_fast_accum_pingpong64.cu.
#include "cuda/cutlass/grouped_gemm_sm90.cuh"

namespace fusedmoe::cuda {
namespace {
using Variant = sm90::GroupedGemm<cutlass::float_e4m3_t, cute::Shape<cute::_128, cute::_256, cute::_128>,
                                  cute::Shape<cute::_1, cute::_1, cute::_1>,
                                  cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperativeFP8FastAccum,
                                  cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative, false,
                                  sm90::Epi::channel_scaled>;
}
const GroupedGemmVariant kGroupedGemmFp8ChannelScaledFastAccumCoop128x256{&Variant::workspace_bytes,
                                                                          &sm90::run<Variant>};
}  // namespace fusedmoe::cuda
