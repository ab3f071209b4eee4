#include "backend/cuda/quantize.h"

#include "backend/cuda/bf16_math.cuh"
#include "backend/cuda/block_reduce.cuh"
#include "core/error.h"

#include <cuda_bf16.h>

#include <cstdint>

namespace qdit::cuda {

namespace {

constexpr int kThreads = 256;

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
    amax = block_max<kThreads / 32>(amax);
    const float s = amax > 0.f ? __fdiv_rn(amax, 127.f) : 1.f;
    if (threadIdx.x == 0) scale[blockIdx.x] = s;
    for (int64_t i = threadIdx.x; i < k; i += kThreads) qrow[i] = quantize_one(__bfloat162float(row[i]), s);
}

// Vectorized variant: one block per row, each thread holds NV 16-byte vectors (8 bf16 each) of the
// row in registers, so the row is read from device memory once; 8 int8 go out per 8-byte store.
// Needs k % 8 == 0, ldx % 8 == 0, x 16-byte and q 8-byte aligned; blockDim.x * NV * 8 >= k.
template <int NV>
__device__ __forceinline__ void load_row(const __nv_bfloat16* __restrict__ x, int64_t row, int64_t ldx, int nvec,
                                         uint4 (&v)[NV]) {
    const uint4* xr = reinterpret_cast<const uint4*>(x + row * ldx);
#pragma unroll
    for (int j = 0; j < NV; ++j) {
        const int i = int(threadIdx.x) + j * int(blockDim.x);
        v[j] = i < nvec ? __ldg(xr + i) : make_uint4(0u, 0u, 0u, 0u);
    }
}

template <int NV>
__device__ __forceinline__ float row_part_absmax(const uint4 (&v)[NV]) {
    float amax = 0.f;
#pragma unroll
    for (int j = 0; j < NV; ++j) {
        const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&v[j]);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const float2 f = __bfloat1622float2(h[e]);
            amax = fmaxf(amax, fmaxf(fabsf(f.x), fabsf(f.y)));
        }
    }
    return amax;
}

template <int NV>
__device__ __forceinline__ void store_row(const uint4 (&v)[NV], float s, int8_t* __restrict__ q, int64_t row,
                                          int64_t k, int nvec) {
    uint2* qr = reinterpret_cast<uint2*>(q + row * k);
    const float inv_s = __frcp_rn(s);
#pragma unroll
    for (int j = 0; j < NV; ++j) {
        const int i = int(threadIdx.x) + j * int(blockDim.x);
        if (i < nvec) {
            const uint32_t w[4] = {v[j].x, v[j].y, v[j].z, v[j].w};
            float f[8];
#pragma unroll
            for (int e = 0; e < 4; ++e) f[2 * e] = bf16_lo(w[e]), f[2 * e + 1] = bf16_hi(w[e]);
            qr[i] = quantize8(f, s, inv_s);  // quantize_one without a division per element: bit-identical
        }
    }
}

template <int NV>
__global__ void __launch_bounds__(1024)
quantize_rows_bf16_vec_kernel(const __nv_bfloat16* __restrict__ x, int64_t k, int64_t ldx,
                              int8_t* __restrict__ q, float* __restrict__ scale) {
    const int64_t row = blockIdx.x;
    const int nvec = int(k >> 3);
    uint4 v[NV];
    load_row<NV>(x, row, ldx, nvec, v);
    const float amax = block_max<32>(row_part_absmax<NV>(v));  // up to 1024 threads
    const float s = amax > 0.f ? __fdiv_rn(amax, 127.f) : 1.f;
    if (threadIdx.x == 0) scale[row] = s;
    store_row<NV>(v, s, q, row, k, nvec);
}

template <int NV>
cudaError_t launch_vec(const void* x, int64_t m, int64_t k, int64_t ldx, int8_t* q, float* scale,
                       cudaStream_t stream) {
    const int64_t nvec = k / 8;
    const int threads = int(((nvec + NV - 1) / NV + 31) / 32 * 32);
    quantize_rows_bf16_vec_kernel<NV><<<dim3(unsigned(m)), threads, 0, stream>>>(
        static_cast<const __nv_bfloat16*>(x), k, ldx, q, scale);
    return cudaGetLastError();
}

}  // namespace

int device_count() {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

namespace {
__global__ void probe_kernel() {}
}  // namespace

void require_code_for_device(int device) {
    cudaFuncAttributes a;
    const cudaError_t e = cudaFuncGetAttributes(&a, probe_kernel);
    if (e == cudaSuccess) return;
    cudaGetLastError();  // clear the sticky-free error of the query
    int major = 0, minor = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
    raise<Error>("CUDA device {} (compute capability {}.{}) cannot run this build's kernels ({}): rebuild with its "
                 "architecture in CMAKE_CUDA_ARCHITECTURES (e.g. -DCMAKE_CUDA_ARCHITECTURES={}{}-real), or add a "
                 "PTX entry such as 90-virtual",
                 device, major, minor, cudaGetErrorString(e), major, minor);
}

cudaError_t quantize_rows_int8_bf16(const void* x, int64_t m, int64_t k, int64_t ldx, int8_t* q,
                                    float* scale, cudaStream_t stream) {
    if (m <= 0) return cudaSuccess;
    const bool vec_ok = k % 8 == 0 && ldx % 8 == 0 && (reinterpret_cast<uintptr_t>(x) & 15u) == 0 &&
                        (reinterpret_cast<uintptr_t>(q) & 7u) == 0 && m <= INT32_MAX;
    // Vectors per thread: 2 up to K = 8192, 4 above (H100, bench/cuda/NOTES.md: 2 was 4-5 % faster
    // at K = 3072/3840, 4 was 6 % faster at K = 10240/12288; 8 was 35-50 % slower everywhere).
    if (vec_ok && k <= 8192 && k > 0) return launch_vec<2>(x, m, k, ldx, q, scale, stream);
    if (vec_ok && k <= 4 * 8 * 1024 && k > 0) return launch_vec<4>(x, m, k, ldx, q, scale, stream);
    if (vec_ok && k <= 8 * 8 * 1024 && k > 0) return launch_vec<8>(x, m, k, ldx, q, scale, stream);
    quantize_rows_bf16_kernel<<<dim3(unsigned(m)), kThreads, 0, stream>>>(
        static_cast<const __nv_bfloat16*>(x), k, ldx, q, scale);
    return cudaGetLastError();
}

namespace detail {

cudaError_t quantize_rows_int8_bf16_nv(const void* x, int64_t m, int64_t k, int64_t ldx, int8_t* q, float* scale,
                                       cudaStream_t stream, int nv) {
    if (m <= 0) return cudaSuccess;
    switch (nv) {
        case 2: return launch_vec<2>(x, m, k, ldx, q, scale, stream);
        case 4: return launch_vec<4>(x, m, k, ldx, q, scale, stream);
        case 8: return launch_vec<8>(x, m, k, ldx, q, scale, stream);
        default:
            quantize_rows_bf16_kernel<<<dim3(unsigned(m)), kThreads, 0, stream>>>(
                static_cast<const __nv_bfloat16*>(x), k, ldx, q, scale);
            return cudaGetLastError();
    }
}

}  // namespace detail

}  // namespace qdit::cuda
