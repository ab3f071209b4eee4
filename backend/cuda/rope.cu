#include "backend/cuda/rope.h"

#include <algorithm>
#include <cmath>

#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include "backend/cuda/bf16_math.cuh"
#include "backend/cuda/block_reduce.cuh"
#include "backend/cuda/kernel_util.cuh"
#include "core/error.h"

namespace qdit::cuda {

// q/k RMSNorm + RoPE: a block per token with 16-byte vectors for the Interleaved layout when the
// head fits (hd / 8 a power of two <= 32, aligned rows), else one warp per (token, head) where lane
// l owns the pairs l + 32·j.

namespace {

using namespace kern;

constexpr int kMaxPairsPerLane = 4;  // head_dim <= 256

// One head of hd = 2·half values at p; lane l owns the rotation pairs l + 32·j: (2i, 2i + 1) when
// Interleaved, (i, i + half) when Half. f: the token's (cos, sin) per pair.
template <RopeLayout LAYOUT>
__device__ void norm_rope_head(bf16* p, int half, const bf16* w, float eps, const float* f) {
    constexpr bool kHalf = LAYOUT == RopeLayout::Half;
    const int lane = int(threadIdx.x & 31);
    // Element offsets of the two members of pair pi.
    auto ia = [&](int pi) { return kHalf ? pi : 2 * pi; };
    auto ib = [&](int pi) { return kHalf ? pi + half : 2 * pi + 1; };
    float a[kMaxPairsPerLane], b[kMaxPairsPerLane];
    double ss = 0;
#pragma unroll
    for (int j = 0; j < kMaxPairsPerLane; ++j) {
        const int pi = lane + 32 * j;
        a[j] = b[j] = 0.f;
        if (pi < half) {
            if constexpr (kHalf) {
                a[j] = __bfloat162float(p[pi]);
                b[j] = __bfloat162float(p[pi + half]);
            } else {
                const float2 v = __bfloat1622float2(reinterpret_cast<const __nv_bfloat162*>(p)[pi]);
                a[j] = v.x;
                b[j] = v.y;
            }
            ss += double(a[j] * a[j]) + double(b[j] * b[j]);
        }
    }
    if (w) {
        const float inv = 1.0f / sqrtf(float(warp_sum(ss)) / float(2 * half) + eps);
#pragma unroll
        for (int j = 0; j < kMaxPairsPerLane; ++j) {
            const int pi = lane + 32 * j;
            if (pi < half) {
                a[j] = rbf(rbf(a[j] * inv) * __bfloat162float(w[ia(pi)]));
                b[j] = rbf(rbf(b[j] * inv) * __bfloat162float(w[ib(pi)]));
            }
        }
    }
#pragma unroll
    for (int j = 0; j < kMaxPairsPerLane; ++j) {
        const int pi = lane + 32 * j;
        if (pi >= half) continue;
        if constexpr (kHalf) {
            // x1·c − x2·s and x2·c + x1·s with bf16 cos / sin and every product rounded to bf16.
            const float c = rbf(f[2 * pi]), s = rbf(f[2 * pi + 1]);
            const float re = __fadd_rn(rbf(__fmul_rn(a[j], c)), rbf(__fmul_rn(-b[j], s)));
            const float im = __fadd_rn(rbf(__fmul_rn(b[j], c)), rbf(__fmul_rn(a[j], s)));
            p[pi] = __float2bfloat16_rn(re);
            p[pi + half] = __float2bfloat16_rn(im);
        } else {
            const float c = f[2 * pi], s = f[2 * pi + 1];
            // Separate roundings (no fma), as the CPU computes a·c − b·s.
            const float re = __fsub_rn(__fmul_rn(a[j], c), __fmul_rn(b[j], s));
            const float im = __fadd_rn(__fmul_rn(a[j], s), __fmul_rn(b[j], c));
            reinterpret_cast<__nv_bfloat162*>(p)[pi] = __floats2bfloat162_rn(re, im);
        }
    }
}

// Interleaved RoPE with 16-byte vectors: one block per token; each head's hd/8 vectors go to
// consecutive lanes (hd/8 a power of two <= 32), which reduce the head's sum of squares among
// themselves; a lane's vector index is the same for every head it visits, so it loads its
// (cos, sin) pairs once. Same per-element arithmetic as norm_rope_head<Interleaved>.
constexpr int kQkVecThreads = 256;

__global__ void __launch_bounds__(kQkVecThreads)
qk_norm_rope_vec_kernel(bf16* qkv, int64_t ld, int64_t k_off, int heads, int kv_heads, int hd, const bf16* wq,
                        const bf16* wk, float eps, const float* freqs, uint8_t* e4m3, int64_t ld8,
                        const float* descale) {
    const int64_t t = blockIdx.x;
    const float scale_q = e4m3 ? 1.f / descale[0] : 0.f, scale_k = e4m3 ? 1.f / descale[1] : 0.f;
    const int V = hd / 8;                    // vectors (lanes) per head
    const int j = int(threadIdx.x) & (V - 1);  // this lane's vector in every head it visits
    float c[4], sn[4];
    {
        const float4* f = reinterpret_cast<const float4*>(freqs + t * hd + 8 * j);
        const float4 f0 = f[0], f1 = f[1];
        c[0] = f0.x, sn[0] = f0.y, c[1] = f0.z, sn[1] = f0.w, c[2] = f1.x, sn[2] = f1.y, c[3] = f1.z, sn[3] = f1.w;
    }
    const int total = (heads + kv_heads) * V;
    for (int s0 = 0; s0 < total; s0 += kQkVecThreads) {
        const int s = s0 + int(threadIdx.x);
        const bool valid = s < total;
        const int head = s / V;
        const bool is_k = head >= heads;
        const int64_t col = (is_k ? k_off + int64_t(head - heads) * hd : int64_t(head) * hd) + 8 * j;
        bf16* p = qkv + t * ld + col;
        float a[4], b[4];
        double ss = 0;
        if (valid) {
            const uint4 raw = *reinterpret_cast<const uint4*>(p);
            const uint32_t w2[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                a[i] = bf16_lo(w2[i]);
                b[i] = bf16_hi(w2[i]);
                ss += sq2(w2[i]);  // double(a²) + double(b²), as norm_rope_head sums a pair
            }
        }
        const bf16* w = is_k ? wk : wq;
        if (w) {
            for (int o = V / 2; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
            if (valid) {
                const float inv = 1.0f / sqrtf(float(ss * kSumSqUnscale) / float(hd) + eps);
                const uint4 wraw = *reinterpret_cast<const uint4*>(w + 8 * j);
                const uint32_t ww[4] = {wraw.x, wraw.y, wraw.z, wraw.w};
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const uint32_t n = mul_bf16x2(pack_bf16x2(a[i] * inv, b[i] * inv), ww[i]);
                    a[i] = bf16_lo(n), b[i] = bf16_hi(n);
                }
            }
        }
        if (!valid) continue;
        uint32_t o[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float re = __fsub_rn(__fmul_rn(a[i], c[i]), __fmul_rn(b[i], sn[i]));
            const float im = __fadd_rn(__fmul_rn(a[i], sn[i]), __fmul_rn(b[i], c[i]));
            o[i] = pack_bf16x2(re, im);
        }
        if (e4m3) {
            const float k = is_k ? scale_k : scale_q;
            __nv_fp8x2_storage_t e[4];
#pragma unroll
            for (int i = 0; i < 4; ++i)
                e[i] = __nv_cvt_float2_to_fp8x2(make_float2(bf16_lo(o[i]) * k, bf16_hi(o[i]) * k), __NV_SATFINITE,
                                                __NV_E4M3);
            *reinterpret_cast<uint2*>(e4m3 + t * ld8 + col) =
                make_uint2(unsigned(e[0]) | unsigned(e[1]) << 16, unsigned(e[2]) | unsigned(e[3]) << 16);
            continue;
        }
        *reinterpret_cast<uint4*>(p) = make_uint4(o[0], o[1], o[2], o[3]);
    }
}

// One warp per (token, q head); the warps of heads h < kv_heads also do k head h.
template <RopeLayout LAYOUT>
__global__ void qk_norm_rope_kernel(bf16* qkv, int64_t ld, int64_t k_off, int64_t m, int heads, int kv_heads, int hd,
                                    const bf16* wq, const bf16* wk, float eps, const float* freqs) {
    const int64_t wid = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
    if (wid >= m * heads) return;
    const int64_t t = wid / heads;
    const int h = int(wid % heads);
    const float* f = freqs + t * hd;
    bf16* row = qkv + t * ld + int64_t(h) * hd;
    norm_rope_head<LAYOUT>(row, hd / 2, wq, eps, f);
    if (h < kv_heads) norm_rope_head<LAYOUT>(row + k_off, hd / 2, wk, eps, f);
}

}  // namespace

void qk_norm_rope(void* qkv, int64_t ld, int64_t k_offset, int64_t m, int64_t heads, int64_t hd, const void* wq,
                  const void* wk, float eps, const float* freqs, cudaStream_t stream, RopeLayout layout,
                  int64_t kv_heads, uint8_t* e4m3, int64_t ld8, const float* descale) {
    if (m <= 0) return;
    if (kv_heads == 0) kv_heads = heads;
    if (hd <= 0 || hd % 2 || hd > 2 * 32 * kMaxPairsPerLane || ld % 2 || k_offset % 2 || (!wq != !wk) ||
        heads <= 0 || kv_heads < 1 || kv_heads > heads)
        raise<ShapeError>("qk_norm_rope: head_dim {} (even, <= 256), ld {}, k offset {}, {} q heads, {} k heads "
                          "(1 <= k heads <= q heads)",
                          hd, ld, k_offset, heads, kv_heads);
    auto* p = static_cast<bf16*>(qkv);
    auto* wqp = static_cast<const bf16*>(wq);
    auto* wkp = static_cast<const bf16*>(wk);
    const int64_t vecs = hd / 8;  // 16-byte vectors per head
    const bool vec = layout == RopeLayout::Interleaved && hd % 8 == 0 && vecs <= 32 && (vecs & (vecs - 1)) == 0 &&
                     ld % 8 == 0 && k_offset % 8 == 0 && aligned16(qkv) && aligned16(freqs) &&
                     (!wq || (aligned16(wq) && aligned16(wk)));
    if (e4m3 && (!vec || !descale || ld8 % 8 || reinterpret_cast<uintptr_t>(e4m3) % 8 || ld8 < k_offset + kv_heads * hd))
        raise<ShapeError>("qk_norm_rope: an E4M3 output needs the interleaved layout, head_dim a multiple of 8 with "
                          "head_dim / 8 a power of two <= 32, aligned rows, 8-byte aligned output rows of at least "
                          "{} bytes (got {}) and the scales",
                          k_offset + kv_heads * hd, ld8);
    if (vec) {
        qk_norm_rope_vec_kernel<<<unsigned(m), kQkVecThreads, 0, stream>>>(
            p, ld, k_offset, int(heads), int(kv_heads), int(hd), wqp, wkp, eps, freqs, e4m3, ld8, descale);
        check_launch("qk_norm_rope");
        return;
    }
    const int64_t warps = m * heads, threads = 256;
    const unsigned blocks = unsigned((warps * 32 + threads - 1) / threads);
    if (layout == RopeLayout::Half)
        qk_norm_rope_kernel<RopeLayout::Half><<<blocks, unsigned(threads), 0, stream>>>(
            p, ld, k_offset, m, int(heads), int(kv_heads), int(hd), wqp, wkp, eps, freqs);
    else
        qk_norm_rope_kernel<RopeLayout::Interleaved><<<blocks, unsigned(threads), 0, stream>>>(
            p, ld, k_offset, m, int(heads), int(kv_heads), int(hd), wqp, wkp, eps, freqs);
    check_launch("qk_norm_rope");
}

}  // namespace qdit::cuda
