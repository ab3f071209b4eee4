// Kernels of the VAE decoders' ops on the GPU (ops/norm.h, ops/image.h, ops/dense.h, ops/attention.h) and the
// channel-padding / bias helpers of backend/cuda/conv.h. Activations are channels-last rows
// [rows, C] in F32 or BF16 (`dt`); arithmetic is f32 and every kernel rounds where the CPU op
// (backend/cpu/group_norm.h, backend/cpu/attention.h, models/vae/autoencoder_kl.cpp) stores, with the same
// operation order and no contraction into FMAs, so results match the CPU's up to the CPU's and
// CUDA's exp (CUDA's expf is within 2 ulp) and double-precision summation order.
//
// All pointers are device pointers; every launcher is asynchronous on `stream` and throws
// qdit::Error on a launch failure, qdit::ShapeError on bad arguments.
#pragma once
#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

#include "core/dtype.h"

namespace qdit::cuda::vae {

// dst[r, c] = src[r, c] for c < ncopy, 0 for ncopy <= c < ldd; r < rows. Element type dt.
void copy_channels(const void* src, int64_t lds, void* dst, int64_t ldd, int64_t rows, int64_t ncopy, DType dt,
                   cudaStream_t stream);

// dst[r, c] = dt(src[r, c] + bias[c]) for c < n (src in src_dt, bias F32 or null, f32 add).
void add_bias_rows(const void* src, DType src_dt, int64_t lds, const float* bias, void* dst, DType dt, int64_t ldd,
                   int64_t rows, int64_t n, cudaStream_t stream);

// x ← dt(x + r) over n elements.
void add_inplace(void* x, const void* r, int64_t n, DType dt, cudaStream_t stream);

// [B, M, N] (src_dt) → [B, N, M] (dt), converting each element (round to nearest even): the
// NCHW <-> NHWC moves (M = C, N = H·W and back).
void transpose(const void* src, DType src_dt, void* dst, DType dt, int64_t B, int64_t M, int64_t N,
               cudaStream_t stream);

// GroupNorm over channels-last x [B, L, C] (groups runs of C / groups channels, normalised over
// all L positions), as cpu::GroupNorm: mean and biased variance in double, scale = f32(rstd·w),
// shift = f32(b − mean·rstd·w), y = dt(x·scale + shift); with silu, y = dt(v / (1 + exp(−v)))
// where v = dt(x·scale + shift). weight, bias F32 [C]. y may alias x.
void group_norm(const void* x, void* y, DType dt, int64_t B, int64_t L, int64_t C, int64_t groups,
                const float* weight, const float* bias, float eps, bool silu, cudaStream_t stream);

// Nearest 2x upsampling: x [B, H, W, C] → y [B, 2H, 2W, C], y[b, i, j] = x[b, i/2, j/2].
void upsample_nearest_2x(const void* x, void* y, DType dt, int64_t B, int64_t H, int64_t W, int64_t C,
                         cudaStream_t stream);

// AutoencoderKL::unscale_latents: y = dt(dt(x / scale) + shift) (x in src_dt; for BF16 the caller
// passes the shift already rounded to bf16, as torch adds it).
void unscale(const void* x, DType src_dt, void* y, DType dt, int64_t n, float scale, float shift,
             cudaStream_t stream);

// vae::postprocess_to_u8: image [B, C, H, W] (dt) → U8 [B, H, W, C],
// u8 = rint(clamp(dt(x·0.5 + 0.5), 0, 1) · 255), NaN → 0.
void postprocess_u8(const void* image, DType dt, uint8_t* out, int64_t B, int64_t C, int64_t H, int64_t W,
                    cudaStream_t stream);

// Single-head attention without mask over L tokens of dim d (the VAE mid block), as
// cpu::scaled_dot_product_attention: scores q·kᵀ in f32 (cuBLASLt), s·(1/√d) in f32, p =
// exp(s − max) with the sum in double, p rounded to dt before P·V (f32 accumulation), the output
// o = dt(acc · (1/sum)). q, k, v: token t at ptr[t·ld] (columns of one fused projection); o [L,
// ldo]. Queries run in chunks whose f32 scores and dt probabilities fit `max_scratch_bytes`
// (from the caching allocator).
void attention_one_head(const void* q, const void* k, const void* v, int64_t ld, void* o, int64_t ldo, int64_t L,
                        int64_t d, DType dt, cudaStream_t stream, size_t max_scratch_bytes = size_t(1) << 30);

}  // namespace qdit::cuda::vae
