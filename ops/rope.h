// Per-head q/k normalization and rotary position embedding on a fused q|k|v projection.
#pragma once
#include <memory>
#include <vector>

#include "ops/attention.h"
#include "ops/context.h"

namespace qdit::ops {

// Which dims a rotation pairs: (2i, 2i + 1), diffusers' complex form (Z-Image, Qwen-Image), or
// (i, i + head_dim/2), transformers' rotate_half (Llama, Qwen3). Numerics: backend/cpu/rope.h,
// backend/cpu/rope_half.h.
enum class RopeLayout { Interleaved, Half };

// The rotate-half RoPE table of one position per token → host F32 [n, head_dim/2, 2] of
// (cos, sin) of pos · ω_k, ω_k = 1 / theta^(2k / head_dim), in f32 as transformers computes them.
Tensor rope_half_table(double theta, int64_t head_dim, const std::vector<int64_t>& pos);

// The multi-axis complex RoPE table as diffusers' Qwen-Image builds it, all in f32: axis a of
// axes_dims[a] dims gives ω_k = 1 / theta^(2k / d_a) and the angles p_a · ω_k (p_a any integer,
// negative included), axes concatenated. pos: n tokens × axes positions, row-major → host F32
// [n, Σd_a / 2, 2] of (cos, sin).
Tensor rope_table(double theta, const std::vector<int64_t>& axes_dims, const std::vector<int64_t>& pos);

// The multi-axis complex RoPE table of diffusers' Z-Image / Lumina RopeEmbedder: ω_k in f64, each
// angle p_a · ω_k rounded to f32 before cos / sin; positions on axis a in [0, axes_lens[a]), the
// cos / sin precomputed per position when the table is made (backend/cpu/rope.h).
class AxesRope {
public:
    AxesRope() = default;
    AxesRope(double theta, std::vector<int64_t> axes_dims, std::vector<int64_t> axes_lens);
    // pos: n tokens × axes positions, row-major → host F32 [n, Σd_a / 2, 2] of (cos, sin).
    Tensor table(const std::vector<int64_t>& pos) const;

private:
    std::shared_ptr<const void> impl_;
};

// In place on qkv [n, (heads + 2·kv_heads)·head_dim] (q's heads, then k's, then v's; F32 or BF16):
// every head of q and of k is RMS-normalized over head_dim (weights wq, wk [head_dim] of qkv's
// dtype, eps; both undefined: no norm) and rotated in `layout` by freqs F32 [n, head_dim/2, 2]
// (cos, sin) of its token. v is untouched.
// e4m3 (FP8 attention, ops/attention.h): q and k go to e4m3->y (same rows and columns, E4M3 at its
// fixed scales) instead of back into qkv, which keeps its q and k as they were. CUDA, bf16, with
// both norm weights and the Interleaved layout.
void qk_rms_norm_rope(Tensor& qkv, int64_t heads, int64_t kv_heads, int64_t head_dim, const Tensor& wq,
                      const Tensor& wk, float eps, const Tensor& freqs, RopeLayout layout, const Context& ctx,
                      const Fp8Qk* e4m3 = nullptr);

}  // namespace qdit::ops
