// bf16 grouped GEMM variant: 128x256x64 tiles, cooperative (2 consumer warpgroups), no cluster.
#include "cuda/cutlass/grouped_gemm_sm90.cuh"

namespace fusedmoe::cuda {
namespace {
using Variant = sm90::GroupedGemm<cutlass::bfloat16_t, cute::Shape<cute::_128, cute::_256, cute::_64>,
                                  cute::Shape<cute::_1, cute::_1, cute::_1>,
                                  cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative,
                                  cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative, false>;
}

size_t grouped_gemm_bf16_workspace_bytes(int num_groups, int sm_count) {
  return Variant::workspace_bytes(num_groups, sm_count);
}

const char* grouped_gemm_bf16(const GroupedGemmProblem& p, void* workspace, size_t bytes, cudaStream_t stream) {
  return sm90::run<Variant>(p, workspace, bytes, stream);
}

}  // namespace fusedmoe::cuda
