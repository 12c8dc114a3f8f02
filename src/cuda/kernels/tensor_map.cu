// Host-side TMA tensor maps (see tensor_map.h).
#include "cuda/kernels/tensor_map.h"

#include <cuda_runtime.h>

#include "cuda/cuda_util.h"

namespace fusedmoe::cuda {

PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const auto encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    FMOE_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found));
    FMOE_CHECK(found == cudaDriverEntryPointSuccess && fn, "the CUDA driver has no cuTensorMapEncodeTiled");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  return encode;
}

CUtensorMap rows_map(const void* base, int64_t rows, int64_t K, bool fp8, uint32_t box_rows) {
  constexpr cuuint32_t kRowBytes = 128;  // a k tile's bytes of a row (the swizzle's span)
  CUtensorMap map{};
  const cuuint64_t dims[2] = {cuuint64_t(K), cuuint64_t(rows)};
  const cuuint64_t strides[1] = {cuuint64_t(K) * (fp8 ? 1 : 2)};
  const cuuint32_t box[2] = {fp8 ? kRowBytes : kRowBytes / 2, box_rows};
  const cuuint32_t unit[2] = {1, 1};
  const CUresult r = tensor_map_encoder()(&map, fp8 ? CU_TENSOR_MAP_DATA_TYPE_UINT8 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
                                          2, const_cast<void*>(base), dims, strides, box, unit,
                                          CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                          CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  FMOE_CHECK(r == CUDA_SUCCESS, "cuTensorMapEncodeTiled failed (", int(r), ") for ", fp8 ? "e4m3" : "bf16",
             " rows [", rows, ", ", K, "]");
  return map;
}

CUtensorMap gated_rows_map(const void* base, int64_t E, int64_t I, int64_t K, bool interleaved, uint32_t box_groups) {
  FMOE_CHECK(I % 8 == 0, "the gated weight map needs I % 8 == 0, got I=", I);
  CUtensorMap map{};
  const cuuint64_t row = cuuint64_t(K) * 2;  // a row's bytes
  // {k, row of the group's 8, gate / up, group, expert}
  const cuuint64_t dims[5] = {cuuint64_t(K), 8, 2, cuuint64_t(I / 8), cuuint64_t(E)};
  const cuuint64_t strides[4] = {interleaved ? 2 * row : row, interleaved ? row : cuuint64_t(I) * row,
                                 (interleaved ? 16 : 8) * row, 2 * cuuint64_t(I) * row};
  const cuuint32_t box[5] = {64, 8, 2, box_groups, 1};
  const cuuint32_t unit[5] = {1, 1, 1, 1, 1};
  const CUresult r = tensor_map_encoder()(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 5, const_cast<void*>(base), dims,
                                          strides, box, unit, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                          CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  FMOE_CHECK(r == CUDA_SUCCESS, "cuTensorMapEncodeTiled failed (", int(r), ") for the gated rows of w13 [", E, ", ",
             2 * I, ", ", K, "]");
  return map;
}

}  // namespace fusedmoe::cuda
