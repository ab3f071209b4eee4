#include "backend/cuda/attention.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>

#include "backend/cuda/device_tensor.h"
#include "backend/cuda/lt_gemm.h"
#include "backend/cuda/kernel_util.cuh"
#include "core/error.h"

namespace qdit::cuda {

namespace {

using namespace kern;

// ---- attention ---------------------------------------------------------------------------------

__device__ float block_max_f(float v, float* part) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
    __syncthreads();
    float r = part[0];
    for (int i = 1; i < int(blockDim.x >> 5); ++i) r = fmaxf(r, part[i]);
    return r;
}
__device__ double block_sum_d(double v, double* part) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
    __syncthreads();
    double r = 0;
    for (int i = 0; i < int(blockDim.x >> 5); ++i) r += part[i];
    return r;
}

// One block per query row: s ← s·scale, p = exp(s − max) (stored rounded to T), inv = 1 / Σp.
template <typename T>
__global__ void softmax_rows_k(const float* s, int64_t n, float scale, T* p, float* inv) {
    __shared__ float pm[32];
    __shared__ double ps[32];
    const float* row = s + blockIdx.x * n;
    T* prow = p + blockIdx.x * n;
    float mx = -INFINITY;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) mx = fmaxf(mx, __fmul_rn(row[j], scale));
    mx = block_max_f(mx, pm);
    double sum = 0;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
        const float e = expf(__fsub_rn(__fmul_rn(row[j], scale), mx));
        sum += double(e);
        prow[j] = from_f<T>(e);
    }
    sum = block_sum_d(sum, ps);
    if (threadIdx.x == 0) inv[blockIdx.x] = __fdiv_rn(1.0f, float(sum));
}

template <typename T>
__global__ void scale_rows_k(const float* acc, const float* inv, T* o, int64_t ldo, int64_t rows, int64_t d) {
    const int64_t total = rows * d;
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
        const int64_t r = i / d, c = i % d;
        o[r * ldo + c] = from_f<T>(__fmul_rn(acc[i], inv[r]));
    }
}

}  // namespace

void attention_one_head(const void* q, const void* k, const void* v, int64_t ld, void* o, int64_t ldo, int64_t L,
                        int64_t d, DType dt, cudaStream_t stream, size_t max_scratch_bytes) {
    if (L < 0 || d <= 0 || ld < d || ldo < d)
        raise<ShapeError>("attention_one_head: L={} d={} ld={} ldo={}", L, d, ld, ldo);
    if (L == 0) return;
    const size_t es = dtype_size(dt);
    const size_t per_row = size_t(L) * (4 + es);
    const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(L, int64_t(max_scratch_bytes / per_row)));
    DTensor S = DTensor::empty({chunk, L}, DType::F32);
    DTensor P = DTensor::empty({chunk, L}, dt);
    DTensor inv = DTensor::empty({chunk}, DType::F32);
    DTensor acc = DTensor::empty({chunk, d}, DType::F32);
    const float scale = float(1.0 / std::sqrt(double(d)));
    for (int64_t q0 = 0; q0 < L; q0 += chunk) {
        const int64_t rows = std::min(chunk, L - q0);
        const void* qc = static_cast<const uint8_t*>(q) + size_t(q0 * ld) * es;
        cuda::matmul(qc, ld, k, ld, true, nullptr, S.raw(), L, rows, L, d, dt, DType::F32, stream);
        dispatch(dt, "attention_one_head", [&](auto tag) {
            using T = decltype(tag);
            softmax_rows_k<T><<<unsigned(rows), 512, 0, stream>>>(S.data<float>(), L, scale, P.data<T>(),
                                                                  inv.data<float>());
            launched("attention_one_head (softmax)");
            cuda::matmul(P.raw(), L, v, ld, false, nullptr, acc.raw(), d, rows, d, L, dt, DType::F32, stream);
            T* oc = static_cast<T*>(o) + q0 * ldo;
            scale_rows_k<T><<<blocks_for(rows * d), kThreads, 0, stream>>>(acc.data<float>(), inv.data<float>(), oc,
                                                                           ldo, rows, d);
            launched("attention_one_head (scale)");
        });
    }
}

}  // namespace qdit::cuda
