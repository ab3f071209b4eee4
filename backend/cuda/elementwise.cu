#include "backend/cuda/elementwise.h"

#include <algorithm>
#include <cmath>
#include <type_traits>

#include <cuda_bf16.h>

#include "backend/cuda/bf16_math.cuh"
#include "backend/cuda/block_reduce.cuh"
#include "backend/cuda/kernel_util.cuh"
#include "core/error.h"

namespace qdit::cuda {

namespace {

using namespace kern;

__global__ void embedding_rows_kernel(const bf16* table, int64_t vocab, int64_t d, const int32_t* ids, bf16* out,
                                      int64_t ldo) {
    const int64_t row = blockIdx.x;
    const int32_t id = ids[row];
    const bool ok = id >= 0 && id < vocab;
    const bf16* src = table + int64_t(ok ? id : 0) * d;
    bf16* dst = out + row * ldo;
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) dst[i] = ok ? src[i] : __float2bfloat16_rn(0.f);
}

__global__ void modulation_kernel(const bf16* mod, int64_t items, int64_t chunks, int64_t d, unsigned tanh_mask,
                                  unsigned plain_mask, float* out) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= items * chunks * d) return;
    const float v = __bfloat162float(mod[i]);
    const int64_t b = i / (chunks * d), c = (i / d) % chunks;
    out[(c * items + b) * d + i % d] =
        (plain_mask >> c) & 1u ? v : (tanh_mask >> c) & 1u ? rbf(tanhf(v)) : rbf(1.0f + v);
}

__global__ void silu_kernel(const bf16* x, int64_t n, bf16* y) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float v = __bfloat162float(x[i]);
    y[i] = __float2bfloat16_rn(v / (1.0f + expf(-v)));
}

// One warp per (query, head). Keys go 32 at a time: lane j scores key kb + j against q (held in
// shared memory), then the warp rescales its running output (lane l owns dims l + 32·i) and adds
// the 32 values weighted by their bf16-rounded probabilities. Query head h reads kv head h / group;
// a causal query t stops after key t.

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
__global__ void unscale_k(const S* x, T* y, int64_t n, float scale, float shift) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
        const float xt = round_to<T>(to_f(x[i]));  // latents.to(dtype)
        y[i] = from_f<T>(__fadd_rn(round_to<T>(__fdiv_rn(xt, scale)), shift));
    }
}

// The host's f32_to_bf16 (core/dtype.h) bit for bit, NaN included: round to nearest even, a NaN
// kept quiet with its upper payload.
__device__ __forceinline__ bf16 bf16_as_host(float f) {
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return __ushort_as_bfloat16(uint16_t((u >> 16) | 0x40));
    u += 0x7fffu + ((u >> 16) & 1u);
    return __ushort_as_bfloat16(uint16_t(u >> 16));
}
__device__ __forceinline__ void store_as_host(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store_as_host(bf16* p, int64_t i, float v) { p[i] = bf16_as_host(v); }

// The explicit _rn intrinsics keep nvcc from fusing the multiply and the add, so every operation
// rounds as the host's does.
template <typename V, typename I>
__global__ void euler_step_k(float* x, const V* pos, const V* neg, float guidance, float dt, I* x_in, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
        const float p = to_f(pos[i]);
        const float v = neg ? __fadd_rn(p, __fmul_rn(guidance, __fsub_rn(p, to_f(neg[i])))) : p;
        const float y = __fadd_rn(x[i], __fmul_rn(dt, -v));
        x[i] = y;
        if (x_in) store_as_host(x_in, i, y);
    }
}

// One thread per token row, its values in column order as the host sums them. R rounds to the
// pipeline's dtype (bf16 as the host's f32_to_bf16, or f32 itself).
template <typename V, typename I, bool Bf16>
__global__ void true_cfg_euler_step_k(float* x, const V* pos, const V* neg, int64_t L, int64_t F, float scale,
                                      float delta, I* x_in) {
    const int64_t tok = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
    if (tok >= L) return;
    auto R = [](float v) { return Bf16 ? __bfloat162float(bf16_as_host(v)) : v; };
    const int64_t o = tok * F;
    float ratio = 1.0f;
    if (neg) {
        double cond_sq = 0, comb_sq = 0;
        for (int64_t f = 0; f < F; ++f) {
            const float c = to_f(pos[o + f]), u = to_f(neg[o + f]);
            const float comb = R(__fadd_rn(u, R(__fmul_rn(scale, R(__fsub_rn(c, u))))));
            cond_sq = __dadd_rn(cond_sq, __dmul_rn(double(c), double(c)));
            comb_sq = __dadd_rn(comb_sq, __dmul_rn(double(comb), double(comb)));
        }
        ratio = R(__fdiv_rn(R(float(__dsqrt_rn(cond_sq))), R(float(__dsqrt_rn(comb_sq)))));
    }
    for (int64_t f = 0; f < F; ++f) {
        float v = to_f(pos[o + f]);
        if (neg) {
            const float u = to_f(neg[o + f]);
            v = R(__fmul_rn(R(__fadd_rn(u, R(__fmul_rn(scale, R(__fsub_rn(v, u)))))), ratio));
        }
        const float y = R(__fadd_rn(x[o + f], R(__fmul_rn(delta, v))));
        x[o + f] = y;
        if (x_in) store_as_host(x_in, o + f, y);
    }
}

}  // namespace

