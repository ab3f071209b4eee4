#include "backend/cuda/group_norm.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>

#include "backend/cuda/device_tensor.h"
#include "backend/cuda/kernel_util.cuh"
#include "core/error.h"

namespace qdit::cuda {

namespace {

using namespace kern;

// ---- GroupNorm ---------------------------------------------------------------------------------

// Per-channel Σx and Σx² (double) over the rows of one chunk: block (32, 8) covers 64 channels
// (two per thread) and strides the chunk's rows by 8; part [B, chunks, C].
template <typename T>
__global__ void gn_partial_k(const T* x, int64_t L, int64_t C, int64_t rows_per_chunk, double2* part) {
    const int64_t chunk = blockIdx.y, b = blockIdx.z, chunks = gridDim.y;
    const int64_t c0 = blockIdx.x * 64 + threadIdx.x * 2;
    const int64_t r0 = chunk * rows_per_chunk, r1 = min(L, r0 + rows_per_chunk);
    double s0 = 0, q0 = 0, s1 = 0, q1 = 0;
    const T* xb = x + b * L * C;
    for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) {
        const T* row = xb + r * C;
        if (c0 < C) {
            const double v = to_f(row[c0]);
            s0 += v;
            q0 += v * v;
        }
        if (c0 + 1 < C) {
            const double v = to_f(row[c0 + 1]);
            s1 += v;
            q1 += v * v;
        }
    }
    __shared__ double sh[8][32][4];
    sh[threadIdx.y][threadIdx.x][0] = s0;
    sh[threadIdx.y][threadIdx.x][1] = q0;
    sh[threadIdx.y][threadIdx.x][2] = s1;
    sh[threadIdx.y][threadIdx.x][3] = q1;
    __syncthreads();
    if (threadIdx.y == 0) {
        for (int y = 1; y < 8; ++y) {
            s0 += sh[y][threadIdx.x][0];
            q0 += sh[y][threadIdx.x][1];
            s1 += sh[y][threadIdx.x][2];
            q1 += sh[y][threadIdx.x][3];
        }
        double2* p = part + (b * chunks + chunk) * C;
        if (c0 < C) p[c0] = make_double2(s0, q0);
        if (c0 + 1 < C) p[c0 + 1] = make_double2(s1, q1);
    }
}

// One block per (b, g): folds the chunks' per-channel sums of the group (fixed order, so the
// result is deterministic) into scale / shift F32 [B, C].
__global__ void gn_finalize_k(const double2* part, int64_t chunks, int64_t C, int64_t cg, int64_t L,
                              const float* w, const float* bias, float eps, float* scale, float* shift) {
    const int64_t G = C / cg, b = blockIdx.x / G, g = blockIdx.x % G;
    const int64_t n_items = chunks * cg;
    double s = 0, q = 0;
    for (int64_t i = threadIdx.x; i < n_items; i += blockDim.x) {
        const int64_t k = i / cg, c = g * cg + i % cg;
        const double2 v = part[(b * chunks + k) * C + c];
        s += v.x;
        q += v.y;
    }
    __shared__ double ss[kThreads], sq[kThreads];
    ss[threadIdx.x] = s;
    sq[threadIdx.x] = q;
    __syncthreads();
    for (int o = blockDim.x / 2; o > 0; o >>= 1) {
        if (int(threadIdx.x) < o) {
            ss[threadIdx.x] += ss[threadIdx.x + o];
            sq[threadIdx.x] += sq[threadIdx.x + o];
        }
        __syncthreads();
    }
    const double n = double(L * cg);
    const double mean = __ddiv_rn(ss[0], n);
    const double var = fmax(0.0, __dsub_rn(__ddiv_rn(sq[0], n), __dmul_rn(mean, mean)));
    const double rstd = __ddiv_rn(1.0, __dsqrt_rn(__dadd_rn(var, double(eps))));
    for (int64_t c = g * cg + threadIdx.x; c < (g + 1) * cg; c += blockDim.x) {
        scale[b * C + c] = float(__dmul_rn(rstd, double(w[c])));
        shift[b * C + c] = float(__dsub_rn(double(bias[c]), __dmul_rn(__dmul_rn(mean, rstd), double(w[c]))));
    }
}

template <typename T, bool SILU>
__device__ __forceinline__ float gn_apply_one(float x, float a, float sh) {
    float v = __fadd_rn(__fmul_rn(x, a), sh);
    if (SILU) {
        v = round_to<T>(v);
        v = __fdiv_rn(v, __fadd_rn(1.0f, expf(-v)));
    }
    return v;
}

template <typename T, bool SILU>
__global__ void gn_apply_vec_k(const Vec<T>* x, Vec<T>* y, int64_t n_vec, int64_t L, int64_t C, const float* scale,
                               const float* shift) {
    constexpr int N = Vec<T>::N;
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n_vec; i += int64_t(gridDim.x) * blockDim.x) {
        const int64_t e0 = i * N, c0 = e0 % C, b = e0 / (L * C);
        const float* a = scale + b * C + c0;
        const float* s = shift + b * C + c0;
        Vec<T> v = x[i];
#pragma unroll
        for (int e = 0; e < N; ++e) v.v[e] = from_f<T>(gn_apply_one<T, SILU>(to_f(v.v[e]), a[e], s[e]));
        y[i] = v;
    }
}

