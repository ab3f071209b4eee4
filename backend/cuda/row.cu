#include "backend/cuda/row.h"

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

constexpr int kRowWarps = 8;  // every kernel here launches at most 256 threads

// A row held in registers: thread t owns elements (j·blockDim + t)·VEC + e, j < NV, e < VEC.
// VEC = 8 moves 16-byte vectors (k % 8 == 0, rows 16-byte aligned), VEC = 1 single elements.
// Values are kept as bf16 (half the registers of f32): every value a kernel keeps in a row is
// bf16-exact (loaded from bf16, or rounded to bf16 as the CPU op stores it); arithmetic is f32.
// Elements go in pairs (2p, 2p + 1) of a vector, one bf16 rounding instruction per pair
// (bf16_math.cuh); with VEC = 1 a pair is (element, +0) and only the element is written.
template <int VEC, int NV>
struct RowRegs {
    static constexpr int NP = VEC >= 2 ? VEC / 2 : 1;  // pairs per vector
    static constexpr int NE = 2 * NP;                  // elements per vector, the VEC = 1 pad included
    alignas(16) bf16 v[NV][NE];

    __device__ static int base(int j) { return (j * int(blockDim.x) + int(threadIdx.x)) * VEC; }
    // The pair's two bf16 as one word (element 2p in the low half).
    __device__ uint32_t bits(int j, int p) const { return reinterpret_cast<const uint32_t*>(v[j])[p]; }
    __device__ float2 pair(int j, int p) const {
        const uint32_t w = bits(j, p);
        return make_float2(bf16_lo(w), bf16_hi(w));
    }
    __device__ void set_bits(int j, int p, uint32_t w) { reinterpret_cast<uint32_t*>(v[j])[p] = w; }

    __device__ void load(const bf16* p, int k) {
#pragma unroll
        for (int j = 0; j < NV; ++j) {
            const int b = base(j);
            if constexpr (VEC == 8) {
                *reinterpret_cast<uint4*>(v[j]) =
                    b < k ? *reinterpret_cast<const uint4*>(p + b) : make_uint4(0u, 0u, 0u, 0u);
            } else {
                v[j][0] = b < k ? p[b] : __float2bfloat16_rn(0.f);
                v[j][1] = __float2bfloat16_rn(0.f);
            }
        }
    }

    __device__ void store(bf16* p, int k) const {
#pragma unroll
        for (int j = 0; j < NV; ++j) {
            const int b = base(j);
            if (b >= k) continue;
            if constexpr (VEC == 8)
                *reinterpret_cast<uint4*>(p + b) = *reinterpret_cast<const uint4*>(v[j]);
            else
                p[b] = v[j][0];
        }
    }

    // Σ v² in double, element by element in order (the CPU sums f32 squares in double). Elements
    // past k are 0.
    __device__ double sum_sq() const {
        double s = 0;
#pragma unroll
        for (int j = 0; j < NV; ++j)
#pragma unroll
            for (int p = 0; p < NP; ++p) s = add_sq2(bits(j, p), s);
        return block_sum<kRowWarps>(s) * kSumSqUnscale;
    }

    __device__ float absmax() const {
        float a = 0.f;
#pragma unroll
        for (int j = 0; j < NV; ++j)
#pragma unroll
            for (int p = 0; p < NP; ++p) {
                const float2 f = pair(j, p);
                a = fmaxf(a, fmaxf(fabsf(f.x), fabsf(f.y)));
            }
        return block_max<kRowWarps>(a);
    }

    // The per-element parameters at this thread's vector j as bf16 pairs (pair p = elements 2p,
    // 2p + 1; the pad element of VEC = 1 is 0): bf16 [k] as stored, f32 [k] (whose values are bf16,
    // as cuda::modulation writes them) converted exactly. 16-byte aligned when VEC = 8; call only for
    // vectors inside the row.
    __device__ void params(const bf16* p, int j, uint32_t (&o)[NP]) const {
        if constexpr (VEC == 8) {
            const uint4 u = *reinterpret_cast<const uint4*>(p + base(j));
            o[0] = u.x, o[1] = u.y, o[2] = u.z, o[3] = u.w;
        } else {
            o[0] = uint32_t(*reinterpret_cast<const uint16_t*>(p + base(j)));
        }
    }
    __device__ void params(const float* p, int j, uint32_t (&o)[NP]) const {
        if constexpr (VEC == 8) {
            const float4 a = *reinterpret_cast<const float4*>(p + base(j)),
                         b = *reinterpret_cast<const float4*>(p + base(j) + 4);
            o[0] = pack_bf16x2(a.x, a.y), o[1] = pack_bf16x2(a.z, a.w);
            o[2] = pack_bf16x2(b.x, b.y), o[3] = pack_bf16x2(b.z, b.w);
        } else {
            o[0] = pack_bf16x2(p[base(j)], 0.f);
        }
    }

