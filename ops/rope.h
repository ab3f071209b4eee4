// Per-head q/k normalization and rotary position embedding on a fused q|k|v projection.
#pragma once
#include <vector>

#include "ops/context.h"

namespace qdit::ops {

// The rotate-half RoPE table of one position per token → host F32 [n, head_dim/2, 2] of
// (cos, sin) of pos · ω_k, ω_k = 1 / theta^(2k / head_dim), in f32 as transformers computes them.
Tensor rope_half_table(double theta, int64_t head_dim, const std::vector<int64_t>& pos);

// In place on qkv [n, (heads + 2·kv_heads)·head_dim] (q's heads, then k's, then v's; F32 or BF16):
// every head of q and of k is RMS-normalized over head_dim (weights wq, wk [head_dim] of qkv's
// dtype, eps) and rotated in the rotate-half layout (transformers' Llama / Qwen numerics,
// backend/cpu/rope_half.h) by freqs F32 [n, head_dim/2, 2] (cos, sin) of its token. v is untouched.
void qk_rms_norm_rope_half(Tensor& qkv, int64_t heads, int64_t kv_heads, int64_t head_dim, const Tensor& wq,
                           const Tensor& wk, float eps, const Tensor& freqs, const Context& ctx);

}  // namespace qdit::ops
