// Device helpers shared by the kernels of backend/cuda/*.cu: bf16 rounding, the CPU's SiLU in f32,
// warp reductions, launch checks, and F32 / BF16 element types.
#pragma once
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "core/dtype.h"
#include "core/error.h"

namespace qdit::cuda::kern {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ float rbf(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }
// cpu::silu in f32: x / (1 + e^-x), IEEE division.
__device__ __forceinline__ float silu_f(float x) { return x / (1.0f + expf(-x)); }

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ double warp_sum(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_sumf(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

inline void check_launch(const char* what) {
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) raise<Error>("CUDA launch of {} failed: {}", what, cudaGetErrorString(e));
}

// F32 or BF16 element types (the VAE's kernels): conversions, dtype dispatch, launch sizes.
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
inline void dispatch(DType dt, const char* what, F&& f) {
    if (dt == DType::F32)
        f(float{});
    else if (dt == DType::BF16)
        f(bf16{});
    else
        raise<ShapeError>("{}: F32 or BF16 expected, got {}", what, dtype_name(dt));
}

inline void launched(const char* what) { check_launch(what); }

constexpr int kThreads = 256;
inline unsigned blocks_for(int64_t n, int64_t per_block = kThreads) {
    return unsigned(std::min<int64_t>(std::max<int64_t>(1, (n + per_block - 1) / per_block), int64_t(1) << 30));
}

// 16 bytes of T.
template <typename T>
struct alignas(16) Vec {
    static constexpr int N = 16 / int(sizeof(T));
    T v[N];
};

}  // namespace qdit::cuda::kern
