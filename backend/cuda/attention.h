// Scaled dot-product attention on the GPU for batch 1 without padding mask (Z-Image's single-item
// forward, the Qwen3 text encoder's valid tokens): o = softmax(q·kᵀ / sqrt(hd)) · v per head, bf16
// in and out, f32 softmax; optionally causal (query t sees keys j <= t, torch's is_causal) and
// grouped-query (kv_heads < heads key/value heads; query head h reads kv head h / (heads / kv_heads)).
// q, o: token t's head h starts at ptr[t·ld + h·hd]; k, v: token t's kv head g at ptr[t·ld + g·hd]
// (so q, k and v can be column blocks of one fused projection, and o a [s, heads·hd] matrix).
// Device pointers, asynchronous on `stream`.
#pragma once
#include <cstdint>

#include <cstddef>

#include <cuda_runtime.h>

#include "core/dtype.h"

namespace qdit::cuda {

enum class AttentionImpl {
    Auto,    // cuDNN's fused flash attention when available and it supports the shape, else Simple
    Cudnn,   // cuDNN SDPA through the cuDNN frontend graph API (throws when unavailable)
    Simple,  // attention_simple (below): slow, for checks and as the fallback
};

// Whether this build has cuDNN and it runs here (the library loads and reports a version).
bool cudnn_attention_available();

// The implementation Auto resolves to, for reports: "cudnn <version>" or "simple".
const char* attention_impl_name();

// cuDNN's attention plans: one per shape (sizes, row strides, mask, padded batch), made on first
// use: read from the plan cache on disk where an earlier process stored it (plan_cache.h), else
// built and stored there. This forgets the plans of this process, so that the next call of each
// shape reads the plan cache or builds again (for the plan cache's tests).
void forget_attention_plans();

// kv_heads 0 means kv_heads = heads; heads must be a multiple of kv_heads. Throws qdit::ShapeError
// on bad arguments, qdit::Error when cuDNN fails (cuDNN needs hd % 8 == 0, hd <= 256, lds % 8 == 0
// and 16-byte aligned pointers). Under Auto a shape for which cuDNN cannot build a plan runs on the
// simple kernel instead (decided once per shape; a warning names the shape on stderr).
void attention(const void* q, int64_t ldq, const void* k, int64_t ldk, const void* v, int64_t ldv, void* o,
               int64_t ldo, int64_t s, int64_t heads, int64_t hd, cudaStream_t stream,
               AttentionImpl impl = AttentionImpl::Auto, int64_t kv_heads = 0, bool causal = false);

// cuDNN's attention of s queries against s_kv keys (batch 1, not causal; arguments as attention()),
// which also writes each query row's softmax statistics: lse f32 [heads, s], row t's head h at
// lse[h·s + t], the natural log of Σ_j exp(q·k_j / sqrt(hd)) over the keys. Returns false without
// launching anything where cuDNN is not available or cannot plan the shape (decided once per shape).
bool attention_with_stats(const void* q, int64_t ldq, const void* k, int64_t ldk, const void* v, int64_t ldv, void* o,
                          int64_t ldo, int64_t s, int64_t s_kv, int64_t heads, int64_t kv_heads, int64_t hd, float* lse,
                          cudaStream_t stream);

// Scaled dot-product attention, batch 1, simple kernel (one warp per query and head, online
// softmax in f32, probabilities rounded to bf16 before P·V as the CPU op does).
// q, o: token t's head h at ptr[t·ld + h·hd]; k, v: token t's head g at ptr[t·ld + g·hd] for
// g < kv_heads (0: kv_heads = heads), query head h reading kv head h / (heads / kv_heads)
// (grouped-query attention; heads a multiple of kv_heads). causal: query t sees keys j <= t
// (torch's is_causal, top-left). o may not alias q, k or v. hd ≤ 256.
void attention_simple(const void* q, int64_t ldq, const void* k, int64_t ldk, const void* v, int64_t ldv,
                      void* o, int64_t ldo, int64_t s, int64_t heads, int64_t hd, cudaStream_t stream,
                      int64_t kv_heads = 0, bool causal = false);

// Single-head attention without mask over L tokens of dim d (the VAE mid blocks, any d), as
// cpu::scaled_dot_product_attention: scores q·kᵀ in f32 (cuBLASLt), s·(1/√d) in f32, p =
// exp(s − max) with the sum in double, p rounded to dt before P·V (f32 accumulation), the output
// o = dt(acc · (1/sum)). q, k, v: token t at ptr[t·ld] (columns of one fused projection); o [L,
// ldo]; dt F32 or BF16. Queries run in chunks whose f32 scores and dt probabilities fit
// `max_scratch_bytes` (from the caching allocator; the default keeps a 1024x1024 image's
// mid-block attention, 16384 tokens, at 25 chunks of 682 queries and 64 MiB: more than the
// Qwen-Image VAE's bands of rows hold). Kernels: spatial_attention.cu.
void attention_one_head(const void* q, const void* k, const void* v, int64_t ld, void* o, int64_t ldo, int64_t L,
                        int64_t d, DType dt, cudaStream_t stream, size_t max_scratch_bytes = size_t(64) << 20);

// A padded batch in one call (cuDNN's padding mask): item b's tokens are rows [b·s, b·s + len[b]) of
// q, k, v and o (row strides as above, items s rows apart); the rows past len[b] are neither keys
// nor queries, and their output rows are unspecified. len: device int32 [batch], values in [1, s]
// (not checked here), read when the work runs. Not causal. Throws qdit::Error when cuDNN is not
// available or cannot build a plan for the shape (no fallback). ops::attention_padded calls
// attention() per item instead, which was faster at Qwen-Image's full size (bench_attention
// compares the two); FP8 attention's padded batch shares this plan code.
void attention_padded(const void* q, int64_t ldq, const void* k, int64_t ldk, const void* v, int64_t ldv, void* o,
                      int64_t ldo, int64_t batch, int64_t s, const int32_t* len, int64_t heads, int64_t kv_heads,
                      int64_t hd, cudaStream_t stream);

// FP8 attention (Hopper; cuDNN's FP8 SDPA): q, k and v are scaled per tensor into E4M3 (x · 448 /
// max |x| over the token rows, saturating), the scores are computed from them in f32, the softmax
// probabilities are stored as E4M3 (· 448) for P·V, and the output is written in bf16 (or, where
// cuDNN does not offer that, in E4M3 scaled by max |v| and converted). Faster than the bf16
// attention at the cost of E4M3's 3 mantissa bits on q, k, v and the probabilities
// (docs/quantization.md has the measured error). qkv: a fused bf16 q|k|v, rows ld elements apart
// (q at column 0, k at heads·hd, v at (heads + kv_heads)·hd); o [batch·s, ldo] bf16. batch items s
// rows apart; len: device int32 [batch] (each in [1, s]) or null (every row a token). Rows past an
// item's length are neither keys nor queries; their output rows are unspecified. Not causal.
// Throws qdit::Error where cuDNN cannot build the plan (no fallback); ld, hd and ldo multiples of 8.
// qk8 (optional): E4M3 rows ld bytes apart whose q and k columns hold every token row's q and k
// already (qk_norm_rope's E4M3 output), with their descales in qk8_scalars[kDescaleQ], [kDescaleK]
// (fp8_qk_descales; kFp8ScalarFloats device floats): then only v is converted, into qk8's v columns.
void attention_fp8(const void* qkv, int64_t ld, void* o, int64_t ldo, int64_t batch, int64_t s, const int32_t* len,
                   int64_t heads, int64_t kv_heads, int64_t hd, cudaStream_t stream, uint8_t* qk8 = nullptr,
                   float* qk8_scalars = nullptr);

// Whether this GPU and this cuDNN run attention_fp8 (compute capability 9.x or 10.x, cuDNN 9).
bool fp8_attention_supported(int device);

// The device scalars attention_fp8 hands cuDNN, by index (attention_fp8.cu writes them).
enum Fp8Scalar : int { kDescaleQ = 0, kDescaleK, kDescaleV, kDescaleS, kScaleS, kScaleO, kScaleOFp8, kAmaxS, kAmaxO, kFp8Scalars };
// The device floats one FP8 attention call works with: the scalars, then fp8_quantize_qkv's 3 amax
// words (and one unused).
constexpr int kFp8ScalarFloats = kFp8Scalars + 4;
// y (E4M3, same layout as qkv) ← qkv [rows, ld] bf16 with per-part scales: columns [0, c1) q,
// [c1, c2) k, [c2, width) v; rows r with len and r % s >= len[r / s] are zeroed. amax: 3 device
// words of scratch; scalars: kFp8Scalars device floats, filled. v_only: the token rows' q and k
// columns of y are left as they are, and so are scalars[kDescaleQ], [kDescaleK].
void fp8_quantize_qkv(const void* qkv, int64_t ld, void* y, int64_t rows, int64_t s, const int32_t* len, int64_t c1,
                      int64_t c2, int64_t width, unsigned* amax, float* scalars, cudaStream_t stream,
                      bool v_only = false);
// The RMS-normalization weights (bf16 [hd] each) of the q and k that qk_norm_rope writes as E4M3 for
// one attention call (one per stream: Qwen-Image's image and text), and the scalars to fill.
struct Fp8QkWeights {
    static constexpr int kMax = 4;
    const void* w[kMax] = {};
    int is_k[kMax] = {};  // 0: a q norm, 1: a k norm
    int count = 0;
    float* scalars = nullptr;
};
// scalars[kDescaleQ], [kDescaleK] ← fixed scales for q and k from their norm weights: a bound of
// |x| after the RMS norm and RoPE (1.02·sqrt(hd)·max |w|) maps to 448. Read on the device (no sync).
void fp8_qk_descales(const Fp8QkWeights& w, int64_t hd, cudaStream_t stream);
// o (bf16, row stride ldo elements) ← y (E4M3 [rows, width], row stride ldy bytes) / scalars[kScaleOFp8].
void fp8_dequantize_output(const void* y, int64_t ldy, void* o, int64_t ldo, int64_t rows, int64_t width,
                           const float* scalars, cudaStream_t stream);

// dst[i] = values[i] for i < n, issued on `stream` as a kernel whose arguments carry the values (so
// a CUDA graph captures them, unlike a copy from pageable host memory).
void set_i32(int32_t* dst, const int32_t* values, int64_t n, cudaStream_t stream);

}  // namespace qdit::cuda