    // The quant/int8.h rule; q row stride ldq >= k, columns [k, ldq) zeroed.
    __device__ void quantize(int8_t* q, float* qs, int k, int ldq) const {
        const float amax = absmax();
        const float s = amax > 0.f ? __fdiv_rn(amax, 127.f) : 1.f;
        const float inv_s = __frcp_rn(s);
        if (threadIdx.x == 0) *qs = s;
#pragma unroll
        for (int j = 0; j < NV; ++j) {
            const int b = base(j);
            if (b >= k) continue;
            if constexpr (VEC == 8) {
                float f[8];
#pragma unroll
                for (int p = 0; p < NP; ++p) {
                    const float2 e = pair(j, p);
                    f[2 * p] = e.x, f[2 * p + 1] = e.y;
                }
                *reinterpret_cast<uint2*>(q + b) = quantize8(f, s, inv_s);
            } else {
                bool tie = false;
                uint32_t r = quant_fast(pair(j, 0).x, inv_s, tie);
                if (tie) r = quant_exact(pair(j, 0).x, s);
                q[b] = int8_t(r & 0xffu);
            }
        }
        for (int i = k + int(threadIdx.x); i < ldq; i += int(blockDim.x)) q[i] = 0;
    }
};

// Blocks per SM that ptxas must fit: the <8, 2> variant (k = 2049..4096, the model width 3840)
// used 62 registers, 4 blocks of 240 threads per SM; at 5 it takes 48 (8 bytes spilled), and more
// rows are in flight per SM for a kernel that waits on memory between its reductions.
template <int VEC, int NV>
constexpr int row_op_min_blocks() {
    return VEC == 8 && NV == 2 ? 5 : 1;
}

