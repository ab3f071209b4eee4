// Scaled dot-product attention on the CPU (torch SDPA semantics, no dropout,
// not causal), multi-threaded over batch × heads × query blocks.
#pragma once
#include "core/tensor.h"

namespace qdit::cpu {

// q [B, Lq, H, D], k and v [B, Lk, Hkv, D] with H a multiple of Hkv (query
// head h uses key/value head h / (H / Hkv), grouped-query attention), all F32
// or all BF16 → [B, Lq, H, D] of the same dtype; softmax(q·kᵀ / sqrt(D)) · v
// per batch item and head.
// key_mask: U8 [B, Lk], nonzero where a key may be attended to (batch
// padding), or undefined for none. causal: query i sees only keys j <= i
// (torch's is_causal, top-left aligned). A query whose keys are all masked gets 0.
//
// Numerics follow torch's CPU flash-attention kernel: scores, softmax and the
// weighted sum in f32; for BF16 the unnormalised probabilities exp(s − max)
// are rounded to bf16 before they multiply v (the sum that normalises them
// is not), and the output is rounded once.
Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor& key_mask = Tensor(), bool causal = false);

}  // namespace qdit::cpu
