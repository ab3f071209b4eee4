#include "backend/cuda/attention.h"

#include "core/error.h"

namespace qdit::cuda {

namespace {

constexpr int kPerLaunch = 64;

struct Values {
    int32_t v[kPerLaunch];
};

__global__ void set_i32_kernel(int32_t* dst, Values values, int n) {
    const int i = int(threadIdx.x);
    if (i < n) dst[i] = values.v[i];
}

}  // namespace

void set_i32(int32_t* dst, const int32_t* values, int64_t n, cudaStream_t stream) {
    for (int64_t i0 = 0; i0 < n; i0 += kPerLaunch) {
        const int c = int(n - i0 < kPerLaunch ? n - i0 : kPerLaunch);
        Values v{};
        for (int i = 0; i < c; ++i) v.v[i] = values[i0 + i];
        set_i32_kernel<<<1, kPerLaunch, 0, stream>>>(dst + i0, v, c);
    }
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) raise<Error>("CUDA launch of set_i32 failed: {}", cudaGetErrorString(e));
}

}  // namespace qdit::cuda
