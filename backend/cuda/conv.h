// 2-D convolution on the GPU through cuDNN (cudnn-frontend graph API): stride 1, symmetric zero
// padding, one group, channels-last activations [B, H, W, C] in F32 or BF16.
//
//   y[b, i, j, o] = dt( Σ_{c, u, v} x[b, i+u−p, j+v−p, c] · w[o, c, u, v] + bias[o] )
//
// f32 accumulation, the bias added in f32, one rounding to the activation dtype when stored (as
// cpu::Conv2d on the CPU does). Weights are kept on the device in the activation dtype in cuDNN's
// channels-last filter layout [O, kh, kw, I].
//
// Channel padding: cuDNN's NHWC kernels want channel counts that are a multiple of 8 (16-byte
// vectors of bf16). A layer whose I or O is not (the VAE's conv_in reads latent_channels = 4 in
// diffusers' defaults, conv_out writes 3 channels) keeps zero-padded weights [Op, kh, kw, Ip] and
// bias, copies its input into a zero-padded [B, H, W, Ip] buffer and its output out of a
// [B, Ho, Wo, Op] one; the padding adds exact zeros, so the result is the unpadded convolution's.
//
// Plans: one cuDNN graph per (device, dtype, B, H, W, I, O, k, padding, bias), built on first use
// and shared by every layer of that shape. The graph fuses the bias add into the convolution
// (conv_fprop → pointwise ADD, f32 intermediate) where cuDNN supports it; otherwise the
// convolution writes f32 and a kernel adds the bias and rounds (same rounding points), and only
// if cuDNN has no engine for an f32 output either, it writes the activation dtype and the bias is
// added after (a second rounding in BF16). Engines are chosen by cuDNN's heuristics among those
// without reduced-precision reduction, down-converted inputs, FFT or Winograd transforms, or
// non-deterministic reductions; for F32 also without tensor cores (no TF32), so F32 is true f32
// arithmetic. Only when no such engine exists are those restrictions dropped (plan_info says so).
//
// Building a plan takes 0.1 to 0.9 s for the fused bf16 graphs (cuDNN compiles those kernels at
// run time), so the first decode of a new image size pays for about fifteen of them: 3.5 to 7.3 s
// for the FLUX VAE at 1024x1024 on a fresh H100 machine (three runs). Trying the engines without
// runtime compilation first did not help (5.1 s in one run). So built plans are kept on disk and
// read back by the next process instead of being built (plan_cache.h, which also counts them).
//
// Without cuDNN in the build every call throws qdit::Error.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include <cuda_runtime.h>

#include "backend/cuda/device_tensor.h"
#include "core/tensor.h"

namespace qdit::cuda {

// Whether this build has cuDNN and it runs here (version 9 or later).
bool cudnn_conv_available();

// Forgets this process's convolution plans, so that the next use of each shape reads the plan
// cache or builds its plan again (for the plan cache's tests).
void forget_conv_plans();

class Conv2d {
public:
    Conv2d() = default;
    // weight [O, I, kh, kw] as torch stores it (host, any float dtype; rounded to `dtype`), bias
    // [O] (host, any float dtype, kept as f32) or undefined; dtype is the activation dtype (F32 or
    // BF16). Uploads the weights on `stream`. ShapeError naming `name` on bad shapes.
    Conv2d(std::string name, const Tensor& weight, const Tensor& bias, int64_t padding, DType dtype,
           cudaStream_t stream = nullptr);

    bool defined() const { return impl_ != nullptr; }
    const std::string& name() const;
    int64_t in_channels() const;
    int64_t out_channels() const;
    DType dtype() const;
    size_t weight_bytes() const;

    // x [B, H, W, I] in dtype() on the device → [B, H + 2p − kh + 1, W + 2p − kw + 1, O].
    // Asynchronous on `stream`. ShapeError naming the layer on a bad input; qdit::Error when
    // cuDNN has no plan or fails.
    DTensor forward(const DTensor& x, cudaStream_t stream) const;

    // Which plan runs the input shape [B, H, W, I] (building it if needed): "fused bias" /
    // "f32 output + bias kernel" / "output + bias kernel", the cuDNN engine name, "relaxed
    // numerics" when the restrictions above had to be dropped, and how long the build took.
    std::string plan_info(int64_t B, int64_t H, int64_t W) const;

    struct Impl;

private:
    std::shared_ptr<const Impl> impl_;
};

}  // namespace qdit::cuda
