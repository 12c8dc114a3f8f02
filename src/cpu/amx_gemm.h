// The CPU expert MLP's grouped GEMMs on Intel AMX (Advanced Matrix Extensions) bf16 tiles. Every
// scheme's operands become exact bf16 values: bf16 weights and inputs, e4m3 weights and
// activations, fp4 values times their group scales (nvfp4's global scale applied to the sums);
// the fp8 scales stay in f32, applied as the f32 GEMM applies them.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cpu/expert_matrix.h"

namespace fusedmoe::cpu::amx {

// Whether this build has AMX-BF16 (-march=native on a CPU with it) and the OS granted this
// process the tile state. Checked once.
bool supported();

// supported(), unless FUSEDMOE_CPU_AMX=0 (read at each call) keeps the f32 GEMMs.
bool enabled();

// Runs `iters` rounds of four independent TDPBF16PS on this thread (the benchmark's peak rate) and returns the
// floating-point operations done. Requires enabled().
double peak_loop(int64_t iters);

// Bytes of the packed activations for up to `rows` rows of `cols` values over `experts` experts.
size_t packed_bytes(int64_t rows, int64_t experts, int64_t cols);

// out[dst(r)][n] = sum_k A[r][k] * W_e[n][k] (with the scheme's scales) + bias_e[n] for the rows
// r of each expert e in [offsets[e], offsets[e+1]); A holds f32 values that are exactly bf16.
// `packed` is scratch of packed_bytes(). Requires enabled().
void grouped_gemm(const ExpertMatrix& W, const float* A, const float* A_scales, int64_t a_scale_cols,
                  const int64_t* offsets, int64_t num_experts, float* out, const int64_t* dst_row, void* packed);

}  // namespace fusedmoe::cpu::amx
