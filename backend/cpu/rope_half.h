// Rotary position embedding in the rotate-half (GPT-NeoX) layout of
// transformers' Llama / Qwen2 / Qwen3 models: dim k is paired with dim
// k + head_dim/2, both rotated by the angle pos · ω_k with
// ω_k = 1 / theta^(2k / head_dim).
#pragma once
#include <vector>

#include "core/tensor.h"

namespace qdit::cpu {

class RotaryHalf {
public:
    RotaryHalf() = default;
    RotaryHalf(double theta, int64_t head_dim);

    int64_t head_dim() const { return head_dim_; }

    // One position per token → F32 [N, head_dim/2, 2] holding (cos, sin) of
    // pos · ω_k, all in f32 as transformers' default rope computes them
    // (ω_k = 1 / theta^(f32(2k) / head_dim) in f32, the angle an f32 product).
    Tensor freqs(const std::vector<int64_t>& pos) const;

private:
    int64_t head_dim_ = 0;
    std::vector<float> inv_freq_;
};

// x [B, L, H, head_dim] F32 or BF16, rotated in place with freqs [B, L,
// head_dim/2, 2] (same for every head): x·cos + rotate_half(x)·sin where
// rotate_half(x) = [−x2, x1]. For BF16, cos and sin are rounded to bf16 first
// (transformers casts them to the activation dtype) and each product and the
// sum are rounded, as torch's three bf16 ops are.
void apply_rope_half(Tensor& x, const Tensor& freqs);

}  // namespace qdit::cpu
