// CUDA per-token int8 quantization (the rule of quant/int8.h).
#pragma once
#include <cstdint>

#include <cuda_runtime.h>

namespace qdit::cuda {

// Number of CUDA devices visible (0 when there is no driver or device).
int device_count();

// Throws qdit::Error naming the device's compute capability and the build option to change when
// this build carries no code that runs on the current device (its architecture not among
// CMAKE_CUDA_ARCHITECTURES and no PTX for an earlier one): said once, before any weight is loaded.
void require_code_for_device(int device);

// q[m, k] = clamp(round_half_even(x / s[m]), -127, 127), s[m] = absmax(x[m, :]) / 127
// (an all-zero row gets s = 1). x is bf16 with row stride ldx (elements).
// One block per row; when k % 8 == 0, ldx % 8 == 0, x is 16-byte and q 8-byte aligned (and
// k <= 65536), each thread keeps its part of the row in registers (16-byte loads, one read of x);
// otherwise a scalar kernel runs. Returns the launch status.
cudaError_t quantize_rows_int8_bf16(const void* x, int64_t m, int64_t k, int64_t ldx, int8_t* q,
                                    float* scale, cudaStream_t stream);

namespace detail {
// The same with the variant forced (benchmarks): nv = 0 runs the scalar kernel, nv = 2, 4 or 8 the
// vectorized one with nv 16-byte vectors per thread (its preconditions are the caller's).
cudaError_t quantize_rows_int8_bf16_nv(const void* x, int64_t m, int64_t k, int64_t ldx, int8_t* q, float* scale,
                                       cudaStream_t stream, int nv);
}  // namespace detail

}  // namespace qdit::cuda