template <typename T, bool SILU>
__global__ void gn_apply_k(const T* x, T* y, int64_t n, int64_t L, int64_t C, const float* scale,
                           const float* shift) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
        const int64_t c = i % C, b = i / (L * C);
        y[i] = from_f<T>(gn_apply_one<T, SILU>(to_f(x[i]), scale[b * C + c], shift[b * C + c]));
    }
}

}  // namespace

void group_norm(const void* x, void* y, DType dt, int64_t B, int64_t L, int64_t C, int64_t groups,
                const float* weight, const float* bias, float eps, bool silu, cudaStream_t stream) {
    if (B < 0 || L < 0 || C <= 0 || groups <= 0 || C % groups != 0 || B > 65535)
        raise<ShapeError>("group_norm: {} channels in {} groups over [{}, {}]", C, groups, B, L);
    if (B == 0 || L == 0) return;
    const int64_t cg = C / groups, ctiles = (C + 63) / 64;
    // Enough blocks to fill the GPU a few times over, at least 32 rows each.
    int64_t chunks = std::max<int64_t>(1, 1056 / (ctiles * B));
    chunks = std::min(chunks, (L + 31) / 32);
    chunks = std::min<int64_t>(chunks, 65535);
    const int64_t rows_per_chunk = (L + chunks - 1) / chunks;
    chunks = (L + rows_per_chunk - 1) / rows_per_chunk;

    DTensor part = DTensor::empty({B, chunks, C, 2}, DType::F64);
    DTensor ss = DTensor::empty({2, B, C}, DType::F32);
    float* scale = ss.data<float>();
    float* shift = scale + B * C;
    dispatch(dt, "group_norm", [&](auto tag) {
        using T = decltype(tag);
        gn_partial_k<T><<<dim3(unsigned(ctiles), unsigned(chunks), unsigned(B)), dim3(32, 8), 0, stream>>>(
            static_cast<const T*>(x), L, C, rows_per_chunk, part.data<double2>());
        launched("group_norm (statistics)");
        gn_finalize_k<<<unsigned(B * groups), kThreads, 0, stream>>>(part.data<double2>(), chunks, C, cg, L, weight,
                                                                      bias, eps, scale, shift);
        launched("group_norm (finalize)");
        const int64_t n = B * L * C;
        if (C % Vec<T>::N == 0 && aligned16(x) && aligned16(y)) {
            const int64_t nv = n / Vec<T>::N;
            auto xv = static_cast<const Vec<T>*>(x);
            auto yv = static_cast<Vec<T>*>(y);
            if (silu)
                gn_apply_vec_k<T, true><<<blocks_for(nv), kThreads, 0, stream>>>(xv, yv, nv, L, C, scale, shift);
            else
                gn_apply_vec_k<T, false><<<blocks_for(nv), kThreads, 0, stream>>>(xv, yv, nv, L, C, scale, shift);
        } else {
            auto xp = static_cast<const T*>(x);
            auto yp = static_cast<T*>(y);
            if (silu)
                gn_apply_k<T, true><<<blocks_for(n), kThreads, 0, stream>>>(xp, yp, n, L, C, scale, shift);
            else
                gn_apply_k<T, false><<<blocks_for(n), kThreads, 0, stream>>>(xp, yp, n, L, C, scale, shift);
        }
        launched("group_norm (apply)");
    });
}

}  // namespace qdit::cuda
