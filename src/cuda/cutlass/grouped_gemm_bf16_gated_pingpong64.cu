// bf16 grouped GEMM1 variant with the gated activation in the epilogue (gated_epilogue_sm90.cuh):
// 64x256x64 tiles, pingpong, so one warpgroup's epilogue runs while the other's mainloop does (on
// H200 the 128x256 cooperative tiles with the same epilogue were up to 2.6% slower at 8192 tokens).
#include "cuda/cutlass/grouped_gemm_sm90.cuh"

namespace fusedmoe::cuda {
namespace {
using Variant = sm90::GroupedGemm<cutlass::bfloat16_t, cute::Shape<cute::_64, cute::_256, cute::_64>,
                                  cute::Shape<cute::_1, cute::_1, cute::_1>,
                                  cutlass::gemm::KernelPtrArrayTmaWarpSpecializedPingpong,
                                  cutlass::epilogue::PtrArrayNoSmemWarpSpecialized, false, sm90::Epi::gated>;
}
const GroupedGemmVariant kGroupedGemmBf16GatedPingpong64x256{&Variant::workspace_bytes, &sm90::run<Variant>};
}  // namespace fusedmoe::cuda
