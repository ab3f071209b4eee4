// RMSNorm (diffusers numerics) and LayerNorm without affine parameters.
//
// Activations are F32 or BF16; everything is computed in f32 and BF16 results
// are rounded where PyTorch rounds them (see each function). Modulation
// vectors (`scale`, `gate`) are F32 [B, D] holding values already in the
// activation's precision; row r of x [B, L, D] uses row r / L of them.
#pragma once
#include <string>

#include "core/tensor.h"

namespace qdit::cpu {

class RMSNorm {
public:
    RMSNorm() = default;
    // weight [D] F32 or BF16: the activations given to forward must have its dtype.
    RMSNorm(std::string name, Tensor weight, float eps);

    const std::string& name() const { return name_; }
    int64_t dim() const { return dim_; }

    // y = x · rsqrt(mean(x²) + eps) · weight over the last dim. The mean is of
    // the f32 squares; x · rsqrt is f32; with a BF16 weight that product is
    // rounded to bf16 before the weight multiply, whose result is rounded again.
    Tensor forward(const Tensor& x) const;
    // forward(x) · scale (rounded again for BF16); x [B, L, D].
    Tensor forward_scaled(const Tensor& x, const Tensor& scale) const;
    // x ← x + gate · forward(y), each product and the sum rounded for BF16;
    // gate undefined means x ← x + forward(y). x, y [B, L, D].
    void add_to(Tensor& x, const Tensor& y, const Tensor& gate) const;

private:
    std::string name_;
    Tensor weight_;
    int64_t dim_ = 0;
    float eps_ = 1e-5f;
};

// nn.LayerNorm(elementwise_affine=False) over the last dim: mean and variance
// (biased) in f32 or better, y = (x − mean) · rsqrt(var + eps), rounded once to
// x's dtype; then, when `scale` is given (F32 [B, D], x [B, L, D]), y · scale
// rounded again, as torch's `norm(x) * scale` does; then, when `shift` is given
// (like scale), + shift rounded again (`norm(x) * scale + shift`).
Tensor layer_norm(const Tensor& x, float eps, const Tensor& scale = Tensor(), const Tensor& shift = Tensor());

}  // namespace qdit::cpu

namespace qdit::cpu {

// The channel RMS norm of the Qwen-Image / Wan VAE (QwenImageRMS_norm, no bias) on channels-last
// x [..., C] (F32 or BF16): each position's channel vector v becomes
//   y = ((v / max(‖v‖₂, eps)) · sqrt(C)) · gamma
// with ‖v‖₂ from a double sum of the f32 squares rounded to f32 (torch takes it in f32 for both
// dtypes), and each of the three operations rounded to x's dtype, as torch's F.normalize(...).to(dtype),
// `* scale` and `* gamma` are. gamma: F32 [C] holding values of x's precision. With silu, the result
// is then silu(y) rounded once more (the decoder's norm → SiLU pairs).
Tensor channel_rms_norm(const Tensor& x, const Tensor& gamma, float eps, bool silu);

}  // namespace qdit::cpu
