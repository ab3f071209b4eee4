// Scaled dot-product attention on the GPU for batch 1 without mask (Z-Image's single-item
// forward): o = softmax(q·kᵀ / sqrt(hd)) · v per head, bf16 in and out, f32 softmax.
// q, k, v, o: token t's head h starts at ptr[t·ld + h·hd] (so q, k and v can be column blocks of
// one fused projection, and o a [s, heads·hd] matrix). Device pointers, asynchronous on `stream`.
#pragma once
#include <cstdint>

#include <cuda_runtime.h>

namespace qdit::cuda {

enum class AttentionImpl {
    Auto,    // cuDNN's fused flash attention when available, else Simple
    Cudnn,   // cuDNN SDPA through the cuDNN frontend graph API (throws when unavailable)
    Simple,  // attention_simple (zimage_kernels.h): slow, for checks and as the fallback
};

// Whether this build has cuDNN and it runs here (the library loads and reports a version).
bool cudnn_attention_available();

// The implementation Auto resolves to, for reports: "cudnn <version>" or "simple".
const char* attention_impl_name();

// Throws qdit::ShapeError on bad arguments, qdit::Error when cuDNN fails (cuDNN needs hd % 8 == 0,
// hd <= 256, lds % 8 == 0 and 16-byte aligned pointers).
void attention(const void* q, int64_t ldq, const void* k, int64_t ldk, const void* v, int64_t ldv, void* o,
               int64_t ldo, int64_t s, int64_t heads, int64_t hd, cudaStream_t stream,
               AttentionImpl impl = AttentionImpl::Auto);

}  // namespace qdit::cuda
