#include "backend/cuda/vae_kernels.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>

#include "backend/cuda/device_tensor.h"
#include "backend/cuda/lt_gemm.h"
#include "core/error.h"

namespace qdit::cuda::vae {

namespace {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(bf16 v) { return __bfloat162float(v); }
template <typename T>
__device__ __forceinline__ T from_f(float v);
template <>
__device__ __forceinline__ float from_f<float>(float v) {
    return v;
}
template <>
__device__ __forceinline__ bf16 from_f<bf16>(float v) {
    return __float2bfloat16_rn(v);
}
// round_as<T>: the value T stores for v.
template <typename T>
__device__ __forceinline__ float round_to(float v) {
    return to_f(from_f<T>(v));
}

template <typename F>
void dispatch(DType dt, const char* what, F&& f) {
    if (dt == DType::F32)
        f(float{});
    else if (dt == DType::BF16)
        f(bf16{});
    else
        raise<ShapeError>("{}: F32 or BF16 expected, got {}", what, dtype_name(dt));
}

void launched(const char* what) { check(cudaGetLastError(), what); }

constexpr int kThreads = 256;
unsigned blocks_for(int64_t n, int64_t per_block = kThreads) {
    return unsigned(std::min<int64_t>(std::max<int64_t>(1, (n + per_block - 1) / per_block), int64_t(1) << 30));
}

// 16 bytes of T.
template <typename T>
struct alignas(16) Vec {
    static constexpr int N = 16 / int(sizeof(T));
    T v[N];
};

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// ---- elementwise / layout ----------------------------------------------------------------------

template <typename E>
__global__ void copy_channels_k(const E* src, int64_t lds, E* dst, int64_t ldd, int64_t rows, int64_t ncopy) {
    const int64_t total = rows * ldd;
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
        const int64_t r = i / ldd, c = i % ldd;
        dst[i] = c < ncopy ? src[r * lds + c] : E(0);
    }
}

template <typename S, typename T>
__global__ void add_bias_rows_k(const S* src, int64_t lds, const float* bias, T* dst, int64_t ldd, int64_t rows,
                                int64_t n) {
    const int64_t total = rows * n;
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
        const int64_t r = i / n, c = i % n;
        float v = to_f(src[r * lds + c]);
        if (bias) v = __fadd_rn(v, bias[c]);
        dst[r * ldd + c] = from_f<T>(v);
    }
}

template <typename T>
__global__ void add_vec_k(Vec<T>* x, const Vec<T>* r, int64_t n_vec) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n_vec; i += int64_t(gridDim.x) * blockDim.x) {
        Vec<T> a = x[i];
        const Vec<T> b = r[i];
#pragma unroll
        for (int e = 0; e < Vec<T>::N; ++e) a.v[e] = from_f<T>(__fadd_rn(to_f(a.v[e]), to_f(b.v[e])));
        x[i] = a;
    }
}

template <typename T>
__global__ void add_k(T* x, const T* r, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
        x[i] = from_f<T>(__fadd_rn(to_f(x[i]), to_f(r[i])));
}

// [B, M, N] → [B, N, M] through 32x32 tiles in shared memory; block (32, 8).
template <typename S, typename T>
__global__ void transpose_k(const S* src, T* dst, int64_t M, int64_t N, int64_t tiles_n) {
    __shared__ float tile[32][33];
    const int64_t tm = blockIdx.x / tiles_n, tn = blockIdx.x % tiles_n;
    const int64_t b = blockIdx.y;
    const S* s = src + b * M * N;
    T* d = dst + b * M * N;
    for (int r = threadIdx.y; r < 32; r += 8) {
        const int64_t m = tm * 32 + r, n = tn * 32 + threadIdx.x;
        if (m < M && n < N) tile[r][threadIdx.x] = to_f(s[m * N + n]);
    }
    __syncthreads();
    for (int r = threadIdx.y; r < 32; r += 8) {
        const int64_t n = tn * 32 + r, m = tm * 32 + threadIdx.x;
        if (m < M && n < N) d[n * M + m] = from_f<T>(tile[threadIdx.x][r]);
    }
}

template <typename E>
__global__ void upsample_k(const E* x, E* y, int64_t B, int64_t H, int64_t W, int64_t U) {
    const int64_t total = B * 4 * H * W * U;
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
        const int64_t u = i % U, pix = i / U;
        const int64_t j = pix % (2 * W), row = pix / (2 * W);
        const int64_t ii = row % (2 * H), b = row / (2 * H);
        y[i] = x[((b * H + ii / 2) * W + j / 2) * U + u];
    }
}

template <typename S, typename T>
__global__ void unscale_k(const S* x, T* y, int64_t n, float scale, float shift) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
        const float xt = round_to<T>(to_f(x[i]));  // latents.to(dtype)
        y[i] = from_f<T>(__fadd_rn(round_to<T>(__fdiv_rn(xt, scale)), shift));
    }
}

