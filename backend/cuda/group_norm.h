// GroupNorm (+ SiLU) of channels-last activations on the GPU (ops::group_norm), following
// backend/cpu/group_norm.h: f32 arithmetic, the same rounding points and operation order (no FMA
// contraction); only CUDA's expf (within 2 ulp) and the order of the double sums differ.
// Device pointers; asynchronous on `stream`; qdit::Error on a launch failure.
#pragma once
#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

#include "core/dtype.h"

namespace qdit::cuda {

// GroupNorm over channels-last x [B, L, C] (groups runs of C / groups channels, normalised over
// all L positions), as cpu::group_norm: mean and biased variance in double, scale = f32(rstd·w),
// shift = f32(b − mean·rstd·w), y = dt(x·scale + shift); with silu, y = dt(v / (1 + exp(−v)))
// where v = dt(x·scale + shift). weight, bias F32 [C]. y may alias x.
void group_norm(const void* x, void* y, DType dt, int64_t B, int64_t L, int64_t C, int64_t groups,
                const float* weight, const float* bias, float eps, bool silu, cudaStream_t stream);

}  // namespace qdit::cuda
