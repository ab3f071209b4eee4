// Block-wide reductions for the row kernels (one block per row): every thread gets the result.
// The warps' partials are combined in warp order, after a warp shuffle tree, so a sum is the same
// for every launch of the same block size. The slots of absent warps hold the identity, so the
// MaxWarps reads need no loop over the warp count. The leading barrier lets the one shared slot
// array of an instantiation serve consecutive reductions.
#pragma once
#include <cuda_runtime.h>

namespace qdit::cuda {

struct SumOp {
    template <typename T>
    __device__ T operator()(T a, T b) const { return a + b; }
};
struct MaxOp {
    __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// For blocks of at most MaxWarps warps (blockDim.x <= 32 · MaxWarps).
template <int MaxWarps, typename T, typename Op>
__device__ __forceinline__ T block_reduce(T v, T identity, Op op) {
    __shared__ T part[MaxWarps];
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();
    const int warp = int(threadIdx.x >> 5), nw = int(blockDim.x + 31) >> 5;
    if ((threadIdx.x & 31) == 0) part[warp] = v;
    if (int(threadIdx.x) >= nw && threadIdx.x < MaxWarps) part[threadIdx.x] = identity;
    __syncthreads();
    T r = part[0];
#pragma unroll
    for (int i = 1; i < MaxWarps; ++i) r = op(r, part[i]);
    return r;
}

// Σ v over the block (double, in the order above) and max v over the block (v >= 0: identity 0).
template <int MaxWarps>
__device__ __forceinline__ double block_sum(double v) {
    return block_reduce<MaxWarps>(v, 0.0, SumOp{});
}
template <int MaxWarps>
__device__ __forceinline__ float block_max(float v) {
    return block_reduce<MaxWarps>(v, 0.f, MaxOp{});
}

}  // namespace qdit::cuda
