// Kernels that turn weights as a checkpoint stores them (already copied to the device as they are)
// into what the GPU computes with: a window of a [N, K] tensor converted to bf16 / f32, or
// quantized to int8 by quant/int8.h's rule. Results equal the host's (core/dtype.h conversions
// through f32, backend/cpu/quantize.h) bit for bit.
#pragma once
#include <cstdint>

#include <cuda_runtime.h>

#include "core/dtype.h"

namespace qdit::cuda {

// Whether the kernels below read dtype `t` (F32, F16, BF16).
bool weight_load_reads(DType t);

// The window of src [N, K] (dtype `st`) at rows [r0, r0 + rows), columns [c0, c0 + cols):
// dst[r * ldd + c] = src[r0 + r, c0 + c] converted to `dt` (F32 or BF16; through f32, rounding to
// nearest even). The window must lie inside src. Returns the launch status.
cudaError_t convert_window(const void* src, DType st, int64_t K, int64_t r0, int64_t c0, int64_t rows,
                           int64_t cols, void* dst, DType dt, int64_t ldd, cudaStream_t stream);

// quant/int8.h's weight rule on whole rows of src [N, K], kept for the window: for r < rows,
// scale[r] = s(r0 + r) = absmax(src[r0 + r, :]) / 127 (1 for an all-zero row) and
// q[r * ldq + c] = clamp(round_half_even(src[r0 + r, c0 + c] / s), ±127) for c < cols.
cudaError_t quantize_window_int8(const void* src, DType st, int64_t K, int64_t r0, int64_t c0, int64_t rows,
                                 int64_t cols, int8_t* q, int64_t ldq, float* scale, cudaStream_t stream);

// p[0, n) = v.
cudaError_t fill_f32(float* p, int64_t n, float v, cudaStream_t stream);

}  // namespace qdit::cuda