void embedding_rows(const void* table, int64_t vocab, int64_t d, const int32_t* ids, int64_t n, void* out,
                    int64_t ldo, cudaStream_t stream) {
    if (n <= 0) return;
    if (vocab <= 0 || d <= 0 || ldo < d || !table || !ids || !out)
        raise<ShapeError>("embedding_rows: table [{}, {}], {} ids, output row stride {}", vocab, d, n, ldo);
    const int threads = int(std::min<int64_t>(256, (d + 31) / 32 * 32));
    embedding_rows_kernel<<<unsigned(n), unsigned(threads), 0, stream>>>(static_cast<const bf16*>(table), vocab, d,
                                                                         ids, static_cast<bf16*>(out), ldo);
    check_launch("embedding_rows");
}

void modulation(const void* mod, int64_t chunks, int64_t d, unsigned tanh_mask, float* out, cudaStream_t stream,
                unsigned plain_mask, int64_t items) {
    const int64_t n = items * chunks * d;
    if (n <= 0) return;
    if (chunks > 32) raise<ShapeError>("modulation: {} chunks (at most 32)", chunks);
    modulation_kernel<<<unsigned((n + 255) / 256), 256, 0, stream>>>(static_cast<const bf16*>(mod), items, chunks, d,
                                                                       tanh_mask, plain_mask, out);
    check_launch("modulation");
}

void silu(const void* x, int64_t n, void* y, cudaStream_t stream) {
    if (n <= 0) return;
    silu_kernel<<<unsigned((n + 255) / 256), 256, 0, stream>>>(static_cast<const bf16*>(x), n,
                                                                 static_cast<bf16*>(y));
    check_launch("silu");
}

void add_inplace(void* x, const void* r, int64_t n, DType dt, cudaStream_t stream) {
    if (n <= 0) return;
    dispatch(dt, "add_inplace", [&](auto tag) {
        using T = decltype(tag);
        if (n % Vec<T>::N == 0 && aligned16(x) && aligned16(r)) {
            const int64_t nv = n / Vec<T>::N;
            add_vec_k<<<blocks_for(nv), kThreads, 0, stream>>>(static_cast<Vec<T>*>(x), static_cast<const Vec<T>*>(r),
                                                               nv);
        } else {
            add_k<<<blocks_for(n), kThreads, 0, stream>>>(static_cast<T*>(x), static_cast<const T*>(r), n);
        }
    });
    launched("add_inplace");
}

void div_add(const void* x, DType src_dt, void* y, DType dt, int64_t n, float scale, float shift,
             cudaStream_t stream) {
    if (n <= 0) return;
    dispatch(src_dt, "div_add", [&](auto s) {
        using S = decltype(s);
        dispatch(dt, "div_add", [&](auto t) {
            using T = decltype(t);
            unscale_k<<<blocks_for(n), kThreads, 0, stream>>>(static_cast<const S*>(x), static_cast<T*>(y), n, scale,
                                                              shift);
        });
    });
    launched("div_add");
}

void euler_step(float* x, const void* pos, const void* neg, DType v_dt, float guidance, float dt, void* x_in,
                DType in_dt, int64_t n, cudaStream_t stream) {
    if (n <= 0) return;
    dispatch(v_dt, "euler_step", [&](auto v) {
        using V = decltype(v);
        dispatch(in_dt, "euler_step", [&](auto t) {
            using I = decltype(t);
            euler_step_k<<<blocks_for(n), kThreads, 0, stream>>>(x, static_cast<const V*>(pos),
                                                                 static_cast<const V*>(neg), guidance, dt,
                                                                 static_cast<I*>(x_in), n);
        });
    });
    launched("euler_step");
}

void true_cfg_euler_step(float* x, const void* pos, const void* neg, DType v_dt, int64_t L, int64_t F, float scale,
                         float delta, DType dt, void* x_in, DType in_dt, cudaStream_t stream) {
    if (L <= 0 || F <= 0) return;
    dispatch(v_dt, "true_cfg_euler_step", [&](auto v) {
        using V = decltype(v);
        dispatch(in_dt, "true_cfg_euler_step", [&](auto t) {
            using I = decltype(t);
            dispatch(dt, "true_cfg_euler_step", [&](auto r) {
                constexpr bool kBf16 = !std::is_same_v<decltype(r), float>;
                true_cfg_euler_step_k<V, I, kBf16><<<blocks_for(L, 128), 128, 0, stream>>>(
                    x, static_cast<const V*>(pos), static_cast<const V*>(neg), L, F, scale, delta,
                    static_cast<I*>(x_in));
            });
        });
    });
    launched("true_cfg_euler_step");
}

}  // namespace qdit::cuda
