// The FP8 attention's conversions (attention.h, attention_fp8): the per-tensor scaling of a fused
// bf16 q|k|v into E4M3, and of an E4M3 output back to bf16.
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include "backend/cuda/attention.h"
#include "backend/cuda/block_reduce.cuh"
#include "backend/cuda/device_tensor.h"
#include "backend/cuda/kernel_util.cuh"
#include "core/error.h"

namespace qdit::cuda {

namespace {

constexpr int kThreads = 256;
constexpr float kE4m3Max = 448.f;  // the largest finite E4M3 value

// Row r of a padded batch (items s rows apart) holds a token when len is null or r % s < len[r / s].
__device__ __forceinline__ bool token_row(int64_t r, int64_t s, const int32_t* len) {
    return !len || r % s < int64_t(len[r / s]);
}

// Which of q (0), k (1), v (2) column c belongs to (c1, c2: where k and v start).
__device__ __forceinline__ int part_of(int64_t c, int64_t c1, int64_t c2) { return c < c1 ? 0 : c < c2 ? 1 : 2; }

// amax[p] = max |x| over the token rows of part p, as the bits of a non-negative float (which order
// as unsigned integers); NaN is skipped. 8 columns a thread-step (c1, c2, width multiples of 8).
// Columns [c0, width) only (c0: 0 or c2).
__global__ void amax_kernel(const __nv_bfloat16* __restrict__ x, int64_t ld, int64_t rows, int64_t s,
                            const int32_t* __restrict__ len, int64_t c0, int64_t c1, int64_t c2, int64_t width,
                            unsigned* __restrict__ amax) {
    float m[3] = {0.f, 0.f, 0.f};
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        if (!token_row(r, s, len)) continue;
        for (int64_t c = c0 + int64_t(threadIdx.x) * 8; c < width; c += int64_t(blockDim.x) * 8) {
            const uint4 raw = *reinterpret_cast<const uint4*>(x + r * ld + c);
            const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
            float a = 0.f;
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const float2 f = __bfloat1622float2(h[i]);
                a = fmaxf(a, fmaxf(fabsf(f.x), fabsf(f.y)));  // fmaxf drops a NaN operand
            }
            const int p = part_of(c, c1, c2);
            m[p] = fmaxf(m[p], a);
        }
    }
#pragma unroll
    for (int p = 0; p < 3; ++p) {
        const float b = block_max<kThreads / 32>(m[p]);
        if (threadIdx.x == 0 && b > 0.f) atomicMax(amax + p, __float_as_uint(b));
    }
}

__device__ __forceinline__ float scale_of(unsigned amax_bits) {
    const float a = __uint_as_float(amax_bits);
    return a > 0.f && a < INFINITY ? kE4m3Max / a : 1.f;
}

// y = E4M3(x · 448 / amax[part]) (saturating) on the columns [c0, width) of token rows (c0 = c2: q
// and k are there already, with their scales), 0 on every column of the other rows; thread 0 of
// block 0 writes the scalars the attention reads (FP8Scalars).
__global__ void quantize_kernel(const __nv_bfloat16* __restrict__ x, int64_t ld, uint8_t* __restrict__ y,
                                int64_t rows, int64_t s, const int32_t* __restrict__ len, int64_t c0, int64_t c1,
                                int64_t c2, int64_t width, const unsigned* __restrict__ amax,
                                float* __restrict__ scalars) {
    const float sc[3] = {scale_of(amax[0]), scale_of(amax[1]), scale_of(amax[2])};
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        for (int p = c0 == 0 ? 0 : 2; p < 3; ++p) scalars[kDescaleQ + p] = 1.f / sc[p];
        scalars[kDescaleS] = 1.f / kE4m3Max;  // probabilities in [0, 1] are stored · 448
        scalars[kScaleS] = kE4m3Max;
        scalars[kScaleO] = 1.f;  // a bf16 output; an E4M3 one is scaled by its bound (attention.cpp)
        scalars[kScaleOFp8] = sc[2];  // |o| <= max |v|: o · 448 / amax_v fits E4M3
    }
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const bool keep = token_row(r, s, len);
        for (int64_t c = (keep ? c0 : 0) + int64_t(threadIdx.x) * 8; c < width; c += int64_t(blockDim.x) * 8) {
            uint2 out = make_uint2(0u, 0u);
            if (keep) {
                const uint4 raw = *reinterpret_cast<const uint4*>(x + r * ld + c);
                const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
                const float k = sc[part_of(c, c1, c2)];
                __nv_fp8x2_storage_t p[4];
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    float2 f = __bfloat1622float2(h[i]);
                    f.x *= k;
                    f.y *= k;
                    p[i] = __nv_cvt_float2_to_fp8x2(f, __NV_SATFINITE, __NV_E4M3);
                }
                out.x = unsigned(p[0]) | unsigned(p[1]) << 16;
                out.y = unsigned(p[2]) | unsigned(p[3]) << 16;
            }
            *reinterpret_cast<uint2*>(y + r * ld + c) = out;
        }
    }
}

