// bf16 GEMM through cuBLASLt: the high-precision Linear path and the baseline of the int8 kernels.
//
//   y[m, n] = bf16( sum_k x[m, k] * w[n, k] + bias[n] )     f32 accumulation, bias added in f32
//
// x: bf16 [M, K] row stride ldx; w: bf16 [N, K] row stride ldw; bias: bf16 [N] or null;
// y: bf16 [M, N] row stride ldy. Device pointers. cuBLASLt's algorithm is chosen by its heuristic
// once per shape and cached (with the matmul descriptors) per device; a 32 MiB workspace per device
// is allocated on first use and kept.
#pragma once
#include <cstdint>

#include <cuda_runtime.h>

namespace qdit::cuda {

// Throws qdit::ShapeError on bad shapes, qdit::Error when cuBLASLt fails or finds no algorithm.
void bf16_gemm(const void* x, int64_t ldx, const void* w, int64_t ldw, const void* bias, void* y, int64_t ldy,
               int64_t m, int64_t n, int64_t k, cudaStream_t stream);

}  // namespace qdit::cuda
