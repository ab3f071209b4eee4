// Fused elementwise / per-row kernels of the Z-Image block on bf16 activations. Each follows the
// CPU op's numerics (backend/cpu/norm.h, rope.h, activation.h): f32 arithmetic, a bf16 rounding
// wherever the CPU op stores, sums of squares in double; int8 outputs follow quant/int8.h
// (s = absmax / 127 in f32, true division, round half to even, clamp ±127; an all-zero row gets
// s = 1). Quantized rows are written with row stride ldq >= k, the columns [k, ldq) set to 0, so a
// K that the int8 GEMM cannot take (K % 16 != 0) can feed it padded with zeros.
//
// All pointers are device pointers; bf16 tensors are passed as void*; row strides in elements.
// Every launcher is asynchronous on `stream` and throws qdit::Error on a launch failure.
#pragma once
#include <cstdint>

#include <cuda_runtime.h>

namespace qdit::cuda {

// One pass per row (token) over the residual stream x [m, k]:
//   1. residual (when y is set), cpu::RMSNorm::add_to: x ← x + gate · rms(y; w_res, eps_res)
//      (gate F32 [k] or null: x ← x + rms(y)); with w_res null a plain add x ← bf16(x + y) (a
//      pre-norm block's residual, as torch adds two bf16 tensors), or with a gate
//      x ← bf16(x + bf16(gate · y)) (cpu::add_gated);
//   2. normalization of (the updated) x: norm = None passes x through, Rms is
//      cpu::RMSNorm::forward[_scaled] (w bf16 [k], scale F32 [k] or null), LayerNorm is
//      cpu::layer_norm (no affine, w unused; scale F32 [k] or null, then shift F32 [k] or null);
//   3. outputs of step 2: bf16 to `out` (or null) and/or int8 to q / qs (or null).
enum class RowNorm { None, Rms, LayerNorm };
struct RowOp {
    void* x = nullptr;
    int64_t ldx = 0;
    const void* y = nullptr;
    int64_t ldy = 0;
    const void* w_res = nullptr;
    float eps_res = 1e-5f;
    const float* gate = nullptr;

    RowNorm norm = RowNorm::None;
    const void* w = nullptr;
    float eps = 1e-5f;
    const float* scale = nullptr;
    const float* shift = nullptr;

    void* out = nullptr;
    int64_t ldo = 0;
    int8_t* q = nullptr;
    float* qs = nullptr;
    int64_t ldq = 0;

    int64_t m = 0, k = 0;
};
void row_op(const RowOp& op, cudaStream_t stream);

// SwiGLU of the fused w1|w3 output h [m, 2k] (a = columns [0, k), b = [k, 2k), row stride ldh):
// g = bf16(bf16(silu(a)) · b), written as bf16 to out (or null) and/or int8 to q / qs (or null).
void swiglu(const void* h, int64_t ldh, int64_t m, int64_t k, void* out, int64_t ldo, int8_t* q, float* qs,
            int64_t ldq, cudaStream_t stream);

// GELU (tanh form, cpu::gelu_tanh) of h [m, k] (row stride ldh): bf16(gelu(h)), written as bf16 to
// out (or null) and/or int8 to q / qs (or null), as swiglu writes.
void gelu_tanh(const void* h, int64_t ldh, int64_t m, int64_t k, void* out, int64_t ldo, int8_t* q, float* qs,
               int64_t ldq, cudaStream_t stream);

// Which dims RoPE rotates together, and with which roundings (freqs hold (cos, sin) of pair i):
//   Interleaved: dims (2i, 2i + 1), as cpu::apply_rope (Z-Image): cos / sin in f32, a·c − b·s and
//                a·s + b·c with each f32 product rounded separately (no fma), one bf16 rounding;
//   Half:        dims (i, i + hd/2), as cpu::apply_rope_half (Llama / Qwen3's rotate_half): cos and
//                sin rounded to bf16 first, each product rounded to bf16, their sum rounded again
//                (torch's three bf16 ops).
enum class RopeLayout { Interleaved, Half };

// In place on the q and k parts of a fused projection: token t's head h of q starts at
// qkv[t·ld + h·hd], of k at qkv[t·ld + k_offset + h·hd]; q has `heads` heads, k has kv_heads
// (0: as many as q; grouped-query attention has fewer, 1 <= kv_heads <= heads). When wq / wk
// (bf16 [hd]) are set each head is RMS-normalized first (cpu::RMSNorm, eps); then rotated by freqs
// F32 [m, hd/2, 2] (cos, sin) in `layout`. hd even, at most 256.
void qk_norm_rope(void* qkv, int64_t ld, int64_t k_offset, int64_t m, int64_t heads, int64_t hd, const void* wq,
                  const void* wk, float eps, const float* freqs, cudaStream_t stream,
                  RopeLayout layout = RopeLayout::Interleaved, int64_t kv_heads = 0);

// out[i, :] = table[ids[i], :] for i < n: rows of a bf16 table [vocab, d] (device), ids int32
// (device, each in [0, vocab): the caller checks them; an id outside is not read but gives a zero
// row), out bf16 with row stride ldo >= d.
void embedding_rows(const void* table, int64_t vocab, int64_t d, const int32_t* ids, int64_t n, void* out,
                    int64_t ldo, cudaStream_t stream);

// out F32 [chunks, items, d] from mod bf16 [items, chunks·d] (chunks <= 32): chunk c is v itself
// when bit c of plain_mask is set (shifts, gates without tanh), else bf16(1 + v) when bit c of
// tanh_mask is 0 and bf16(tanh(v)) when it is 1 (the adaLN scales and gates).
void modulation(const void* mod, int64_t chunks, int64_t d, unsigned tanh_mask, float* out, cudaStream_t stream,
                unsigned plain_mask = 0, int64_t items = 1);

// y = bf16(silu(x)) over n bf16 values.
void silu(const void* x, int64_t n, void* y, cudaStream_t stream);

// Scaled dot-product attention, batch 1, simple kernel (one warp per query and head, online
// softmax in f32, probabilities rounded to bf16 before P·V as the CPU op does).
// q, o: token t's head h at ptr[t·ld + h·hd]; k, v: token t's head g at ptr[t·ld + g·hd] for
// g < kv_heads (0: kv_heads = heads), query head h reading kv head h / (heads / kv_heads)
// (grouped-query attention; heads a multiple of kv_heads). causal: query t sees keys j <= t
// (torch's is_causal, top-left). o may not alias q, k or v. hd ≤ 256.
void attention_simple(const void* q, int64_t ldq, const void* k, int64_t ldk, const void* v, int64_t ldv,
                      void* o, int64_t ldo, int64_t s, int64_t heads, int64_t hd, cudaStream_t stream,
                      int64_t kv_heads = 0, bool causal = false);

}  // namespace qdit::cuda