template <typename T>
__global__ void postprocess_k(const T* img, uint8_t* out, int64_t B, int64_t C, int64_t H, int64_t W) {
    const int64_t total = B * H * W * C;
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
        const int64_t c = i % C, pix = i / C;
        const int64_t x = pix % W, row = pix / W;
        const int64_t yy = row % H, b = row / H;
        const float v = round_to<T>(__fadd_rn(__fmul_rn(to_f(img[((b * C + c) * H + yy) * W + x]), 0.5f), 0.5f));
        const float u = isnan(v) ? 0.0f : fminf(1.0f, fmaxf(0.0f, v));
        out[i] = uint8_t(rintf(__fmul_rn(u, 255.0f)));
    }
}

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

// ---- launchers -------------------------------------------------------------------------------------

void copy_channels(const void* src, int64_t lds, void* dst, int64_t ldd, int64_t rows, int64_t ncopy, DType dt,
                   cudaStream_t stream) {
    if (rows < 0 || ncopy < 0 || lds < ncopy || ldd < 0)
        raise<ShapeError>("vae::copy_channels: rows {} ncopy {} lds {} ldd {}", rows, ncopy, lds, ldd);
    if (rows == 0 || ldd == 0) return;
    ncopy = std::min(ncopy, ldd);
    const unsigned g = blocks_for(rows * ldd);
    if (dtype_size(dt) == 4)
        copy_channels_k<<<g, kThreads, 0, stream>>>(static_cast<const uint32_t*>(src), lds,
                                                     static_cast<uint32_t*>(dst), ldd, rows, ncopy);
    else if (dtype_size(dt) == 2)
        copy_channels_k<<<g, kThreads, 0, stream>>>(static_cast<const uint16_t*>(src), lds,
                                                     static_cast<uint16_t*>(dst), ldd, rows, ncopy);
    else
        raise<ShapeError>("vae::copy_channels: unsupported dtype {}", dtype_name(dt));
    launched("vae::copy_channels");
}

void add_bias_rows(const void* src, DType src_dt, int64_t lds, const float* bias, void* dst, DType dt, int64_t ldd,
                   int64_t rows, int64_t n, cudaStream_t stream) {
    if (rows < 0 || n < 0 || lds < n || ldd < n)
        raise<ShapeError>("vae::add_bias_rows: rows {} n {} lds {} ldd {}", rows, n, lds, ldd);
    if (rows == 0 || n == 0) return;
    dispatch(src_dt, "vae::add_bias_rows", [&](auto s) {
        using S = decltype(s);
        dispatch(dt, "vae::add_bias_rows", [&](auto t) {
            using T = decltype(t);
            add_bias_rows_k<<<blocks_for(rows * n), kThreads, 0, stream>>>(static_cast<const S*>(src), lds, bias,
                                                                            static_cast<T*>(dst), ldd, rows, n);
        });
    });
    launched("vae::add_bias_rows");
}

void add_inplace(void* x, const void* r, int64_t n, DType dt, cudaStream_t stream) {
    if (n <= 0) return;
    dispatch(dt, "vae::add_inplace", [&](auto tag) {
        using T = decltype(tag);
        if (n % Vec<T>::N == 0 && aligned16(x) && aligned16(r)) {
            const int64_t nv = n / Vec<T>::N;
            add_vec_k<<<blocks_for(nv), kThreads, 0, stream>>>(static_cast<Vec<T>*>(x), static_cast<const Vec<T>*>(r),
                                                               nv);
        } else {
            add_k<<<blocks_for(n), kThreads, 0, stream>>>(static_cast<T*>(x), static_cast<const T*>(r), n);
        }
    });
    launched("vae::add_inplace");
}

void transpose(const void* src, DType src_dt, void* dst, DType dt, int64_t B, int64_t M, int64_t N,
               cudaStream_t stream) {
    if (B < 0 || M < 0 || N < 0 || B > 65535)
        raise<ShapeError>("vae::transpose: bad shape [{}, {}, {}]", B, M, N);
    if (B == 0 || M == 0 || N == 0) return;
    const int64_t tiles_m = (M + 31) / 32, tiles_n = (N + 31) / 32;
    if (tiles_m * tiles_n > (int64_t(1) << 31) - 1) raise<ShapeError>("vae::transpose: [{}, {}] too large", M, N);
    const dim3 grid(unsigned(tiles_m * tiles_n), unsigned(B)), block(32, 8);
    dispatch(src_dt, "vae::transpose", [&](auto s) {
        using S = decltype(s);
        dispatch(dt, "vae::transpose", [&](auto t) {
            using T = decltype(t);
            transpose_k<<<grid, block, 0, stream>>>(static_cast<const S*>(src), static_cast<T*>(dst), M, N, tiles_n);
        });
    });
    launched("vae::transpose");
}