// Vectors past the row's end hold zeros and are never stored; k % VEC == 0, so a vector is either
// wholly inside the row or wholly past it.
template <int VEC, int NV>
__global__ void __launch_bounds__(256, row_op_min_blocks<VEC, NV>()) row_op_kernel(RowOp op) {
    using Row = RowRegs<VEC, NV>;
    constexpr int NP = Row::NP;
    const int64_t row = blockIdx.x;
    const int k = int(op.k);
    bf16* x = static_cast<bf16*>(op.x) + row * op.ldx;
    Row r;
    r.load(x, k);

    if (op.y) {
        Row y;
        y.load(static_cast<const bf16*>(op.y) + row * op.ldy, k);
        if (!op.w_res && !op.gate) {
            // Plain residual: bf16(x + y) (elements past k stay 0 + 0).
#pragma unroll
            for (int j = 0; j < NV; ++j)
#pragma unroll
                for (int p = 0; p < NP; ++p) r.set_bits(j, p, add_bf16x2(r.bits(j, p), y.bits(j, p)));
        } else if (!op.w_res) {
            // Gated residual: bf16(x + bf16(gate · y)).
#pragma unroll
            for (int j = 0; j < NV; ++j) {
                if (Row::base(j) >= k) continue;
                uint32_t gv[NP];
                y.params(op.gate, j, gv);
#pragma unroll
                for (int p = 0; p < NP; ++p) r.set_bits(j, p, add_bf16x2(r.bits(j, p), mul_bf16x2(y.bits(j, p), gv[p])));
            }
        } else {
            // x + bf16(gate · bf16(bf16(y · inv) · w_res)), each product of two bf16 rounded once.
            const float inv = 1.0f / sqrtf(float(y.sum_sq()) / float(k) + op.eps_res);
            const bf16* w = static_cast<const bf16*>(op.w_res);
#pragma unroll
            for (int j = 0; j < NV; ++j) {
                if (Row::base(j) >= k) continue;
                uint32_t wv[NP], gv[NP];
                y.params(w, j, wv);
                if (op.gate) y.params(op.gate, j, gv);
#pragma unroll
                for (int p = 0; p < NP; ++p) {
                    const float2 yv = y.pair(j, p);
                    uint32_t n = mul_bf16x2(pack_bf16x2(yv.x * inv, yv.y * inv), wv[p]);
                    if (op.gate) n = mul_bf16x2(n, gv[p]);
                    r.set_bits(j, p, add_bf16x2(r.bits(j, p), n));
                }
            }
        }
        r.store(x, k);
    }

    if (op.norm == RowNorm::Rms) {
        // bf16(bf16(bf16(x · inv) · w) · scale).
        const float inv = 1.0f / sqrtf(float(r.sum_sq()) / float(k) + op.eps);
        const bf16* w = static_cast<const bf16*>(op.w);
#pragma unroll
        for (int j = 0; j < NV; ++j) {
            if (Row::base(j) >= k) continue;
            uint32_t wv[NP], sv[NP];
            r.params(w, j, wv);
            if (op.scale) r.params(op.scale, j, sv);
#pragma unroll
            for (int p = 0; p < NP; ++p) {
                const float2 xv = r.pair(j, p);
                uint32_t n = mul_bf16x2(pack_bf16x2(xv.x * inv, xv.y * inv), wv[p]);
                if (op.scale) n = mul_bf16x2(n, sv[p]);
                r.set_bits(j, p, n);
            }
        }
    } else if (op.norm == RowNorm::LayerNorm) {
        // Sums of values (not squares): the f32 → double conversion as the CPU writes it.
        double sm = 0;
#pragma unroll
        for (int j = 0; j < NV; ++j)
#pragma unroll
            for (int p = 0; p < NP; ++p) {
                const float2 f = r.pair(j, p);
                sm += double(f.x);
                if (VEC >= 2) sm += double(f.y);
            }
        const double mean = block_sum<kRowWarps>(sm) / double(k);
        double sq = 0;
#pragma unroll
        for (int j = 0; j < NV; ++j) {
            if (Row::base(j) >= k) continue;
#pragma unroll
            for (int p = 0; p < NP; ++p) {
                const float2 f = r.pair(j, p);
                const double c0 = double(f.x) - mean, c1 = double(f.y) - mean;
                sq += c0 * c0;
                if (VEC >= 2) sq += c1 * c1;
            }
        }
        const float rstd = 1.0f / sqrtf(float(block_sum<kRowWarps>(sq) / double(k)) + op.eps);
        const float mf = float(mean);
#pragma unroll
        for (int j = 0; j < NV; ++j) {
            if (Row::base(j) >= k) continue;
            uint32_t sv[NP], hv[NP];
            if (op.scale) r.params(op.scale, j, sv);
            if (op.shift) r.params(op.shift, j, hv);
#pragma unroll
            for (int p = 0; p < NP; ++p) {
                const float2 xv = r.pair(j, p);
                uint32_t n = pack_bf16x2((xv.x - mf) * rstd, VEC >= 2 ? (xv.y - mf) * rstd : 0.f);
                if (op.scale) n = mul_bf16x2(n, sv[p]);
                if (op.shift) n = add_bf16x2(n, hv[p]);
                r.set_bits(j, p, n);
            }
        }
    }

    if (op.out) r.store(static_cast<bf16*>(op.out) + row * op.ldo, k);
    if (op.q) r.quantize(op.q + row * op.ldq, op.qs + row, k, int(op.ldq));
}

// drop_zero_keys: a row's vectors lie within one head each (hd % VEC == 0).
template <int VEC, int NV>
__global__ void __launch_bounds__(256) drop_zero_keys_kernel(const bf16* o, int64_t ldo_in, int k, int hd,
                                                             const float* lse, int64_t ld_lse, float n_zero, bf16* out,
                                                             int64_t ldo, int8_t* q, float* qs, int64_t ldq) {
    using Row = RowRegs<VEC, NV>;
    const int64_t row = blockIdx.x;
    Row r;
    r.load(o + row * ldo_in, k);
#pragma unroll
    for (int j = 0; j < NV; ++j) {
        const int b = Row::base(j);
        if (b >= k) continue;
        const float f = 1.f / (1.f - n_zero * expf(-lse[int64_t(b / hd) * ld_lse + row]));
#pragma unroll
        for (int p = 0; p < Row::NP; ++p) {
            const float2 v = r.pair(j, p);
            r.set_bits(j, p, pack_bf16x2(v.x * f, v.y * f));
        }
    }
    if (out) r.store(out + row * ldo, k);
    if (q) r.quantize(q + row * ldq, qs + row, k, int(ldq));
}

