#include "backend/cuda/channel_norm.h"

#include <cuda_bf16.h>

#include "core/error.h"

namespace qdit::cuda {

namespace {

constexpr int kThreads = 128;

__device__ __forceinline__ float load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void store(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store(__nv_bfloat16* p, int64_t i, float v) { p[i] = __float2bfloat16_rn(v); }
// The value a store into T keeps.
template <typename T>
__device__ __forceinline__ float round_as(float v) {
    if constexpr (sizeof(T) == 2) return __bfloat162float(__float2bfloat16_rn(v));
    return v;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
channel_rms_norm_kernel(const T* x, T* y, int64_t C, const float* gamma, float eps, float scale, bool silu) {
    const int64_t r = blockIdx.x;
    const T* xr = x + r * C;
    T* yr = y + r * C;
    // Σ v² of the f32 squares in double, as the CPU sums them (in another order).
    double ss = 0;
    for (int64_t c = threadIdx.x; c < C; c += kThreads) {
        const float v = load(xr, c);
        ss += double(v * v);
    }
    __shared__ double part[kThreads / 32];
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = ss;
    __syncthreads();
    double total = 0;
    for (int w = 0; w < kThreads / 32; ++w) total += part[w];
    const float denom = fmaxf(sqrtf(float(total)), eps);
    for (int64_t c = threadIdx.x; c < C; c += kThreads) {
        float v = round_as<T>(__fdiv_rn(load(xr, c), denom));
        v = round_as<T>(v * scale);
        v = round_as<T>(v * gamma[c]);
        if (silu) v = v / (1.0f + expf(-v));
        store(yr, c, v);
    }
}

}  // namespace

void channel_rms_norm(const void* x, void* y, int64_t n, int64_t C, DType dtype, const float* gamma, float eps,
                      bool silu, cudaStream_t stream) {
    if (n <= 0) return;
    if (C < 1 || (dtype != DType::F32 && dtype != DType::BF16))
        raise<ShapeError>("channel_rms_norm: {} channels of {} (need F32 or BF16, C >= 1)", C, dtype_name(dtype));
    const float scale = float(sqrt(double(C)));
    if (dtype == DType::F32)
        channel_rms_norm_kernel<float><<<unsigned(n), kThreads, 0, stream>>>(
            static_cast<const float*>(x), static_cast<float*>(y), C, gamma, eps, scale, silu);
    else
        channel_rms_norm_kernel<__nv_bfloat16><<<unsigned(n), kThreads, 0, stream>>>(
            static_cast<const __nv_bfloat16*>(x), static_cast<__nv_bfloat16*>(y), C, gamma, eps, scale, silu);
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) raise<Error>("CUDA launch of channel_rms_norm failed: {}", cudaGetErrorString(e));
}

}  // namespace qdit::cuda
