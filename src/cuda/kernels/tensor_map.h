// Host-side TMA tensor maps shared by the wgmma kernels (wgmma_grouped_gemm.cu, fp4_wgmma_gemm.cu): the
// driver's cuTensorMapEncodeTiled, and the map of a row-major matrix read in 128-byte k tiles.
#pragma once

#include <cuda.h>
#include <cudaTypedefs.h>

#include <cstdint>

namespace fusedmoe::cuda {

// cuTensorMapEncodeTiled, from the driver (looked up once).
PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder();

// A 2-D tensor map of rows [rows, K] (row-major; bf16, or e4m3 as bytes) with boxes of box_rows rows' 128 bytes
// (one k tile: 64 bf16 or 128 e4m3 values), 128-byte swizzle; a box's rows past `rows` read as zeros.
CUtensorMap rows_map(const void* base, int64_t rows, int64_t K, bool fp8, uint32_t box_rows);

}  // namespace fusedmoe::cuda
