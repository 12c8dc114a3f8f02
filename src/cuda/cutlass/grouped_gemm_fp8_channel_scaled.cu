// fp8 grouped GEMM variant for fp8-channel (activations per token x weights per channel): CUTLASS's
// FP8FastAccum mainloop (no per-k-block promotion; nothing varies along k) and an epilogue that multiplies
// the f32 accumulators by the activation scale of A's row and the weight scale of B's row before the bf16
// rounding (sm90::ChannelScaledEvt). 128x256x128 tiles, cooperative, fp8-tensor's tile; the 64-row tiles are
// grouped_gemm_fp8_channel_scaled_pingpong64.cu.
#include "cuda/cutlass/grouped_gemm_sm90.cuh"

namespace fusedmoe::cuda {
namespace {
using Variant = sm90::GroupedGemm<cutlass::float_e4m3_t, cute::Shape<cute::_128, cute::_256, cute::_128>,
                                  cute::Shape<cute::_1, cute::_1, cute::_1>,
                                  cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperativeFP8FastAccum,
                                  cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative, false,
                                  sm90::Epi::channel_scaled>;
}
const GroupedGemmVariant kGroupedGemmFp8ChannelScaledCoop128x256{&Variant::workspace_bytes, &sm90::run<Variant>};
}  // namespace fusedmoe::cuda
