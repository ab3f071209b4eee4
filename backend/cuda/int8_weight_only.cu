#include "backend/cuda/int8_weight_only.h"

#include <cuda_bf16.h>

#include "core/error.h"

namespace qdit::cuda {

namespace {

constexpr int kRows = 8;   // rows of x per pass over the weights
constexpr int kWarps = 8;  // outputs per block: one warp each

// Warp w of block b computes output j = b·kWarps + w for rows [r0, r0 + rows) of x: lane l reads the
// 16-byte weight vectors l, l + 32, ... of row j and the matching x values, then the warp sums.
// VEC: x rows are read as 16-byte vectors too (k % 16 == 0, ldx % 8 == 0, x 16-byte aligned), so a
// warp's loads of x are coalesced; the sums are the same in either case.
template <bool VEC>
__global__ void __launch_bounds__(kWarps * 32)
int8_weight_only_kernel(const __nv_bfloat16* x, int64_t ldx, const int8_t* q, int64_t ldq, const float* s,
                        const float* bias, __nv_bfloat16* y, int64_t ldy, int64_t r0, int rows, int64_t n, int64_t k) {
    const int lane = int(threadIdx.x) & 31;
    const int64_t j = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
    if (j >= n) return;
    float acc[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc[r] = 0.f;
    const int8_t* qr = q + j * ldq;
    for (int64_t c = int64_t(lane) * 16; c < k; c += 32 * 16) {
        const int4 v = __ldg(reinterpret_cast<const int4*>(qr + c));
        const int8_t* w = reinterpret_cast<const int8_t*>(&v);
        float wf[16];
#pragma unroll
        for (int e = 0; e < 16; ++e) wf[e] = float(w[e]);
        const int e_end = VEC ? 16 : int(k - c < 16 ? k - c : 16);
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
            if (r >= rows) break;
            const __nv_bfloat16* xr = x + (r0 + r) * ldx + c;
            float a = 0.f;
            if constexpr (VEC) {
                int4 xv[2];
                xv[0] = __ldg(reinterpret_cast<const int4*>(xr));
                xv[1] = __ldg(reinterpret_cast<const int4*>(xr) + 1);
                const __nv_bfloat16* xe = reinterpret_cast<const __nv_bfloat16*>(xv);
#pragma unroll
                for (int e = 0; e < 16; ++e) a += __bfloat162float(xe[e]) * wf[e];
            } else {
                for (int e = 0; e < e_end; ++e) a += __bfloat162float(__ldg(xr + e)) * wf[e];
            }
            acc[r] += a;
        }
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
        float v = acc[r];
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (lane == 0 && r < rows) y[(r0 + r) * ldy + j] = __float2bfloat16_rn(v * s[j] + (bias ? bias[j] : 0.f));
    }
}

}  // namespace

void int8_weight_only_gemm(const void* x, int64_t ldx, const int8_t* q, int64_t ldq, const float* s, const float* bias,
                           void* y, int64_t ldy, int64_t m, int64_t n, int64_t k, cudaStream_t stream) {
    if (m <= 0 || n <= 0) return;
    if (k <= 0 || ldx < k || ldq < k || ldq % 16 || ldy < n || (reinterpret_cast<uintptr_t>(q) & 15))
        raise<ShapeError>("int8_weight_only_gemm: bad arguments (m {}, n {}, k {}, ldx {}, ldq {}, ldy {})", m, n, k,
                          ldx, ldq, ldy);
    const unsigned blocks = unsigned((n + kWarps - 1) / kWarps);
    const bool vec = k % 16 == 0 && ldx % 8 == 0 && (reinterpret_cast<uintptr_t>(x) & 15) == 0;
    for (int64_t r0 = 0; r0 < m; r0 += kRows) {
        const int rows = int(m - r0 < kRows ? m - r0 : kRows);
        auto* kernel = vec ? int8_weight_only_kernel<true> : int8_weight_only_kernel<false>;
        kernel<<<blocks, kWarps * 32, 0, stream>>>(static_cast<const __nv_bfloat16*>(x), ldx, q, ldq, s, bias,
                                                   static_cast<__nv_bfloat16*>(y), ldy, r0, rows, n, k);
    }
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) raise<Error>("CUDA launch of int8_weight_only_gemm failed: {}", cudaGetErrorString(e));
}

}  // namespace qdit::cuda
