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
// `max_scratch_bytes` (from the caching allocator). Kernels: spatial_attention.cu.
void attention_one_head(const void* q, const void* k, const void* v, int64_t ld, void* o, int64_t ldo, int64_t L,
                        int64_t d, DType dt, cudaStream_t stream, size_t max_scratch_bytes = size_t(1) << 30);

// A padded batch in one call (cuDNN's padding mask): item b's tokens are rows [b·s, b·s + len[b]) of
// q, k, v and o (row strides as above, items s rows apart); the rows past len[b] are neither keys
// nor queries, and their output rows are unspecified. len: device int32 [batch], values in [1, s]
// (not checked here), read when the work runs. Not causal. Throws qdit::Error when cuDNN is not
// available or cannot build a plan for the shape (no fallback).
void attention_padded(const void* q, int64_t ldq, const void* k, int64_t ldk, const void* v, int64_t ldv, void* o,
                      int64_t ldo, int64_t batch, int64_t s, const int32_t* len, int64_t heads, int64_t kv_heads,
                      int64_t hd, cudaStream_t stream);

// dst[i] = values[i] for i < n, issued on `stream` as a kernel whose arguments carry the values (so
// a CUDA graph captures them, unlike a copy from pageable host memory).
void set_i32(int32_t* dst, const int32_t* values, int64_t n, cudaStream_t stream);

}  // namespace qdit::cuda
