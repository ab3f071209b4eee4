#include "backend/cuda/image.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>

#include "backend/cuda/kernel_util.cuh"
#include "core/error.h"

namespace qdit::cuda {

namespace {

using namespace kern;

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

}  // namespace

void copy_channels(const void* src, int64_t lds, void* dst, int64_t ldd, int64_t rows, int64_t ncopy, DType dt,
                   cudaStream_t stream) {
    if (rows < 0 || ncopy < 0 || lds < ncopy || ldd < 0)
        raise<ShapeError>("copy_channels: rows {} ncopy {} lds {} ldd {}", rows, ncopy, lds, ldd);
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
        raise<ShapeError>("copy_channels: unsupported dtype {}", dtype_name(dt));
    launched("copy_channels");
}

void add_bias_rows(const void* src, DType src_dt, int64_t lds, const float* bias, void* dst, DType dt, int64_t ldd,
                   int64_t rows, int64_t n, cudaStream_t stream) {
    if (rows < 0 || n < 0 || lds < n || ldd < n)
        raise<ShapeError>("add_bias_rows: rows {} n {} lds {} ldd {}", rows, n, lds, ldd);
    if (rows == 0 || n == 0) return;
    dispatch(src_dt, "add_bias_rows", [&](auto s) {
        using S = decltype(s);
        dispatch(dt, "add_bias_rows", [&](auto t) {
            using T = decltype(t);
            add_bias_rows_k<<<blocks_for(rows * n), kThreads, 0, stream>>>(static_cast<const S*>(src), lds, bias,
                                                                            static_cast<T*>(dst), ldd, rows, n);
        });
    });
    launched("add_bias_rows");
}

void transpose(const void* src, DType src_dt, void* dst, DType dt, int64_t B, int64_t M, int64_t N,
               cudaStream_t stream) {
    if (B < 0 || M < 0 || N < 0 || B > 65535)
        raise<ShapeError>("transpose: bad shape [{}, {}, {}]", B, M, N);
    if (B == 0 || M == 0 || N == 0) return;
    const int64_t tiles_m = (M + 31) / 32, tiles_n = (N + 31) / 32;
    if (tiles_m * tiles_n > (int64_t(1) << 31) - 1) raise<ShapeError>("transpose: [{}, {}] too large", M, N);
    const dim3 grid(unsigned(tiles_m * tiles_n), unsigned(B)), block(32, 8);
    dispatch(src_dt, "transpose", [&](auto s) {
        using S = decltype(s);
        dispatch(dt, "transpose", [&](auto t) {
            using T = decltype(t);
            transpose_k<<<grid, block, 0, stream>>>(static_cast<const S*>(src), static_cast<T*>(dst), M, N, tiles_n);
        });
    });
    launched("transpose");
}

void upsample_nearest_2x(const void* x, void* y, DType dt, int64_t B, int64_t H, int64_t W, int64_t C,
                         cudaStream_t stream) {
    if (B < 0 || H < 0 || W < 0 || C < 0) raise<ShapeError>("upsample_nearest_2x: bad shape");
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
        raise<ShapeError>("upsample_nearest_2x: unsupported dtype {}", dtype_name(dt));
    }
    launched("upsample_nearest_2x");
}

void image_to_u8(const void* image, DType dt, uint8_t* out, int64_t B, int64_t C, int64_t H, int64_t W,
                 cudaStream_t stream) {
    if (B < 0 || C < 0 || H < 0 || W < 0) raise<ShapeError>("image_to_u8: bad shape");
    const int64_t n = B * C * H * W;
    if (n == 0) return;
    dispatch(dt, "image_to_u8", [&](auto tag) {
        using T = decltype(tag);
        postprocess_k<<<blocks_for(n), kThreads, 0, stream>>>(static_cast<const T*>(image), out, B, C, H, W);
    });
    launched("image_to_u8");
}

}  // namespace qdit::cuda
