// fp8 block-scaled grouped GEMM variant: 128x128x128 tiles (k tile = scale block), cooperative,
// per-k-block promotion of the f32 accumulators, no cluster.
#include "cuda/cutlass/grouped_gemm_sm90.cuh"

namespace fusedmoe::cuda {
namespace {
using Variant = sm90::GroupedGemm<cutlass::float_e4m3_t, cute::Shape<cute::_128, cute::_128, cute::_128>,
                                  cute::Shape<cute::_1, cute::_1, cute::_1>,
                                  cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperativeFP8Blockwise,
                                  cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative, true>;
}
const GroupedGemmVariant kGroupedGemmFp8Coop128x128{&Variant::workspace_bytes, &sm90::run<Variant>};
}  // namespace fusedmoe::cuda
