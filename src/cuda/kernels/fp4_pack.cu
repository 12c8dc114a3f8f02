// Packed fp4 weights from the checkpoint's order (element 2i of a row in the low nibble of byte i) to the sm90
// packing the CUDA kernels read (fusedmoe/formats.h), in place: per 16-byte segment, word c holds bytes c, c + 4,
// c + 8, c + 12, its bits placed for a cheap unpacking; and each tile of 16 rows segment-major (segment s of its row i
// at 256 s + 16 i). A block per tile: it reads the tile's segments in row order into shared memory, packing each, and
// after a barrier writes them to their places (the tile's bytes only move within the tile). Run once, by
// pack_fp4_weights_sm90 or on the CUDA experts' own copy. Limits: the buffer is 16-byte aligned and a whole number of
// tiles; a tile (16 row_bytes) fits in shared memory, 16 row_bytes <= 224 KiB (K <= 28672 values).
#include "cuda/cuda_util.h"
#include "cuda/kernels/fp4_util.cuh"
#include "cuda/kernels/kernels.h"
#include "cuda/kernels/launch.cuh"
#include "fusedmoe/formats.h"

namespace fusedmoe::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxTileBytes = 224 * 1024;

__global__ void __launch_bounds__(kThreads) pack_fp4_sm90_kernel(uint8_t* w, int64_t row_bytes) {
  extern __shared__ uint4 tile[];  // the tile's packed segments, in the checkpoint's row order
  pdl_wait();
  const int64_t segs = row_bytes / 16, count = kFp4TileRows * segs;
  uint8_t* base = w + int64_t(blockIdx.x) * kFp4TileRows * row_bytes;
  for (int64_t i = threadIdx.x; i < count; i += kThreads) {
    const uint4 v = reinterpret_cast<const uint4*>(base)[i];
    const uint32_t in[4] = {v.x, v.y, v.z, v.w};
    uint32_t out[4];
    fp4_pack_segment_sm90(in, out);
    tile[i] = make_uint4(out[0], out[1], out[2], out[3]);
  }
  __syncthreads();  // every segment of the tile is read before any is overwritten
  for (int64_t i = threadIdx.x; i < count; i += kThreads) {
    const int64_t row = i / segs, seg = i - row * segs;
    *reinterpret_cast<uint4*>(base + fp4_sm90_segment_offset(row, seg, row_bytes)) = tile[i];
  }
}

}  // namespace

void launch_pack_fp4_sm90(void* w, int64_t bytes, int64_t row_bytes, cudaStream_t s) {
  const int64_t tile_bytes = kFp4TileRows * row_bytes;
  FMOE_CHECK(reinterpret_cast<uintptr_t>(w) % 16 == 0 && row_bytes > 0 && row_bytes % 16 == 0 &&
                 bytes % tile_bytes == 0,
             "the sm90 fp4 packing takes 16-byte aligned data of whole tiles of ", kFp4TileRows,
             " rows whose bytes are a multiple of 16, got ", bytes, " bytes at ", w, " in rows of ", row_bytes,
             " bytes");
  FMOE_CHECK(tile_bytes <= kMaxTileBytes, "the sm90 fp4 packing takes rows of up to ", kMaxTileBytes / kFp4TileRows,
             " bytes (", 2 * kMaxTileBytes / kFp4TileRows, " values), got ", row_bytes, " bytes");
  const int64_t tiles = bytes / tile_bytes;
  if (tiles == 0) return;
  FMOE_CHECK(tiles < (int64_t(1) << 31), "the sm90 fp4 packing takes fewer than 2^31 tiles, got ", tiles);
  const int smem = static_cast<int>(tile_bytes);
  FMOE_CUDA_CHECK(cudaFuncSetAttribute(pack_fp4_sm90_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  launch_with_smem(pack_fp4_sm90_kernel, dim3(static_cast<unsigned>(tiles)), dim3(kThreads), smem, s,
                   static_cast<uint8_t*>(w), row_bytes);
}

}  // namespace fusedmoe::cuda
