// fp8 block-scaled grouped GEMM variant: 64x128x128 tiles, pingpong, per-k-block promotion.
#include "cuda/cutlass/grouped_gemm_sm90.cuh"

namespace fusedmoe::cuda {
namespace {
using Variant = sm90::GroupedGemm<cutlass::float_e4m3_t, cute::Shape<cute::_64, cute::_128, cute::_128>,
                                  cute::Shape<cute::_1, cute::_1, cute::_1>,
                                  cutlass::gemm::KernelPtrArrayTmaWarpSpecializedPingpongFP8Blockwise,
                                  cutlass::epilogue::PtrArrayTmaWarpSpecializedPingpong, true>;
}
const GroupedGemmVariant kGroupedGemmFp8Pingpong64x128{&Variant::workspace_bytes, &sm90::run<Variant>};
}  // namespace fusedmoe::cuda
