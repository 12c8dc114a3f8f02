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

// A 5-D tensor map of bf16 w13 [E, 2 I, K] that reads a k tile of box_groups 16-row groups: group j of expert e is
// the gate rows of h2 columns 8 j .. 8 j + 7 and then their up rows (rows c and I + c of w13, or 2 c and 2 c + 1
// for swiglu_oai's interleaved order), as gated_block_row (wgmma_pipeline.cuh) numbers a block's rows. Coordinates
// {k, 0, 0, j, e}; groups past I / 8 read as zeros. I % 8 == 0.
CUtensorMap gated_rows_map(const void* base, int64_t E, int64_t I, int64_t K, bool interleaved, uint32_t box_groups);

}  // namespace fusedmoe::cuda