// o = bf16(y · amax_v / 448) for an E4M3 output y [rows, width] (row stride ldy bytes, ldo elements).
__global__ void dequantize_kernel(const uint8_t* __restrict__ y, int64_t ldy, __nv_bfloat16* __restrict__ o,
                                  int64_t ldo, int64_t rows, int64_t width, const float* __restrict__ scalars) {
    const float d = 1.f / scalars[kScaleOFp8];
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x)
        for (int64_t c = int64_t(threadIdx.x) * 2; c < width; c += int64_t(blockDim.x) * 2) {
            const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(*reinterpret_cast<const __nv_fp8x2_storage_t*>(y + r * ldy + c),
                                                             __NV_E4M3);
            const float2 f = __half22float2(__half2(h));
            *reinterpret_cast<__nv_bfloat162*>(o + r * ldo + c) = __floats2bfloat162_rn(f.x * d, f.y * d);
        }
}

// scalars[kDescaleQ], [kDescaleK] = a bound of |q|, |k| after RMSNorm and RoPE over 448: an RMS-
// normalized head of hd values has |x_i| <= sqrt(hd), times max |w| for its weights w; RoPE keeps a
// pair's length. 2 % more for the bf16 roundings (a value past it saturates).
__global__ void qk_descales_kernel(Fp8QkWeights w, int64_t hd) {
    float m[2] = {0.f, 0.f};
    for (int i = 0; i < w.count; ++i)
        for (int64_t c = threadIdx.x; c < hd; c += blockDim.x)
            m[w.is_k[i]] = fmaxf(m[w.is_k[i]], fabsf(__bfloat162float(static_cast<const __nv_bfloat16*>(w.w[i])[c])));
#pragma unroll
    for (int p = 0; p < 2; ++p) {
        const float b = block_max<kThreads / 32>(m[p]);
        if (threadIdx.x == 0) {
            const float bound = 1.02f * sqrtf(float(hd)) * b;
            w.scalars[kDescaleQ + p] = bound > 0.f && bound < INFINITY ? bound / kE4m3Max : 1.f;
        }
    }
}

int grid_for(int64_t rows) { return int(rows < 4096 ? rows : 4096); }

}  // namespace

void fp8_quantize_qkv(const void* qkv, int64_t ld, void* y, int64_t rows, int64_t s, const int32_t* len, int64_t c1,
                      int64_t c2, int64_t width, unsigned* amax, float* scalars, cudaStream_t stream, bool v_only) {
    if (rows <= 0) return;
    if (ld % 8 || c1 % 8 || c2 % 8 || width % 8 || width > ld || !(0 < c1 && c1 < c2 && c2 < width))
        raise<ShapeError>("fp8 attention: q|k|v columns [0, {}, {}, {}) in rows of {} (need multiples of 8)", c1, c2,
                          width, ld);
    check(cudaMemsetAsync(amax, 0, 3 * sizeof(unsigned), stream), "fp8 attention: amax");
    const auto* x = static_cast<const __nv_bfloat16*>(qkv);
    const int64_t c0 = v_only ? c2 : 0;
    amax_kernel<<<grid_for(rows), kThreads, 0, stream>>>(x, ld, rows, s, len, c0, c1, c2, width, amax);
    kern::check_launch("fp8 attention amax");
    quantize_kernel<<<grid_for(rows), kThreads, 0, stream>>>(x, ld, static_cast<uint8_t*>(y), rows, s, len, c0, c1,
                                                             c2, width, amax, scalars);
    kern::check_launch("fp8 attention quantize");
}

void fp8_qk_descales(const Fp8QkWeights& w, int64_t hd, cudaStream_t stream) {
    if (w.count < 1 || w.count > Fp8QkWeights::kMax || hd < 1)
        raise<ShapeError>("fp8 attention: {} q/k norm weights of {} values (need 1 to {})", w.count, hd,
                          int(Fp8QkWeights::kMax));
    qk_descales_kernel<<<1, kThreads, 0, stream>>>(w, hd);
    kern::check_launch("fp8 attention q/k scales");
}

void fp8_dequantize_output(const void* y, int64_t ldy, void* o, int64_t ldo, int64_t rows, int64_t width,
                           const float* scalars, cudaStream_t stream) {
    if (rows <= 0) return;
    dequantize_kernel<<<grid_for(rows), kThreads, 0, stream>>>(static_cast<const uint8_t*>(y), ldy,
                                                               static_cast<__nv_bfloat16*>(o), ldo, rows, width,
                                                               scalars);
    kern::check_launch("fp8 attention output");
}

}  // namespace qdit::cuda
