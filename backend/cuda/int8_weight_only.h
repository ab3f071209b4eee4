// Weight-only int8 GEMM for few rows (the modulation Linears read one conditioning vector per item):
// bf16 activations times int8 weights with per-output scales, no activation quantization. The GPU
// counterpart of backend/cpu/int8_weight_only.h: y[i, j] = bf16((Σ_k x[i, k] · q[j, k]) · s[j] +
// bias[j]), the sum in f32 (in another order than the CPU's).
//
// x bf16 [m, k] (row stride ldx), q int8 [n, k] (row stride ldq, a multiple of 16, 16-byte aligned
// rows), s F32 [n], bias F32 [n] or null, y bf16 [m, n] (row stride ldy). Memory-bound: every weight
// byte is read once per 8 rows of x. Asynchronous on `stream`; throws qdit::Error on a bad argument.
#pragma once
#include <cstdint>

#include <cuda_runtime.h>

namespace qdit::cuda {

void int8_weight_only_gemm(const void* x, int64_t ldx, const int8_t* q, int64_t ldq, const float* s, const float* bias,
                           void* y, int64_t ldy, int64_t m, int64_t n, int64_t k, cudaStream_t stream);

}  // namespace qdit::cuda
