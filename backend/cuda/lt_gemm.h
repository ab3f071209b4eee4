// GEMMs through cuBLASLt: the high-precision Linear path, the baseline of the int8 kernels, the
// f32 / int32 partial sums of a row-split Linear (nn/row_split_cuda.h), and the F32 / BF16 GEMMs of
// the VAE decoders (ops::Dense, spatial attention).
//
//   y[m, n] = sum_k x[m, k] * w[n, k] (+ bias[n])      (w [k, n] instead where a call says so)
//
// x [M, K] row stride ldx; w [N, K] row stride ldw; y [M, N] row stride ldy; device pointers.
// One cache for every call: per device a cuBLASLt handle, a 32 MiB workspace per stream (allocated
// on first use and kept: calls on two streams may run at once) and the plans (matmul descriptors
// and the algorithm cuBLASLt's heuristic chose, once per shape and types). Each device has its own
// lock, held from setting a cached descriptor's bias pointer to the launch that reads it; no lock
// spans devices, so a launch that blocks behind a full queue on one GPU (e.g. behind an NCCL
// collective waiting for another GPU's rank thread) never stalls another GPU's thread.
#pragma once
#include <cstdint>

#include <cuda_runtime.h>

#include "core/dtype.h"

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

// y = x · W (+ bias) with W = w[n, k]ᵀ (w_nk) or w[k, n], f32 accumulation (pure f32 for F32
// inputs, no TF32), one rounding to `out`. x and w in `in` (F32 or BF16); y and bias (or null) in
// `out` (F32, or `in`). Row strides in elements; pointers need only their element alignment (inside
// a fused projection or a query chunk). Throws qdit::ShapeError on bad arguments, qdit::Error when
// cuBLASLt fails or has no algorithm.
void matmul(const void* x, int64_t ldx, const void* w, int64_t ldw, bool w_nk, const void* bias, void* y,
            int64_t ldy, int64_t m, int64_t n, int64_t k, DType in, DType out, cudaStream_t stream);

}  // namespace qdit::cuda
