#include "backend/cuda/attention.h"

#include <algorithm>
#include <cmath>

#include <cuda_bf16.h>

#include "backend/cuda/bf16_math.cuh"
#include "backend/cuda/block_reduce.cuh"
#include "backend/cuda/kernel_util.cuh"
#include "core/error.h"

namespace qdit::cuda {

namespace {

using namespace kern;

constexpr int kAttnWarps = 4;
constexpr int kMaxDimPerLane = 8;  // head_dim <= 256

__global__ void __launch_bounds__(kAttnWarps * 32)
attention_simple_kernel(const bf16* q, int64_t ldq, const bf16* k, int64_t ldk, const bf16* v, int64_t ldv,
                        bf16* o, int64_t ldo, int s, int heads, int group, bool causal, int hd, float scale) {
    __shared__ float qs[kAttnWarps][256];
    const int warp = int(threadIdx.x >> 5), lane = int(threadIdx.x & 31);
    const int64_t wid = int64_t(blockIdx.x) * kAttnWarps + warp;
    if (wid >= int64_t(s) * heads) return;
    const int t = int(wid / heads), h = int(wid % heads);
    const int64_t kvo = int64_t(h / group) * hd;  // the kv head's column offset
    const int n = causal ? t + 1 : s;             // keys this query sees
    for (int d = lane; d < hd; d += 32) qs[warp][d] = __bfloat162float(q[t * ldq + int64_t(h) * hd + d]);
    __syncwarp();
    float acc[kMaxDimPerLane];
#pragma unroll
    for (int i = 0; i < kMaxDimPerLane; ++i) acc[i] = 0.f;
    float mx = -INFINITY, denom = 0.f;
    for (int kb = 0; kb < n; kb += 32) {
        const int key = kb + lane;
        float sc = -INFINITY;
        if (key < n) {
            const bf16* kr = k + int64_t(key) * ldk + kvo;
            float dot = 0.f;
            for (int d = 0; d < hd; ++d) dot += qs[warp][d] * __bfloat162float(kr[d]);
            sc = dot * scale;
        }
        const float mnew = fmaxf(mx, warp_max(sc));
        const float corr = expf(mx - mnew);  // 0 on the first block (mx = -inf)
        const float p = key < n ? expf(sc - mnew) : 0.f;
        denom = denom * corr + warp_sumf(p);
        const float pr = rbf(p);
#pragma unroll
        for (int i = 0; i < kMaxDimPerLane; ++i) acc[i] *= corr;
        const int nk = min(32, n - kb);
        for (int j = 0; j < nk; ++j) {
            const float pj = __shfl_sync(0xffffffffu, pr, j);
            const bf16* vr = v + int64_t(kb + j) * ldv + kvo;
#pragma unroll
            for (int i = 0; i < kMaxDimPerLane; ++i) {
                const int d = lane + 32 * i;
                if (d < hd) acc[i] += pj * __bfloat162float(vr[d]);
            }
        }
        mx = mnew;
    }
#pragma unroll
    for (int i = 0; i < kMaxDimPerLane; ++i) {
        const int d = lane + 32 * i;
        if (d < hd) o[int64_t(t) * ldo + int64_t(h) * hd + d] = __float2bfloat16_rn(acc[i] / denom);
    }
}

}  // namespace

void attention_simple(const void* q, int64_t ldq, const void* k, int64_t ldk, const void* v, int64_t ldv,
                      void* o, int64_t ldo, int64_t s, int64_t heads, int64_t hd, cudaStream_t stream,
                      int64_t kv_heads, bool causal) {
    if (s <= 0) return;
    if (kv_heads == 0) kv_heads = heads;
    if (hd <= 0 || hd > 32 * kMaxDimPerLane)
        raise<ShapeError>("attention_simple: head_dim {} (at most {})", hd, 32 * kMaxDimPerLane);
    if (heads <= 0 || kv_heads <= 0 || heads % kv_heads)
        raise<ShapeError>("attention_simple: {} query heads is not a multiple of {} kv heads", heads, kv_heads);
    const int64_t warps = s * heads;
    // torch's default scale, 1 / sqrt(head_dim), as the f32 the CPU op uses.
    const float scale = float(1.0 / std::sqrt(double(hd)));
    attention_simple_kernel<<<unsigned((warps + kAttnWarps - 1) / kAttnWarps), kAttnWarps * 32, 0, stream>>>(
        static_cast<const bf16*>(q), ldq, static_cast<const bf16*>(k), ldk, static_cast<const bf16*>(v), ldv,
        static_cast<bf16*>(o), ldo, int(s), int(heads), int(heads / kv_heads), causal, int(hd), scale);
    check_launch("attention_simple");
}

}  // namespace qdit::cuda
