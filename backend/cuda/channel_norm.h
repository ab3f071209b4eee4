// The channel RMS norm of channels-last image activations (the Qwen-Image / Wan VAE's RMS_norm) on
// the GPU: cpu::channel_rms_norm's arithmetic (backend/cpu/norm.h), one block per position.
#pragma once
#include <cstdint>

#include <cuda_runtime.h>

#include "core/dtype.h"

namespace qdit::cuda {

// y[r, c] = silu?(bf16/f32 rounded: ((x / max(‖x_r‖₂, eps)) · sqrt(C)) · gamma[c]) for rows r < n of
// x [n, C] (dtype F32 or BF16, device), gamma F32 [C] (device). Asynchronous on `stream`.
void channel_rms_norm(const void* x, void* y, int64_t n, int64_t C, DType dtype, const float* gamma, float eps,
                      bool silu, cudaStream_t stream);

}  // namespace qdit::cuda
