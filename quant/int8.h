// The int8 W8A8 arithmetic contract (docs/quantization.md):
//   weights:     symmetric, one f32 scale per output channel, s = absmax(row) / 127,
//                q = clamp(round_half_even(w / s), -127, 127); an all-zero row gets s = 1, q = 0.
//   activations: the same rule per token (row), computed on the fly.
//   GEMM:        int32 accumulation of q_x · q_w, then y = acc · s_x[m] · s_w[n] + bias[n],
//                computed in f32 and written as f32 or bf16.
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace qdit {

// The per-row rule for one row of k values whose absmax is given (the row's
// own, or — when the row is split across devices — the whole row's):
// s = absmax / 127 (1 when absmax is 0), q = clamp(round_half_even(x / s), ±127).
void quantize_row_with_absmax(const float* row, int64_t k, float absmax, int8_t* q, float* scale);

// Scalar reference of the per-row (per-token) rule: x is m rows of k values
// (row stride ldx elements) of dtype F32 or BF16.
void quantize_rows_int8_ref(const void* x, DType xt, int64_t m, int64_t k, int64_t ldx, int8_t* q,
                            float* scale);

}  // namespace qdit
