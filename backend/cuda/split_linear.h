// Pieces of a Linear layer whose input columns (K) are split over ranks (tensor parallelism's row
// split, parallel/tensor_parallel.h): each rank multiplies its columns into a partial sum that the
// ranks add up (all-reduce) before the one epilogue, so the result is that of the unsplit layer.
//
//   int8: per-token absmax of the rank's columns (row_absmax_bf16) → all-reduce MAX → quantize with
//         the whole token's absmax (quantize_rows_with_absmax_bf16; the rule of quant/int8.h, so the
//         int8 values and scales are the one-device ones) → int32 partial sums (int8_gemm_i32, exact)
//         → all-reduce SUM → dequantize_i32_bf16 (the int8 GEMM's epilogue, bit for bit).
//   bf16: f32 partial sums (bf16_gemm_f32) → all-reduce SUM → bias_f32_to_bf16 (one rounding).
//
// Device pointers, row strides in elements; asynchronous on `stream`; errors throw qdit::Error
// (qdit::ShapeError for bad shapes).
#pragma once
#include <cstdint>

#include <cuda_runtime.h>

namespace qdit::cuda {

// absmax[i] = max_j |x[i, j]| over x bf16 [m, k] (row stride ldx).
void row_absmax_bf16(const void* x, int64_t ldx, int64_t m, int64_t k, float* absmax, cudaStream_t stream);

// q[i, j] = clamp(rint(x[i, j] / s[i]), ±127) with s[i] = absmax[i] / 127 (1 when absmax[i] is 0),
// written with row stride ldq >= k, columns [k, ldq) set to 0; scale[i] = s[i].
void quantize_rows_with_absmax_bf16(const void* x, int64_t ldx, int64_t m, int64_t k, const float* absmax, int8_t* q,
                                    int64_t ldq, float* scale, cudaStream_t stream);

// acc[m, n] = a[m, k] · w[n, k]ᵀ in int32 (exact), int8 inputs (row strides lda, ldw), output row
// stride ldc. cuBLASLt's int8 kernels (K, lda, ldw multiples of 4, ldc of 4, 16-byte aligned
// pointers); when cuBLASLt offers no algorithm for a shape, a simple kernel of ours. The result is
// exact either way.
void int8_gemm_i32(const int8_t* a, int64_t lda, const int8_t* w, int64_t ldw, int32_t* acc, int64_t ldc, int64_t m,
                   int64_t n, int64_t k, cudaStream_t stream);
// The simple kernel alone (tests, and the fallback above). Any shape.
void int8_gemm_i32_simple(const int8_t* a, int64_t lda, const int8_t* w, int64_t ldw, int32_t* acc, int64_t ldc,
                          int64_t m, int64_t n, int64_t k, cudaStream_t stream);

// y[i, j] = bf16_rn(fmaf(float(acc[i, j]) · sx[i], sw[j], bias[j])) (bias F32 or null: 0), the
// int8 GEMM epilogue's arithmetic (backend/cuda/int8_gemm.h).
void dequantize_i32_bf16(const int32_t* acc, int64_t ldc, int64_t m, int64_t n, const float* sx, const float* sw,
                         const float* bias, void* y, int64_t ldy, cudaStream_t stream);

// acc[m, n] = x[m, k] · w[n, k]ᵀ in f32 (bf16 inputs, cuBLASLt, f32 accumulation, no bias).
void bf16_gemm_f32(const void* x, int64_t ldx, const void* w, int64_t ldw, float* acc, int64_t ldc, int64_t m,
                   int64_t n, int64_t k, cudaStream_t stream);

// y[i, j] = bf16_rn(acc[i, j] + bias[j]) (bias bf16 or null), as cuBLASLt's bias epilogue adds the
// bias in f32 before its one rounding.
void bias_f32_to_bf16(const float* acc, int64_t ldc, int64_t m, int64_t n, const void* bias, void* y, int64_t ldy,
                      cudaStream_t stream);

}  // namespace qdit::cuda