// The gated linear units: GELU (tanh form) of a alone, or SwiGLU bf16(silu(a)) · b.
enum class Glu { Swi, GeluTanh };
// 0.5·v·(1 + tanh(u)) = v / (1 + e^(−2u)), u = sqrt(2/π)·(v + κ·v³): the same function without
// tanhf's ~20 instructions per element, which made the GELU pass of a large MLP compute-bound.
// The hardware exp2 and reciprocal give a few f32 ulps (relative, no cancellation for negative v,
// as 1 + tanh(u) would have); the bf16 result then differs from the CPU's tanh form (std::tanh)
// by one bf16 ulp now and then, as tanhf's did. −inf gives NaN, as on the CPU; for e^(−2u) above
// 2^126 the quotient is 0 where the CPU's 1 + tanh(u) is 0 too.
__device__ __forceinline__ float gelu_tanh_f(float v) {
    constexpr float two_beta = 2.f * 0.7978845608028654f, kappa = 0.044715f;  // 2·sqrt(2/π), torch's κ
    const float e = __expf(-two_beta * v * fmaf(kappa, v * v, 1.f));
    return __fdividef(v, 1.f + e);
}
template <Glu G>
__device__ __forceinline__ uint32_t glu_pair(uint32_t a, uint32_t b) {
    if constexpr (G == Glu::Swi) return mul_bf16x2(pack_bf16x2(silu_f(bf16_lo(a)), silu_f(bf16_hi(a))), b);
    else return pack_bf16x2(gelu_tanh_f(bf16_lo(a)), gelu_tanh_f(bf16_hi(a)));
}

template <Glu G, int VEC, int NV>
__global__ void __launch_bounds__(256)
glu_kernel(const bf16* h, int64_t ldh, int k, bf16* out, int64_t ldo, int8_t* q, float* qs, int64_t ldq) {
    const int64_t row = blockIdx.x;
    RowRegs<VEC, NV> a, b;
    a.load(h + row * ldh, k);
    if constexpr (G == Glu::Swi) b.load(h + row * ldh + k, k);
#pragma unroll
    for (int j = 0; j < NV; ++j)
#pragma unroll
        for (int p = 0; p < RowRegs<VEC, NV>::NP; ++p)
            a.set_bits(j, p, glu_pair<G>(a.bits(j, p), G == Glu::Swi ? b.bits(j, p) : 0u));
    if (out) a.store(out + row * ldo, k);
    if (q) a.quantize(q + row * ldq, qs + row, k, int(ldq));
}

// SwiGLU on 16-byte vectors with the row's result kept in shared memory (bf16, k·2 bytes) between
// the absmax and the quantization: few registers, so up to 8 blocks of 256 threads share an SM and
// one block's loads overlap the others' arithmetic (the register-row kernel above holds 2·k/blockDim
// values per thread: 2 blocks per SM at k = 10240). Needs k % 8 == 0, 16-byte aligned rows.
template <Glu G>
__global__ void __launch_bounds__(256)
glu_smem_kernel(const bf16* h, int64_t ldh, int k, bf16* out, int64_t ldo, int8_t* q, float* qs, int64_t ldq) {
    extern __shared__ uint4 g_row[];  // k / 8 vectors
    const int64_t row = blockIdx.x;
    const int nvec = k / 8, tid = int(threadIdx.x), nt = int(blockDim.x);
    const uint4* pa = reinterpret_cast<const uint4*>(h + row * ldh);
    const uint4* pb = reinterpret_cast<const uint4*>(h + row * ldh + k);
    uint4* po = out ? reinterpret_cast<uint4*>(out + row * ldo) : nullptr;
    float amax = 0.f;
    auto one = [&](uint4 ua, uint4 ub, int i) {
        const uint32_t wa[4] = {ua.x, ua.y, ua.z, ua.w}, wb[4] = {ub.x, ub.y, ub.z, ub.w};
        uint32_t g[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            g[e] = glu_pair<G>(wa[e], wb[e]);
            amax = fmaxf(amax, fmaxf(fabsf(bf16_lo(g[e])), fabsf(bf16_hi(g[e]))));
        }
        const uint4 ug = make_uint4(g[0], g[1], g[2], g[3]);
        g_row[i] = ug;
        if (po) po[i] = ug;
    };
    // Two vectors per thread per step: both pairs of loads are issued before either is used.
    int i = tid;
    const uint4 zero = make_uint4(0, 0, 0, 0);
    for (; i + nt < nvec; i += 2 * nt) {
        const uint4 a0 = pa[i], a1 = pa[i + nt];
        const uint4 b0 = G == Glu::Swi ? pb[i] : zero, b1 = G == Glu::Swi ? pb[i + nt] : zero;
        one(a0, b0, i);
        one(a1, b1, i + nt);
    }
    if (i < nvec) one(pa[i], G == Glu::Swi ? pb[i] : zero, i);
    if (!q) return;
    amax = block_max<kRowWarps>(amax);  // its leading barrier also orders the shared-memory row
    const float s = amax > 0.f ? __fdiv_rn(amax, 127.f) : 1.f;
    const float inv_s = __frcp_rn(s);
    if (tid == 0) qs[row] = s;
    int8_t* qr = q + row * ldq;
    for (int v = tid; v < nvec; v += nt) {
        const uint4 ug = g_row[v];
        const float f[8] = {bf16_lo(ug.x), bf16_hi(ug.x), bf16_lo(ug.y), bf16_hi(ug.y),
                            bf16_lo(ug.z), bf16_hi(ug.z), bf16_lo(ug.w), bf16_hi(ug.w)};
        *reinterpret_cast<uint2*>(qr + 8 * v) = quantize8(f, s, inv_s);
    }
    for (int c = k + tid; c < ldq; c += nt) qr[c] = 0;
}

