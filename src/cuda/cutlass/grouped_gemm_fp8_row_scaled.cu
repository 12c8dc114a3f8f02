// fp8 grouped GEMM variant with a scale per weight row and 128-wide k block (fp8-channel's per-row
// weight scales, [E, K/128, N]) next to the activations' per 1x128 group: CUTLASS's blockwise mainloop
// with a scale granularity of 1 along N, so that both scales multiply each k block's sums before the
// bf16 rounding, as the reference does. 128x128x128 tiles, cooperative, clusters of 1x2 tiles, as the
// fp8-block variant (grouped_gemm_fp8_block.cu); the only tile for fp8-channel.
#include "cuda/cutlass/grouped_gemm_sm90.cuh"

namespace fusedmoe::cuda {
namespace {
using Variant = sm90::GroupedGemm<cutlass::float_e4m3_t, cute::Shape<cute::_128, cute::_128, cute::_128>,
                                  cute::Shape<cute::_1, cute::_2, cute::_1>,
                                  cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperativeFP8Blockwise,
                                  cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative, true, sm90::Epi::linear, 1>;
}
const GroupedGemmVariant kGroupedGemmFp8RowScaledCoop128x128{&Variant::workspace_bytes, &sm90::run<Variant>};
}  // namespace fusedmoe::cuda
