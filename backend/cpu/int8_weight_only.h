// Weight-only int8 Linear on the CPU: activations in F32 or BF16 times int8 weights with per-output
// scales (quant/int8.h's weight rule), no activation quantization.
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace qdit::cpu {

// y[i, j] = (Σ_k x[i, k] · q[j, k]) · s[j] + bias[j] for x [m, k] of dtype dt (F32 or BF16, rows
// contiguous), q I8 [n, k], s F32 [n], bias F32 [n] or null; the sum and the scaling in f32, y
// [m, n] of dtype dt rounded once.
void int8_weight_only_gemm(const void* x, DType dt, int64_t m, int64_t k, const int8_t* q, const float* s,
                           const float* bias, void* y, int64_t n);

}  // namespace qdit::cpu
