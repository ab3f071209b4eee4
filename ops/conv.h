// 2-D convolution on channels-last activations, on the context's device: oneDNN on the CPU
// (backend/cpu/conv2d.h), cuDNN on a GPU (backend/cuda/conv.h). Stride 1, symmetric zero padding,
// one group; f32 accumulation, the bias added in f32, one rounding to the activation dtype.
#pragma once
#include <memory>
#include <string>

#include "ops/context.h"

namespace qdit::ops {

class Conv2d {
public:
    Conv2d() = default;
    // weight [O, I, kh, kw] as torch stores it and bias [O] (or undefined): host tensors of any
    // float dtype, rounded to `dtype` (F32 or BF16: the activations' dtype) as a model loaded in
    // that dtype holds them; the bias is then kept in f32. Placed on ctx's device.
    Conv2d(std::string name, const Tensor& weight, const Tensor& bias, int64_t padding, DType dtype,
           const Context& ctx);
    // A causal 3-D convolution (weight [O, I, kt, kh, kw], Wan / Qwen-Image VAE: kt − 1 zero
    // frames padded in front in time, kh / 2 and kw / 2 in space) applied to a single frame
    // without a cache: every kernel slice but the last meets the zero padding, so it is the 2-D
    // convolution with weight[:, :, kt − 1] and padding kh / 2 (kh == kw, odd).
    static Conv2d causal3d_single_frame(std::string name, const Tensor& weight, const Tensor& bias, DType dtype,
                                        const Context& ctx);

    bool defined() const { return impl_ != nullptr; }
    const std::string& name() const;
    int64_t in_channels() const;
    int64_t out_channels() const;
    size_t weight_bytes() const;

    // x [B, H, W, I] in the layer's dtype on ctx's device → [B, H + 2p − kh + 1, W + 2p − kw + 1, O].
    Tensor forward(const Tensor& x, const Context& ctx) const;
    // acc ← acc + forward(x), acc of the output's shape and dtype. BF16: the convolution's output is
    // rounded, then the sum (torch's `conv(x) + acc`). F32 on the CPU: fused into the convolution
    // (oneDNN's sum post-op), one f32 rounding.
    void forward_add(const Tensor& x, Tensor& acc, const Context& ctx) const;

    struct Impl;

private:
    std::shared_ptr<const Impl> impl_;
};

}  // namespace qdit::ops
