#include "backend/cuda/weight_load.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "backend/cuda/block_reduce.cuh"

namespace qdit::cuda {

namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

// core/dtype.h's f32_to_bf16, bit for bit (NaN kept quiet the same way).
__device__ __forceinline__ uint16_t f32_to_bf16_bits(float f) {
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return uint16_t(u >> 16);
}

// One block per row of the window (grid.y tiles long rows for the conversion).
template <typename S, typename D>
__global__ void __launch_bounds__(kThreads)
convert_kernel(const S* __restrict__ src, int64_t K, int64_t r0, int64_t c0, int64_t cols, D* __restrict__ dst,
               int64_t ldd) {
    const S* row = src + (r0 + int64_t(blockIdx.x)) * K + c0;
    D* out = dst + int64_t(blockIdx.x) * ldd;
    for (int64_t c = int64_t(blockIdx.y) * kThreads + threadIdx.x; c < cols; c += int64_t(gridDim.y) * kThreads) {
        const float f = to_f32(row[c]);
        if constexpr (sizeof(D) == 4)
            out[c] = f;
        else
            out[c] = f32_to_bf16_bits(f);
    }
}

// quant/int8.cpp's quantize_row_with_absmax: s = absmax / 127 and x / s as IEEE divisions, rint
// (half to even), clamp to ±127.
template <typename S>
__global__ void __launch_bounds__(kThreads)
quantize_kernel(const S* __restrict__ src, int64_t K, int64_t r0, int64_t c0, int64_t cols, int8_t* __restrict__ q,
                int64_t ldq, float* __restrict__ scale) {
    const S* row = src + (r0 + int64_t(blockIdx.x)) * K;
    float amax = 0.f;
    for (int64_t i = threadIdx.x; i < K; i += kThreads) amax = fmaxf(amax, fabsf(to_f32(row[i])));
    amax = block_max<kThreads / 32>(amax);
    const float s = amax > 0.f ? __fdiv_rn(amax, 127.f) : 1.f;
    if (threadIdx.x == 0) scale[blockIdx.x] = s;
    int8_t* out = q + int64_t(blockIdx.x) * ldq;
    for (int64_t c = threadIdx.x; c < cols; c += kThreads) {
        const float r = rintf(__fdiv_rn(to_f32(row[c0 + c]), s));
        out[c] = static_cast<int8_t>(fminf(127.f, fmaxf(-127.f, r)));
    }
}

__global__ void fill_kernel(float* p, int64_t n, float v) {
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
        p[i] = v;
}

template <typename S>
cudaError_t convert_from(const void* src, int64_t K, int64_t r0, int64_t c0, int64_t rows, int64_t cols, void* dst,
                         DType dt, int64_t ldd, cudaStream_t stream) {
    const dim3 grid(unsigned(rows), unsigned(std::min<int64_t>((cols + kThreads - 1) / kThreads, 64)));
    const S* s = static_cast<const S*>(src);
    if (dt == DType::F32)
        convert_kernel<S, float><<<grid, kThreads, 0, stream>>>(s, K, r0, c0, cols, static_cast<float*>(dst), ldd);
    else
        convert_kernel<S, uint16_t><<<grid, kThreads, 0, stream>>>(s, K, r0, c0, cols, static_cast<uint16_t*>(dst),
                                                                   ldd);
    return cudaGetLastError();
}

template <typename S>
cudaError_t quantize_from(const void* src, int64_t K, int64_t r0, int64_t c0, int64_t rows, int64_t cols, int8_t* q,
                          int64_t ldq, float* scale, cudaStream_t stream) {
    quantize_kernel<S><<<unsigned(rows), kThreads, 0, stream>>>(static_cast<const S*>(src), K, r0, c0, cols, q, ldq,
                                                               scale);
    return cudaGetLastError();
}

}  // namespace

bool weight_load_reads(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16; }

cudaError_t convert_window(const void* src, DType st, int64_t K, int64_t r0, int64_t c0, int64_t rows, int64_t cols,
                           void* dst, DType dt, int64_t ldd, cudaStream_t stream) {
    if (rows <= 0 || cols <= 0) return cudaSuccess;
    if (!weight_load_reads(st) || (dt != DType::F32 && dt != DType::BF16) || rows > INT32_MAX)
        return cudaErrorInvalidValue;
    switch (st) {
        case DType::F32: return convert_from<float>(src, K, r0, c0, rows, cols, dst, dt, ldd, stream);
        case DType::F16: return convert_from<__half>(src, K, r0, c0, rows, cols, dst, dt, ldd, stream);
        default: return convert_from<__nv_bfloat16>(src, K, r0, c0, rows, cols, dst, dt, ldd, stream);
    }
}

cudaError_t quantize_window_int8(const void* src, DType st, int64_t K, int64_t r0, int64_t c0, int64_t rows,
                                 int64_t cols, int8_t* q, int64_t ldq, float* scale, cudaStream_t stream) {
    if (rows <= 0) return cudaSuccess;
    if (!weight_load_reads(st) || rows > INT32_MAX) return cudaErrorInvalidValue;
    switch (st) {
        case DType::F32: return quantize_from<float>(src, K, r0, c0, rows, cols, q, ldq, scale, stream);
        case DType::F16: return quantize_from<__half>(src, K, r0, c0, rows, cols, q, ldq, scale, stream);
        default: return quantize_from<__nv_bfloat16>(src, K, r0, c0, rows, cols, q, ldq, scale, stream);
    }
}

cudaError_t fill_f32(float* p, int64_t n, float v, cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    fill_kernel<<<unsigned(std::min<int64_t>((n + 255) / 256, 1024)), 256, 0, stream>>>(p, n, v);
    return cudaGetLastError();
}

}  // namespace qdit::cuda
