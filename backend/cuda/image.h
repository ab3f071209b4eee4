// Layout moves and resampling of channels-last image activations ([rows, C] in F32 or BF16, `dt`)
// for the image ops (ops/image.h) and the channel padding / bias helpers of backend/cuda/conv.h.
// Exact: every element converted or stored once (round to nearest even).
//
// All pointers are device pointers; every launcher is asynchronous on `stream` and throws
// qdit::Error on a launch failure, qdit::ShapeError on bad arguments.
#pragma once
#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

#include "core/dtype.h"

namespace qdit::cuda {

// dst[r, c] = src[r, c] for c < ncopy, 0 for ncopy <= c < ldd; r < rows. Element type dt.
void copy_channels(const void* src, int64_t lds, void* dst, int64_t ldd, int64_t rows, int64_t ncopy, DType dt,
                   cudaStream_t stream);

// dst[r, c] = dt(src[r, c] + bias[c]) for c < n (src in src_dt, bias F32 or null, f32 add).
void add_bias_rows(const void* src, DType src_dt, int64_t lds, const float* bias, void* dst, DType dt, int64_t ldd,
                   int64_t rows, int64_t n, cudaStream_t stream);

// [B, M, N] (src_dt) → [B, N, M] (dt), converting each element (round to nearest even): the
// NCHW <-> NHWC moves (M = C, N = H·W and back).
void transpose(const void* src, DType src_dt, void* dst, DType dt, int64_t B, int64_t M, int64_t N,
               cudaStream_t stream);

// Nearest 2x upsampling: x [B, H, W, C] → y [B, 2H, 2W, C], y[b, i, j] = x[b, i/2, j/2].
void upsample_nearest_2x(const void* x, void* y, DType dt, int64_t B, int64_t H, int64_t W, int64_t C,
                         cudaStream_t stream);

// ops::image_to_u8: image [B, C, H, W] (dt) → U8 [B, H, W, C],
// u8 = rint(clamp(dt(x·0.5 + 0.5), 0, 1) · 255), NaN → 0.
void image_to_u8(const void* image, DType dt, uint8_t* out, int64_t B, int64_t C, int64_t H, int64_t W,
                 cudaStream_t stream);

}  // namespace qdit::cuda
