// bf16 grouped GEMM variant: 128x256x64 tiles, cooperative (2 consumer warpgroups), no cluster.
#include "cuda/cutlass/grouped_gemm_sm90.cuh"

namespace fusedmoe::cuda {
namespace {
using Variant = sm90::GroupedGemm<cutlass::bfloat16_t, cute::Shape<cute::_128, cute::_256, cute::_64>,
                                  cute::Shape<cute::_1, cute::_1, cute::_1>,
                                  cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative,
                                  cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative, false>;
}
const GroupedGemmVariant kGroupedGemmBf16Coop128x256{&Variant::workspace_bytes, &sm90::run<Variant>};
}  // namespace fusedmoe::cuda