// Launch shape for a row of k elements: 16-byte vectors when `vec`, and the fewest vectors per
// thread (1, 2, 4, 8) that keep the block at <= 256 threads.
struct RowLaunch {
    int vec, nv, threads;
};
RowLaunch row_launch(int64_t k, bool vec) {
    const int64_t units = vec ? k / 8 : k;
    for (int nv : {1, 2, 4, 8}) {
        const int64_t t = (units + nv - 1) / nv;
        if (t <= 256) return {vec ? 8 : 1, nv, int((t + 31) / 32 * 32)};
    }
    raise<ShapeError>("row kernel: rows of {} elements are too long (at most {})", k, vec ? 16384 : 2048);
}

template <typename F>
void dispatch_row(const RowLaunch& l, F&& f) {
#define QDIT_ROW_CASE(V, N) \
    if (l.vec == V && l.nv == N) return f(std::integral_constant<int, V>{}, std::integral_constant<int, N>{});
    QDIT_ROW_CASE(8, 1) QDIT_ROW_CASE(8, 2) QDIT_ROW_CASE(8, 4) QDIT_ROW_CASE(8, 8)
    QDIT_ROW_CASE(1, 1) QDIT_ROW_CASE(1, 2) QDIT_ROW_CASE(1, 4) QDIT_ROW_CASE(1, 8)
#undef QDIT_ROW_CASE
}

}  // namespace

void row_op(const RowOp& op, cudaStream_t stream) {
    if (op.m <= 0) return;
    if (op.k <= 0 || op.ldx < op.k || (op.y && op.ldy < op.k) || (op.out && op.ldo < op.k) ||
        (op.q && (op.ldq < op.k || !op.qs)) || (op.norm == RowNorm::Rms && !op.w) || (op.shift && op.norm != RowNorm::LayerNorm))
        raise<ShapeError>("row_op: bad arguments (m {}, k {}, ldx {}, ldy {}, ldo {}, ldq {})", op.m, op.k, op.ldx,
                          op.ldy, op.ldo, op.ldq);
    bool vec = op.k % 8 == 0 && op.ldx % 8 == 0 && aligned16(op.x);
    if (op.y) vec = vec && op.ldy % 8 == 0 && aligned16(op.y);
    if (op.out) vec = vec && op.ldo % 8 == 0 && aligned16(op.out);
    if (op.q) vec = vec && op.ldq % 8 == 0 && aligned16(op.q);
    // Per-element parameters are read as 16-byte vectors too.
    for (const void* p : {op.w_res, op.w, static_cast<const void*>(op.gate), static_cast<const void*>(op.scale),
                          static_cast<const void*>(op.shift)})
        vec = vec && (!p || aligned16(p));
    const RowLaunch l = row_launch(op.k, vec);
    dispatch_row(l, [&](auto V, auto N) {
        row_op_kernel<decltype(V)::value, decltype(N)::value><<<unsigned(op.m), l.threads, 0, stream>>>(op);
    });
    check_launch("row_op");
}

