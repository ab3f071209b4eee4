// Scaled dot-product attention over a fused q|k|v projection.
#pragma once
#include "ops/context.h"

namespace qdit::ops {

// qkv [batch·L, (heads + 2·kv_heads)·head_dim] (F32 or BF16; item b's tokens are rows
// [b·L, (b + 1)·L)) → [batch·L, heads·head_dim] of its dtype: softmax(q·kᵀ / sqrt(head_dim))·v per
// item and head, query head h reading kv head h / (heads / kv_heads); causal: token i sees keys
// j <= i of its item; key_mask U8 [batch, L] (host), nonzero on keys that may be seen, or undefined
// (a query that sees no key gets zeros). Numerics: backend/cpu/attention.h.
// On CUDA the key mask is not implemented: a masked batch is refused (run its items unpadded).
Tensor attention(const Tensor& qkv, int64_t batch, int64_t heads, int64_t kv_heads, int64_t head_dim, bool causal,
                 const Tensor& key_mask, const Context& ctx);

}  // namespace qdit::ops
