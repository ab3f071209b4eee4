#include "backend/cuda/random.h"

#include <cuda_bf16.h>

#include "core/error.h"

namespace qdit::cuda {

namespace {

__device__ __forceinline__ uint32_t mix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return uint32_t(x);
}

__global__ void normal_bf16_kernel(__nv_bfloat16* p, int64_t n, uint64_t seed, float mean, float std) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float u1 = (float(mix(seed * 0x9e3779b97f4a7c15ull + 2 * uint64_t(i))) + 1.f) * 2.3283064e-10f;
    const float u2 = float(mix(seed * 0x9e3779b97f4a7c15ull + 2 * uint64_t(i) + 1)) * 2.3283064e-10f;
    p[i] = __float2bfloat16_rn(mean + std * sqrtf(-2.f * logf(u1)) * cospif(2.f * u2));
}

}  // namespace

void fill_normal_bf16(void* p, int64_t n, uint64_t seed, float mean, float std, cudaStream_t stream) {
    if (n <= 0) return;
    normal_bf16_kernel<<<unsigned((n + 255) / 256), 256, 0, stream>>>(static_cast<__nv_bfloat16*>(p), n, seed, mean,
                                                                       std);
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) raise<Error>("CUDA launch of fill_normal failed: {}", cudaGetErrorString(e));
}

}  // namespace qdit::cuda