void quantize_rows(const void* x, int64_t ldx, int64_t m, int64_t k, int8_t* q, int64_t ldq, float* qs,
                   cudaStream_t stream) {
    RowOp op;
    op.x = const_cast<void*>(x);  // read only: no residual, no bf16 output
    op.ldx = ldx;
    op.q = q;
    op.qs = qs;
    op.ldq = ldq;
    op.m = m;
    op.k = k;
    row_op(op, stream);
}

void drop_zero_keys(const void* o, int64_t ldo_in, int64_t m, int64_t k, int64_t hd, const float* lse, int64_t ld_lse,
                    int64_t n_zero, void* out, int64_t ldo, int8_t* q, float* qs, int64_t ldq, cudaStream_t stream) {
    if (m <= 0) return;
    if (k <= 0 || hd <= 0 || k % hd || ldo_in < k || !lse || ld_lse < m || n_zero < 0 || (out && ldo < k) ||
        (q && (ldq < k || !qs)))
        raise<ShapeError>("drop_zero_keys: bad arguments (m {}, k {}, hd {}, ldo_in {}, ld_lse {}, {} zero keys, ldo {}, "
                          "ldq {})",
                          m, k, hd, ldo_in, ld_lse, n_zero, ldo, ldq);
    bool vec = k % 8 == 0 && hd % 8 == 0 && ldo_in % 8 == 0 && aligned16(o);
    if (out) vec = vec && ldo % 8 == 0 && aligned16(out);
    if (q) vec = vec && ldq % 8 == 0 && aligned16(q);
    const RowLaunch l = row_launch(k, vec);
    dispatch_row(l, [&](auto V, auto N) {
        drop_zero_keys_kernel<decltype(V)::value, decltype(N)::value><<<unsigned(m), l.threads, 0, stream>>>(
            static_cast<const bf16*>(o), ldo_in, int(k), int(hd), lse, ld_lse, float(n_zero), static_cast<bf16*>(out),
            ldo, q, qs, ldq);
    });
    check_launch("drop_zero_keys");
}

namespace {

template <Glu G>
void glu(const void* h, int64_t ldh, int64_t m, int64_t k, void* out, int64_t ldo, int8_t* q, float* qs, int64_t ldq,
         cudaStream_t stream) {
    const char* name = G == Glu::Swi ? "swiglu" : "gelu_tanh";
    if (m <= 0) return;
    if (k <= 0 || ldh < (G == Glu::Swi ? 2 : 1) * k || (out && ldo < k) || (q && (ldq < k || !qs)))
        raise<ShapeError>("{}: bad arguments (m {}, k {}, ldh {}, ldo {}, ldq {})", name, m, k, ldh, ldo, ldq);
    bool vec = k % 8 == 0 && ldh % 8 == 0 && aligned16(h);
    if (out) vec = vec && ldo % 8 == 0 && aligned16(out);
    if (q) vec = vec && ldq % 8 == 0 && aligned16(q);
    constexpr int64_t kSmemRowBytes = 48 * 1024;  // the default dynamic shared memory limit
    if (vec && 2 * k <= kSmemRowBytes) {
        const int64_t threads = std::min<int64_t>(256, (k / 8 + 31) / 32 * 32);
        glu_smem_kernel<G><<<unsigned(m), unsigned(threads), size_t(2 * k), stream>>>(
            static_cast<const bf16*>(h), ldh, int(k), static_cast<bf16*>(out), ldo, q, qs, ldq);
        check_launch(name);
        return;
    }
    const RowLaunch l = row_launch(k, vec);
    dispatch_row(l, [&](auto V, auto N) {
        glu_kernel<G, decltype(V)::value, decltype(N)::value><<<unsigned(m), l.threads, 0, stream>>>(
            static_cast<const bf16*>(h), ldh, int(k), static_cast<bf16*>(out), ldo, q, qs, ldq);
    });
    check_launch(name);
}

}  // namespace

void swiglu(const void* h, int64_t ldh, int64_t m, int64_t k, void* out, int64_t ldo, int8_t* q, float* qs,
            int64_t ldq, cudaStream_t stream) {
    glu<Glu::Swi>(h, ldh, m, k, out, ldo, q, qs, ldq, stream);
}

void gelu_tanh(const void* h, int64_t ldh, int64_t m, int64_t k, void* out, int64_t ldo, int8_t* q, float* qs,
               int64_t ldq, cudaStream_t stream) {
    glu<Glu::GeluTanh>(h, ldh, m, k, out, ldo, q, qs, ldq, stream);
}

}  // namespace qdit::cuda
