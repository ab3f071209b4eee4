#include "backend/cuda/quantize.h"

#include <cuda_bf16.h>

namespace qdit::cuda {

namespace {

constexpr int kThreads = 256;

__device__ float block_max(float v) {
    __shared__ float warp_max[kThreads / 32];
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        v = threadIdx.x < kThreads / 32 ? warp_max[threadIdx.x] : 0.f;
        for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
        if (threadIdx.x == 0) warp_max[0] = v;
    }
    __syncthreads();
    return warp_max[0];
}

__device__ int8_t quantize_one(float x, float s) {
    // __fdiv_rn: IEEE division, so the result equals the CPU reference bit for bit.
    float r = rintf(__fdiv_rn(x, s));  // rintf rounds half to even
    return static_cast<int8_t>(fminf(127.f, fmaxf(-127.f, r)));
}

__global__ void __launch_bounds__(kThreads)
quantize_rows_bf16_kernel(const __nv_bfloat16* __restrict__ x, int64_t k, int64_t ldx,
                          int8_t* __restrict__ q, float* __restrict__ scale) {
    const __nv_bfloat16* row = x + blockIdx.x * ldx;
    int8_t* qrow = q + blockIdx.x * k;
    float amax = 0.f;
    for (int64_t i = threadIdx.x; i < k; i += kThreads) amax = fmaxf(amax, fabsf(__bfloat162float(row[i])));
    amax = block_max(amax);
    const float s = amax > 0.f ? __fdiv_rn(amax, 127.f) : 1.f;
    if (threadIdx.x == 0) scale[blockIdx.x] = s;
    for (int64_t i = threadIdx.x; i < k; i += kThreads) qrow[i] = quantize_one(__bfloat162float(row[i]), s);
}

}  // namespace

int device_count() {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

cudaError_t quantize_rows_int8_bf16(const void* x, int64_t m, int64_t k, int64_t ldx, int8_t* q,
                                    float* scale, cudaStream_t stream) {
    if (m <= 0) return cudaSuccess;
    quantize_rows_bf16_kernel<<<dim3(unsigned(m)), kThreads, 0, stream>>>(
        static_cast<const __nv_bfloat16*>(x), k, ldx, q, scale);
    return cudaGetLastError();
}

}  // namespace qdit::cuda
