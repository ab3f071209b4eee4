#include "backend/cuda/split_linear.h"

#include <cuda_bf16.h>

#include "backend/cuda/lt_gemm.h"
#include "backend/cuda/block_reduce.cuh"
#include "core/error.h"

namespace qdit::cuda {

namespace {

constexpr int kThreads = 256;

void launch_check(const char* what) {
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) raise<Error>("CUDA error in {}: {}", what, cudaGetErrorString(e));
}

// One block per row.
__global__ void __launch_bounds__(kThreads)
row_absmax_kernel(const __nv_bfloat16* __restrict__ x, int64_t ldx, int64_t k, float* __restrict__ absmax) {
    const __nv_bfloat16* row = x + int64_t(blockIdx.x) * ldx;
    float a = 0.f;
    for (int64_t j = threadIdx.x; j < k; j += kThreads) a = fmaxf(a, fabsf(__bfloat162float(row[j])));
    a = block_max<kThreads / 32>(a);
    if (threadIdx.x == 0) absmax[blockIdx.x] = a;
}

// The per-token rule of quant/int8.h with a given absmax: the IEEE division x / s (as the CPU
// reference and backend/cuda/quantize.cu do), rint (half to even), clamp ±127.
__global__ void __launch_bounds__(kThreads)
quantize_absmax_kernel(const __nv_bfloat16* __restrict__ x, int64_t ldx, int64_t k, const float* __restrict__ absmax,
                       int8_t* __restrict__ q, int64_t ldq, float* __restrict__ scale) {
    const int64_t i = blockIdx.x;
    const float amax = absmax[i];
    const float s = amax > 0.f ? __fdiv_rn(amax, 127.f) : 1.f;
    if (threadIdx.x == 0) scale[i] = s;
    const __nv_bfloat16* row = x + i * ldx;
    int8_t* qrow = q + i * ldq;
    for (int64_t j = threadIdx.x; j < ldq; j += kThreads) {
        if (j < k) {
            const float r = rintf(__fdiv_rn(__bfloat162float(row[j]), s));
            qrow[j] = static_cast<int8_t>(fminf(127.f, fmaxf(-127.f, r)));
        } else {
            qrow[j] = 0;
        }
    }
}

__global__ void dequantize_kernel(const int32_t* __restrict__ acc, int64_t ldc, int64_t m, int64_t n,
                                  const float* __restrict__ sx, const float* __restrict__ sw,
                                  const float* __restrict__ bias, __nv_bfloat16* __restrict__ y, int64_t ldy) {
    const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (t >= m * n) return;
    const int64_t i = t / n, j = t % n;
    const float v = __fmaf_rn(__fmul_rn(float(acc[i * ldc + j]), sx[i]), sw[j], bias ? bias[j] : 0.f);
    y[i * ldy + j] = __float2bfloat16_rn(v);
}

__global__ void bias_f32_kernel(const float* __restrict__ acc, int64_t ldc, int64_t m, int64_t n,
                                const __nv_bfloat16* __restrict__ bias, __nv_bfloat16* __restrict__ y, int64_t ldy) {
    const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (t >= m * n) return;
    const int64_t i = t / n, j = t % n;
    const float v = acc[i * ldc + j] + (bias ? __bfloat162float(bias[j]) : 0.f);
    y[i * ldy + j] = __float2bfloat16_rn(v);
}

// 16 x 16 output tile per block, K in steps of 16 through shared memory.
constexpr int kTile = 16;
__global__ void int8_gemm_i32_kernel(const int8_t* __restrict__ a, int64_t lda, const int8_t* __restrict__ w,
                                     int64_t ldw, int32_t* __restrict__ c, int64_t ldc, int64_t m, int64_t n,
                                     int64_t k) {
    __shared__ int32_t as[kTile][kTile + 1], ws[kTile][kTile + 1];
    const int64_t i = int64_t(blockIdx.y) * kTile + threadIdx.y, j = int64_t(blockIdx.x) * kTile + threadIdx.x;
    const int64_t wrow = int64_t(blockIdx.x) * kTile + threadIdx.y;
    int32_t sum = 0;
    for (int64_t k0 = 0; k0 < k; k0 += kTile) {
        const int64_t kk = k0 + threadIdx.x;
        as[threadIdx.y][threadIdx.x] = i < m && kk < k ? int32_t(a[i * lda + kk]) : 0;
        ws[threadIdx.y][threadIdx.x] = wrow < n && kk < k ? int32_t(w[wrow * ldw + kk]) : 0;
        __syncthreads();
#pragma unroll
        for (int t = 0; t < kTile; ++t) sum += as[threadIdx.y][t] * ws[threadIdx.x][t];
        __syncthreads();
    }
    if (i < m && j < n) c[i * ldc + j] = sum;
}

unsigned blocks_for(int64_t n) { return unsigned((n + kThreads - 1) / kThreads); }

void check_shape(const char* what, int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldw, int64_t ldc) {
    if (m < 0 || n <= 0 || k <= 0 || lda < k || ldw < k || ldc < n)
        raise<ShapeError>("{}: bad shape M={} N={} K={} lda={} ldw={} ldc={}", what, m, n, k, lda, ldw, ldc);
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace

void row_absmax_bf16(const void* x, int64_t ldx, int64_t m, int64_t k, float* absmax, cudaStream_t stream) {
    if (m < 0 || k <= 0 || ldx < k) raise<ShapeError>("row_absmax_bf16: bad shape m={} k={} ldx={}", m, k, ldx);
    if (m == 0) return;
    row_absmax_kernel<<<unsigned(m), kThreads, 0, stream>>>(static_cast<const __nv_bfloat16*>(x), ldx, k, absmax);
    launch_check("row_absmax_bf16");
}

void quantize_rows_with_absmax_bf16(const void* x, int64_t ldx, int64_t m, int64_t k, const float* absmax, int8_t* q,
                                    int64_t ldq, float* scale, cudaStream_t stream) {
    if (m < 0 || k <= 0 || ldx < k || ldq < k)
        raise<ShapeError>("quantize_rows_with_absmax_bf16: bad shape m={} k={} ldx={} ldq={}", m, k, ldx, ldq);
    if (m == 0) return;
    quantize_absmax_kernel<<<unsigned(m), kThreads, 0, stream>>>(static_cast<const __nv_bfloat16*>(x), ldx, k, absmax,
                                                                q, ldq, scale);
    launch_check("quantize_rows_with_absmax_bf16");
}

void int8_gemm_i32_simple(const int8_t* a, int64_t lda, const int8_t* w, int64_t ldw, int32_t* acc, int64_t ldc,
                          int64_t m, int64_t n, int64_t k, cudaStream_t stream) {
    check_shape("int8_gemm_i32", m, n, k, lda, ldw, ldc);
    if (m == 0) return;
    const dim3 grid(unsigned((n + kTile - 1) / kTile), unsigned((m + kTile - 1) / kTile)), block(kTile, kTile);
    int8_gemm_i32_kernel<<<grid, block, 0, stream>>>(a, lda, w, ldw, acc, ldc, m, n, k);
    launch_check("int8_gemm_i32_simple");
}

void int8_gemm_i32(const int8_t* a, int64_t lda, const int8_t* w, int64_t ldw, int32_t* acc, int64_t ldc, int64_t m,
                   int64_t n, int64_t k, cudaStream_t stream) {
    check_shape("int8_gemm_i32", m, n, k, lda, ldw, ldc);
    if (m == 0) return;
    const bool lt_ok = k % 4 == 0 && lda % 4 == 0 && ldw % 4 == 0 && ldc % 4 == 0 && aligned16(a) && aligned16(w) &&
                       aligned16(acc);
    if (lt_ok && lt_gemm(LtGemmTypes::Int8ToI32, a, lda, w, ldw, nullptr, acc, ldc, m, n, k, stream)) return;
    int8_gemm_i32_simple(a, lda, w, ldw, acc, ldc, m, n, k, stream);
}

void dequantize_i32_bf16(const int32_t* acc, int64_t ldc, int64_t m, int64_t n, const float* sx, const float* sw,
                         const float* bias, void* y, int64_t ldy, cudaStream_t stream) {
    if (m < 0 || n <= 0 || ldc < n || ldy < n)
        raise<ShapeError>("dequantize_i32_bf16: bad shape m={} n={} ldc={} ldy={}", m, n, ldc, ldy);
    if (m == 0) return;
    dequantize_kernel<<<blocks_for(m * n), kThreads, 0, stream>>>(acc, ldc, m, n, sx, sw, bias,
                                                                 static_cast<__nv_bfloat16*>(y), ldy);
    launch_check("dequantize_i32_bf16");
}

void bf16_gemm_f32(const void* x, int64_t ldx, const void* w, int64_t ldw, float* acc, int64_t ldc, int64_t m,
                   int64_t n, int64_t k, cudaStream_t stream) {
    check_shape("bf16_gemm_f32", m, n, k, ldx, ldw, ldc);
    if (m == 0) return;
    if (!lt_gemm(LtGemmTypes::Bf16ToF32, x, ldx, w, ldw, nullptr, acc, ldc, m, n, k, stream))
        raise<Error>("bf16_gemm_f32: cuBLASLt has no bf16 -> f32 algorithm for M={} N={} K={} (ldx={} ldw={} ldc={})",
                     m, n, k, ldx, ldw, ldc);
}

void bias_f32_to_bf16(const float* acc, int64_t ldc, int64_t m, int64_t n, const void* bias, void* y, int64_t ldy,
                      cudaStream_t stream) {
    if (m < 0 || n <= 0 || ldc < n || ldy < n)
        raise<ShapeError>("bias_f32_to_bf16: bad shape m={} n={} ldc={} ldy={}", m, n, ldc, ldy);
    if (m == 0) return;
    bias_f32_kernel<<<blocks_for(m * n), kThreads, 0, stream>>>(acc, ldc, m, n, static_cast<const __nv_bfloat16*>(bias),
                                                               static_cast<__nv_bfloat16*>(y), ldy);
    launch_check("bias_f32_to_bf16");
}

}  // namespace qdit::cuda
