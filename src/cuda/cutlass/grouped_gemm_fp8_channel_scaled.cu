// fp8 grouped GEMM variant for fp8-channel (activations per token x weights per channel): CUTLASS's fp8
// mainloop that promotes the tensor cores' partial sums into f32 accumulators every 128-wide k block (the
// FP8FastAccum mainloop does not, and lost accuracy at long K: fuzz seed 1568, session 42), and an epilogue
// that multiplies the f32 accumulators by the activation scale of A's row and the weight scale of B's row
// before the bf16 rounding (sm90::ChannelScaledEvt). 128x128x128 tiles, cooperative, clusters of 1x2 tiles
// (the promotion holds a second accumulator: 128x256 tiles would spill); the 64-row tiles are
// grouped_gemm_fp8_channel_scaled_pingpong64.cu.
#include "cuda/cutlass/grouped_gemm_sm90.cuh"

namespace fusedmoe::cuda {
namespace {
using Variant = sm90::GroupedGemm<cutlass::float_e4m3_t, cute::Shape<cute::_128, cute::_128, cute::_128>,
                                  cute::Shape<cute::_1, cute::_2, cute::_1>,
                                  cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative,
                                  cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative, false,
                                  sm90::Epi::channel_scaled>;
}
const GroupedGemmVariant kGroupedGemmFp8ChannelScaledCoop128x128{&Variant::workspace_bytes, &sm90::run<Variant>};
}  // namespace fusedmoe::cuda
