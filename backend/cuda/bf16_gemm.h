// GEMMs through cuBLASLt: the high-precision Linear path, the baseline of the int8 kernels, and the
// f32 / int32 partial sums of a row-split Linear (nn/row_split_cuda.h).
//
//   y[m, n] = sum_k x[m, k] * w[n, k] (+ bias[n])
//
// x [M, K] row stride ldx; w [N, K] row stride ldw; y [M, N] row stride ldy; device pointers.
// cuBLASLt's algorithm is chosen by its heuristic once per shape and types and cached (with the
// matmul descriptors) per device; a 32 MiB workspace per device is allocated on first use and kept.
#pragma once
#include <cstdint>

#include <cuda_runtime.h>

namespace qdit::cuda {

// bf16 x, w, bias (or null) and y; f32 accumulation, bias added in f32, one rounding to bf16.
// Throws qdit::ShapeError on bad shapes, qdit::Error when cuBLASLt fails or finds no algorithm.
void bf16_gemm(const void* x, int64_t ldx, const void* w, int64_t ldw, const void* bias, void* y, int64_t ldy,
               int64_t m, int64_t n, int64_t k, cudaStream_t stream);

// Operand and output types of lt_gemm.
enum class LtGemmTypes {
    Bf16,       // bf16 · bf16 → bf16 (f32 accumulation), optional bf16 bias: bf16_gemm
    Bf16ToF32,  // bf16 · bf16 → f32, no bias
    Int8ToI32,  // int8 · int8 → int32, exact, no bias (K, ldx, ldw, ldy multiples of 4, 16-byte aligned)
};

// The cached-plan call behind bf16_gemm, for every LtGemmTypes. Returns false when cuBLASLt has no
// algorithm for the shape (nothing is launched); throws qdit::Error when a cuBLASLt call fails.
// Shapes are not checked here.
bool lt_gemm(LtGemmTypes types, const void* x, int64_t ldx, const void* w, int64_t ldw, const void* bias, void* y,
             int64_t ldy, int64_t m, int64_t n, int64_t k, cudaStream_t stream);

}  // namespace qdit::cuda