void group_norm(const void* x, void* y, DType dt, int64_t B, int64_t L, int64_t C, int64_t groups,
                const float* weight, const float* bias, float eps, bool silu, cudaStream_t stream) {
    if (B < 0 || L < 0 || C <= 0 || groups <= 0 || C % groups != 0 || B > 65535)
        raise<ShapeError>("vae::group_norm: {} channels in {} groups over [{}, {}]", C, groups, B, L);
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
    dispatch(dt, "vae::group_norm", [&](auto tag) {
        using T = decltype(tag);
        gn_partial_k<T><<<dim3(unsigned(ctiles), unsigned(chunks), unsigned(B)), dim3(32, 8), 0, stream>>>(
            static_cast<const T*>(x), L, C, rows_per_chunk, part.data<double2>());
        launched("vae::group_norm (statistics)");
        gn_finalize_k<<<unsigned(B * groups), kThreads, 0, stream>>>(part.data<double2>(), chunks, C, cg, L, weight,
                                                                      bias, eps, scale, shift);
        launched("vae::group_norm (finalize)");
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
        launched("vae::group_norm (apply)");
    });
}

void upsample_nearest_2x(const void* x, void* y, DType dt, int64_t B, int64_t H, int64_t W, int64_t C,
                         cudaStream_t stream) {
    if (B < 0 || H < 0 || W < 0 || C < 0) raise<ShapeError>("vae::upsample_nearest_2x: bad shape");
    const int64_t bytes = C * int64_t(dtype_size(dt));
    if (B * H * W * C == 0) return;
    if (bytes % 16 == 0 && aligned16(x) && aligned16(y)) {
        const int64_t U = bytes / 16;
        upsample_k<<<blocks_for(B * 4 * H * W * U), kThreads, 0, stream>>>(static_cast<const uint4*>(x),
                                                                           static_cast<uint4*>(y), B, H, W, U);
    } else if (dtype_size(dt) == 4) {
        upsample_k<<<blocks_for(B * 4 * H * W * C), kThreads, 0, stream>>>(static_cast<const uint32_t*>(x),
                                                                           static_cast<uint32_t*>(y), B, H, W, C);
    } else if (dtype_size(dt) == 2) {
        upsample_k<<<blocks_for(B * 4 * H * W * C), kThreads, 0, stream>>>(static_cast<const uint16_t*>(x),
                                                                           static_cast<uint16_t*>(y), B, H, W, C);
    } else {
        raise<ShapeError>("vae::upsample_nearest_2x: unsupported dtype {}", dtype_name(dt));
    }
    launched("vae::upsample_nearest_2x");
}

void unscale(const void* x, DType src_dt, void* y, DType dt, int64_t n, float scale, float shift,
             cudaStream_t stream) {
    if (n <= 0) return;
    dispatch(src_dt, "vae::unscale", [&](auto s) {
        using S = decltype(s);
        dispatch(dt, "vae::unscale", [&](auto t) {
            using T = decltype(t);
            unscale_k<<<blocks_for(n), kThreads, 0, stream>>>(static_cast<const S*>(x), static_cast<T*>(y), n, scale,
                                                              shift);
        });
    });
    launched("vae::unscale");
}

void postprocess_u8(const void* image, DType dt, uint8_t* out, int64_t B, int64_t C, int64_t H, int64_t W,
                    cudaStream_t stream) {
    if (B < 0 || C < 0 || H < 0 || W < 0) raise<ShapeError>("vae::postprocess_u8: bad shape");
    const int64_t n = B * C * H * W;
    if (n == 0) return;
    dispatch(dt, "vae::postprocess_u8", [&](auto tag) {
        using T = decltype(tag);
        postprocess_k<<<blocks_for(n), kThreads, 0, stream>>>(static_cast<const T*>(image), out, B, C, H, W);
    });
    launched("vae::postprocess_u8");
}

void attention_one_head(const void* q, const void* k, const void* v, int64_t ld, void* o, int64_t ldo, int64_t L,
                        int64_t d, DType dt, cudaStream_t stream, size_t max_scratch_bytes) {
    if (L < 0 || d <= 0 || ld < d || ldo < d)
        raise<ShapeError>("vae::attention_one_head: L={} d={} ld={} ldo={}", L, d, ld, ldo);
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
        dispatch(dt, "vae::attention_one_head", [&](auto tag) {
            using T = decltype(tag);
            softmax_rows_k<T><<<unsigned(rows), 512, 0, stream>>>(S.data<float>(), L, scale, P.data<T>(),
                                                                  inv.data<float>());
            launched("vae::attention_one_head (softmax)");
            cuda::matmul(P.raw(), L, v, ld, false, nullptr, acc.raw(), d, rows, d, L, dt, DType::F32, stream);
            T* oc = static_cast<T*>(o) + q0 * ldo;
            scale_rows_k<T><<<blocks_for(rows * d), kThreads, 0, stream>>>(acc.data<float>(), inv.data<float>(), oc,
                                                                           ldo, rows, d);
            launched("vae::attention_one_head (scale)");
        });
    }
}

}  // namespace qdit::cuda::vae
