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
// Sequence parallelism (ctx.sequence_parallel()): qkv is this rank's block of one item's tokens
// (rank j holds tokens [j·L, (j + 1)·L) of world·L), and the result is attention over all of the
// item's tokens for this rank's rows (Ulysses: two all-to-alls through ctx.comm; collective). One
// item, not causal, no mask, as many kv heads as heads.
Tensor attention(const Tensor& qkv, int64_t batch, int64_t heads, int64_t kv_heads, int64_t head_dim, bool causal,
                 const Tensor& key_mask, const Context& ctx);

// FP8 attention (AttentionImpl::Fp8) with q and k converted by their producer: qk_rms_norm_rope
// writes them into y as E4M3 (ops/rope.h) instead of back into the bf16 q|k|v, with fixed scales
// from the norm weights, which saves the attention's own passes over them; the attention then
// converts v only. y: F8_E4M3 [rows, (heads + 2·kv_heads)·head_dim] laid out as the q|k|v; scalars:
// the device scales (backend/cuda/attention.h).
struct Fp8Qk {
    Tensor y, scalars;
    Fp8Qk slice_rows(int64_t begin, int64_t end) const { return {y.slice_rows(begin, end), scalars}; }
    // New rows at the same scales (another stream's, to be copied into y's rows with copy_rows).
    Fp8Qk like(int64_t rows, const Context& ctx) const;
};
// For a q|k|v of `rows` rows whose q heads are RMS-normalized by the weights wq and k heads by wk
// (one [head_dim] weight per stream that writes rows, bf16): scale 448 / (1.02·sqrt(head_dim)·max |w|),
// a bound of |q|, |k| after the norm and RoPE. CUDA only; asynchronous.
Fp8Qk fp8_qk(int64_t rows, int64_t width, const std::vector<Tensor>& wq, const std::vector<Tensor>& wk,
             int64_t head_dim, const Context& ctx);

// A batch of items of different lengths in one call: qkv as above with L = rows / batch; item b's
// tokens are rows [b·L, b·L + lengths[b]) (1 <= lengths[b] <= L), the rows past it are padding:
// neither keys nor queries, zero in the output. Not causal. Results equal attention() over each
// item's tokens alone, which is how the CPU and CUDA's bf16 attention run it (one call per item).
// FP8 attention runs the batch in one call with cuDNN's padding mask, whose kernel reads the padding
// rows: there they must hold zeros (zero_rows), qk's too; stale values changed the items' outputs
// (an H100 with cuDNN 9.14, head_dim 24; NaN or Inf there would spread). qk (FP8 attention only):
// the q and k of every token row already in qk->y, qkv's q and k columns not read.
Tensor attention_padded(const Tensor& qkv, const std::vector<int64_t>& lengths, int64_t heads, int64_t kv_heads,
                        int64_t head_dim, const Context& ctx, const Fp8Qk* qk = nullptr);
// The same, written as `out` asks (the input spec of the Linear that reads it: dense rows and / or
// their per-token int8 quantization; on the CPU the dense rows only, which the CPU's Linear
// quantizes itself). Rows past an item's length are zero in the dense rows and not written in the
// int8 rows. Where CUDA's bf16 attention also quantizes (out.int8), an item of at least
// kZeroKeysFrom tokens whose length is not a multiple of 128 runs against zero key and value rows
// up to that multiple, when its padding has room for them (they are written into qkv's padding
// rows): cuDNN's kernel is slower for other key counts (bench/cuda/NOTES.md, "The joint
// attention's key count"). Their weight is then taken back out of each row and head by the
// softmax statistics in the quantization pass (backend/cuda/row.h, drop_zero_keys): the same
// attention up to one more bf16 rounding, as long as a row's scores are not all far below zero.
inline constexpr int64_t kZeroKeysFrom = 1024;
Activation attention_padded(const Tensor& qkv, const std::vector<int64_t>& lengths, int64_t heads, int64_t kv_heads,
                            int64_t head_dim, const ActivationSpec& out, const Context& ctx, const Fp8Qk* qk = nullptr);

// Whether ctx runs AttentionImpl::Fp8 (ops/context.h): a GPU of compute capability 9.x or 10.x
// with cuDNN 9; never the CPU.
bool fp8_attention_available(const Context& ctx);

// Single-head attention over the positions of an image (the VAE mid blocks): qkv [batch·L, 3·C]
// (F32 or BF16; columns q | k | v, item b's positions are rows [b·L, (b + 1)·L)) → [batch·L, C]:
// softmax(q·kᵀ / sqrt(C))·v per item, no mask, any C (the head is the whole channel vector).
// Numerics: backend/cpu/attention.h; on a GPU backend/cuda/attention.h's attention_one_head
// (same rounding points, f32 GEMMs in another order).
Tensor spatial_attention(const Tensor& qkv, int64_t batch, const Context& ctx);

}  // namespace qdit::ops
