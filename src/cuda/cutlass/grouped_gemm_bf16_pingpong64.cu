// bf16 grouped GEMM variant: 64x256x64 tiles, pingpong (two consumer warpgroups on alternate tiles).
#include "cuda/cutlass/grouped_gemm_sm90.cuh"

namespace fusedmoe::cuda {
namespace {
using Variant = sm90::GroupedGemm<cutlass::bfloat16_t, cute::Shape<cute::_64, cute::_256, cute::_64>,
                                  cute::Shape<cute::_1, cute::_1, cute::_1>,
                                  cutlass::gemm::KernelPtrArrayTmaWarpSpecializedPingpong,
                                  cutlass::epilogue::PtrArrayTmaWarpSpecializedPingpong, false>;
}
const GroupedGemmVariant kGroupedGemmBf16Pingpong64x256{&Variant::workspace_bytes, &sm90::run<Variant>};
}  // namespace fusedmoe::cuda
