// CUDA int8 W8A8 GEMM with the dequantization fused in the epilogue (the contract of quant/int8.h).
//
//   acc[m, n] = sum_k a[m, k] * w[n, k]                       (int32, exact)
//   y[m, n]   = bf16_rn( fmaf(float(acc) * a_scale[m], w_scale[n], bias[n]) )
//
// a: int8 activations [M, K], row stride lda (elements); w: int8 weights [N, K], row stride ldw;
// a_scale: F32 [M] (per token); w_scale: F32 [N] (per output channel); bias: F32 [N] or null;
// y: bf16 [M, N], row stride ldy. All pointers are device pointers.
//
// Kernels: on Hopper (sm_90a) CUTLASS 3.x TMA + wgmma warp-specialized kernels with an epilogue
// visitor tree; on Ampere/Ada (sm_80/sm_86/sm_89) a CUTLASS 2.x mma.sync kernel with the same
// epilogue. Both follow the float order of the CPU kernel (float(acc) * s_x, then one fma), so the
// result matches backend/cpu's bf16 output bit for bit.
//
// Alignment (the kernels move 16-byte vectors; TMA needs 16-byte aligned rows):
//   K % 16 == 0, N % 8 == 0, lda % 16 == 0, ldw % 16 == 0, ldy % 8 == 0,
//   a, w 16-byte aligned, y 16-byte aligned, a_scale / w_scale / bias 16-byte aligned.
//   M is free (any M >= 1). Anything else is refused with a qdit::ShapeError before any launch.
#pragma once
#include <cstdint>
#include <vector>

#include <cuda_runtime.h>

namespace qdit::cuda {

// Which kernel runs. Auto picks by architecture and shape; the others exist for benchmarks/tests
// (a kernel that was not built for the running GPU throws qdit::Error).
enum class Int8GemmKernel {
    Auto,
    Sm90_128x128_Pingpong,     // 128x128x128 tile, cluster 2x1, ping-pong consumers
    Sm90_128x256_Cooperative,  // 128x256x128 tile, cluster 2x1, cooperative consumers
    Sm90_256x128_Cooperative,  // 256x128x128 tile, cluster 1x2, cooperative consumers
    Sm90_128x128_Pingpong_C1x2,   // 128x128x128 tile, cluster 1x2, ping-pong
    Sm90_128x128x256_Pingpong,    // 128x128x256 tile (K step 256), cluster 2x1, ping-pong
    Sm90_128x256_StreamK,      // 128x256x128 tile, cluster 2x1, cooperative, stream-K scheduler
    Sm90_64x64x256_C1x8,       // 64x64x256 tile, cluster 1x8, one consumer warpgroup (few rows)
    Sm90_64x128x256_C1x4,      // 64x128x256 tile, cluster 1x4, one consumer warpgroup (few rows)
    Sm80_128x128,              // CUTLASS 2.x mma.sync (Ampere / Ada; newer GPUs when built as PTX)
};

// Every kernel above but Auto, in that order (tests and benchmarks run each that is available).
const std::vector<Int8GemmKernel>& int8_gemm_kernels();

const char* int8_gemm_kernel_name(Int8GemmKernel k);

// True when `k` was compiled into this build and can run on the current device.
bool int8_gemm_kernel_available(Int8GemmKernel k);

// Tile-scheduler knobs of the Hopper kernels (0 = CUTLASS's heuristic); for benchmarks.
struct Int8GemmTuning {
    int swizzle = 0;  // max_swizzle_size: 1, 2, 4 or 8
    int raster = 0;   // 1: along M, 2: along N
};

// y = bf16(fma(float(a·wᵀ) * a_scale, w_scale, bias)). Throws qdit::ShapeError on bad shapes or
// alignment, qdit::Error on a failed launch or when no kernel fits the device. Asynchronous on
// `stream` (no synchronization).
void int8_gemm_bf16(const int8_t* a, int64_t lda, const float* a_scale, const int8_t* w, int64_t ldw,
                    const float* w_scale, const float* bias, void* y, int64_t ldy, int64_t m, int64_t n,
                    int64_t k, cudaStream_t stream, Int8GemmKernel kernel = Int8GemmKernel::Auto,
                    Int8GemmTuning tuning = {});

namespace detail {
// Launchers of the individual kernels (defined in int8_gemm_sm90_*.cu / int8_gemm_sm80.cu);
// arguments already validated. Return a message on failure, nullptr on success.
struct Int8GemmArgs {
    const int8_t* a;
    int64_t lda;
    const float* a_scale;
    const int8_t* w;
    int64_t ldw;
    const float* w_scale;
    const float* bias;
    void* y;
    int64_t ldy;
    int m, n, k;
    int device;
    int sm_count;
    cudaStream_t stream;
    Int8GemmTuning tuning;
};
const char* run_int8_gemm_sm90_128x128(const Int8GemmArgs& p);
const char* run_int8_gemm_sm90_128x256(const Int8GemmArgs& p);
const char* run_int8_gemm_sm90_256x128(const Int8GemmArgs& p);
const char* run_int8_gemm_sm90_128x128_c1x2(const Int8GemmArgs& p);
const char* run_int8_gemm_sm90_128x128x256(const Int8GemmArgs& p);
const char* run_int8_gemm_sm90_128x256_streamk(const Int8GemmArgs& p);
const char* run_int8_gemm_sm90_64x64x256_c1x8(const Int8GemmArgs& p);
const char* run_int8_gemm_sm90_64x128x256_c1x4(const Int8GemmArgs& p);
const char* run_int8_gemm_sm80_128x128(const Int8GemmArgs& p);
}  // namespace detail

}  // namespace qdit::cuda
