// bf16 grouped GEMM1 variant with the gated activation in the epilogue (gated_epilogue_sm90.cuh):
// 128x256x64 tiles, cooperative (2 consumer warpgroups of 64 rows each), no cluster. On the H100 (session 73,
// same-run A/B, mixtral-8x7b with FUSEDMOE_FUSED_GEMM1=1, 2 rounds) it ran 1.010x / 1.036x against GEMM1 +
// the activation kernel at 4096 / 8192 tokens, where the 64x256 pingpong variant it replaced ran 0.857x / 0.904x
// (bit-equal outputs). On the H200 of session 11 the pingpong tiles had been up to 2.6% faster than these.
#include "cuda/cutlass/grouped_gemm_sm90.cuh"

namespace fusedmoe::cuda {
namespace {
using Variant = sm90::GroupedGemm<cutlass::bfloat16_t, cute::Shape<cute::_128, cute::_256, cute::_64>,
                                  cute::Shape<cute::_1, cute::_1, cute::_1>,
                                  cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative,
                                  cutlass::epilogue::PtrArrayNoSmemWarpSpecialized, false, sm90::Epi::gated>;
}
const GroupedGemmVariant kGroupedGemmBf16GatedCoop128x256{&Variant::workspace_bytes, &sm90::run<Variant>};
}  // namespace fusedmoe::cuda
