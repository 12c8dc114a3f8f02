// One of w13 / w2 of every local expert as the CPU GEMMs read it, shared by the f32 GEMM
// (expert_mlp.cpp) and the AMX one (amx_gemm.cpp): N rows of `cols` stored values each, with
// the scheme's scales and the optional bias.
#pragma once

#include <cstdint>

#include "cpu/decode_rows.h"
#include "fusedmoe/formats.h"
#include "fusedmoe/quant.h"

namespace fusedmoe::cpu {

// Where the scheme's weight and activation scales enter a dot product.
enum class ScaleMode { none, per_row, per_block };

inline ScaleMode scale_mode(QuantScheme s) {
  switch (s) {
    case QuantScheme::fp8_per_tensor:
    case QuantScheme::fp8_per_channel: return ScaleMode::per_row;
    case QuantScheme::fp8_block: return ScaleMode::per_block;
    default: return ScaleMode::none;
  }
}

struct ExpertMatrix {
  QuantScheme scheme;
  const uint8_t* data;
  int64_t rows, cols, row_bytes;
  const void* scale;
  const float* global_scale;
  const float* bias;

  int64_t col_blocks() const { return (cols + kFp8BlockSize - 1) / kFp8BlockSize; }
  const uint8_t* row(int64_t e, int64_t n) const { return data + (e * rows + n) * row_bytes; }

  // Row n of expert e as f32: grid values for fp8 (scales applied in the GEMM), fully
  // dequantized values for bf16 and fp4.
  void decode_row(int64_t e, int64_t n, float* dst, float* group_scratch) const {
    const uint8_t* src = row(e, n);
    switch (scheme) {
      case QuantScheme::bf16: decode_bf16_row(reinterpret_cast<const bfloat16*>(src), cols, dst); break;
      case QuantScheme::fp8_per_tensor:
      case QuantScheme::fp8_per_channel:
      case QuantScheme::fp8_block: decode_fp8_row(src, cols, dst); break;
      case QuantScheme::nvfp4: {
        const uint8_t* s = group_scales(e, n);
        for (int64_t g = 0; g < cols / kNvfp4GroupSize; ++g)
          group_scratch[g] = fp8_e4m3_to_float(s[g]) * global_scale[e];
        decode_fp4_row(src, cols, group_scratch, kNvfp4GroupSize, dst);
        break;
      }
      case QuantScheme::mxfp4: {
        const uint8_t* s = group_scales(e, n);
        for (int64_t g = 0; g < cols / kMxfp4GroupSize; ++g) group_scratch[g] = ue8m0_to_float(s[g]);
        decode_fp4_row(src, cols, group_scratch, kMxfp4GroupSize, dst);
        break;
      }
    }
  }
  // fp4: values per group scale, and row n's group scales (e4m3 for nvfp4, ue8m0 for mxfp4).
  int64_t group_size() const { return scheme == QuantScheme::nvfp4 ? kNvfp4GroupSize : kMxfp4GroupSize; }
  const uint8_t* group_scales(int64_t e, int64_t n) const {
    return static_cast<const uint8_t*>(scale) + (e * rows + n) * (cols / group_size());
  }
  float row_scale(int64_t e, int64_t n) const {
    const float* s = static_cast<const float*>(scale);
    return scheme == QuantScheme::fp8_per_tensor ? s[e] : s[e * rows + n];
  }
  const float* block_scales(int64_t e, int64_t n) const {
    const int64_t row_blocks = (rows + kFp8BlockSize - 1) / kFp8BlockSize;
    return static_cast<const float*>(scale) + (e * row_blocks + n / kFp8BlockSize) * col_blocks();
  }
  float biased(float acc, int64_t e, int64_t n) const { return bias ? acc + bias[e * rows + n] : acc; }
};

}  // namespace fusedmoe::cpu
