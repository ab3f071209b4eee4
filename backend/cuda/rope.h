// q/k RMS norm + RoPE on the fused q|k|v projection (bf16), following backend/cpu/rope.h and
// rope_half.h: f32 arithmetic, bf16 roundings where the CPU ops store, sums of squares in double.
// Device pointers; asynchronous on `stream`; qdit::Error on a launch failure.
#pragma once
#include <cstdint>

#include <cuda_runtime.h>

namespace qdit::cuda {

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
// With e4m3 set (FP8 attention, attention.h), q and k go there instead of back into qkv: the bf16
// results above, times 1 / descale[0] (q) or 1 / descale[1] (k), as E4M3 (saturating), at the same
// columns of rows ld8 bytes apart; qkv is left as it was. Needs the vector path: Interleaved, hd / 8
// a power of two <= 32, 16-byte aligned rows; descale: device floats, read when the kernel runs.
void qk_norm_rope(void* qkv, int64_t ld, int64_t k_offset, int64_t m, int64_t heads, int64_t hd, const void* wq,
                  const void* wk, float eps, const float* freqs, cudaStream_t stream,
                  RopeLayout layout = RopeLayout::Interleaved, int64_t kv_heads = 0, uint8_t* e4m3 = nullptr,
                  int64_t ld8 = 0, const float* descale = nullptr);

}  // namespace qdit::cuda
