// The gated CUTLASS GEMM1's view of w13 (gate_up_mainloop_sm90.cuh), checked on the host with no GPU: the TMA
// descriptor CuTe builds for it (rank, dims, byte strides, box, swizzle; cuTensorMapEncodeTiled is replaced here
// by a recorder) and the coordinates the producer's copy issues for every 256-row N tile and k tile. Together they
// give the w13 element each box element reads, which must be gate row 128j + r (half 0) or up row I + 128j + r
// (half 1) at column 64 kt + c for tile j, k tile kt — w13 = [gate; up] as the checkpoint has it, no blocked copy.
// Runs in CI: a CuTe change in how nested layouts become TMA boxes fails it there, not on the GPU.
#define CUTLASS_ENABLE_DIRECT_CUDA_DRIVER_CALL 1

#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "cuda/cutlass/grouped_gemm_sm90.cuh"

namespace {

struct Encoded {
  int calls = 0;
  uint32_t rank = 0;
  uint64_t dims[5] = {};
  uint64_t strides[4] = {};  // bytes, dims 1..rank-1
  uint32_t box[5] = {};
  CUtensorMapSwizzle swizzle{};
};
Encoded g_encoded;

}  // namespace

// Records what CuTe asks of the driver (CUTLASS_ENABLE_DIRECT_CUDA_DRIVER_CALL routes the call here).
extern "C" CUresult cuTensorMapEncodeTiled(CUtensorMap*, CUtensorMapDataType, cuuint32_t rank, void*,
                                           const cuuint64_t* dims, const cuuint64_t* strides, const cuuint32_t* box,
                                           const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle swizzle,
                                           CUtensorMapL2promotion, CUtensorMapFloatOOBfill) {
  Encoded& e = g_encoded;
  ++e.calls;
  e.rank = rank;
  for (uint32_t i = 0; i < rank && i < 5; ++i) {
    e.dims[i] = dims[i];
    e.box[i] = box[i];
    if (i + 1 < rank) e.strides[i] = strides[i];
  }
  e.swizzle = swizzle;
  return CUDA_SUCCESS;
}

namespace fusedmoe::cuda::sm90 {
namespace {

using Gated = GroupedGemm<cutlass::bfloat16_t, cute::Shape<cute::_128, cute::_256, cute::_64>,
                          cute::Shape<cute::_1, cute::_1, cute::_1>,
                          cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative,
                          cutlass::epilogue::PtrArrayNoSmemWarpSpecialized, false, Epi::gated>;
using Mainloop = Gated::Mainloop;

void check_view(int32_t I, int32_t K) {
  SCOPED_TRACE("I " + std::to_string(I) + " K " + std::to_string(K));
  const int32_t N = 2 * I;
  using Element = Mainloop::InternalElementB;
  g_encoded = Encoded{};
  const auto* base = reinterpret_cast<const Element*>(uintptr_t(1) << 20);  // any 16-byte aligned address
  const auto tma = Mainloop::make_tma_b(base, N, K);

  // The descriptor: k values, 128 rows, the 2 halves, the I / 128 tiles.
  ASSERT_EQ(g_encoded.calls, 1);
  ASSERT_EQ(g_encoded.rank, 4u);
  const uint64_t row_bytes = uint64_t(K) * 2;
  const uint64_t dims[4] = {uint64_t(K), 128, 2, uint64_t(I / 128)};
  const uint64_t strides[3] = {row_bytes, uint64_t(I) * row_bytes, 128 * row_bytes};
  const uint32_t box[4] = {64, 128, 2, 1};
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(g_encoded.dims[i], dims[i]) << "dim " << i;
    EXPECT_EQ(g_encoded.box[i], box[i]) << "dim " << i;
    if (i < 3) EXPECT_EQ(g_encoded.strides[i], strides[i]) << "stride " << i;
  }
  EXPECT_EQ(g_encoded.swizzle, CU_TENSOR_MAP_SWIZZLE_128B);

  // The producer's coordinates (Mainloop::load_init, then load's partition), per tile and k tile.
  using namespace cute;
  Tensor mB = tma.get_tma_tensor(shape(Mainloop::b_tensor(base, N, K)));
  Tensor gB = local_tile(mB, Mainloop::TileShape{}, make_coord(_, _, _), Step<Underscore, _1, _1>{});
  ASSERT_EQ(int(size<2>(gB)), N / 256);
  ASSERT_EQ(int(size<3>(gB)), K / 64);
  auto slice = tma.get_slice(0);
  for (int j = 0; j < N / 256; ++j)
    for (int kt = 0; kt < K / 64; ++kt) {
      // As the kernel takes a tile's coordinate (sm90_gemm_array_tma_warpspecialized_cooperative.hpp).
      Tensor tBgB = slice.partition_S(gB(_, _, idx2crd(j, shape<2>(gB)), _, 0));
      ASSERT_EQ(int(size<1>(tBgB) * size<2>(tBgB)), 1) << "one box a k tile";
      const auto c = tBgB(_, _, _, kt).data().coord_;
      const int64_t c0 = get<0>(c), c1 = get<1>(c), c2 = get<2>(c), c3 = get<3>(c);
      // Element (k, r, h) of the box reads w13 element c0 + k + (c1 + r) K + (c2 + h) I K + c3 128 K.
      for (int h = 0; h < 2; ++h)
        for (int r = 0; r < 128; r += 127)
          for (int k = 0; k < 64; k += 63) {
            const int64_t read = (c0 + k) + (c1 + r) * int64_t(K) + (c2 + h) * int64_t(I) * K + c3 * 128 * int64_t(K);
            const int64_t want = (int64_t(h) * I + 128 * j + r) * K + 64 * kt + k;
            ASSERT_EQ(read, want) << "tile " << j << " k tile " << kt << " half " << h << " row " << r << " k " << k;
          }
    }
}

TEST(GateUpTma, ReadsGateAndUpBlocksOfW13InPlace) {
  check_view(256, 128);      // two tiles, two k tiles
  check_view(768, 2048);     // qwen3-30b-a3b
  check_view(14336, 4096);   // mixtral-8x7b
  check_view(128, 64);       // one tile, one k tile
}

}  // namespace
}  // namespace fusedmoe::cuda::sm90
