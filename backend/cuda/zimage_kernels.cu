#include "backend/cuda/zimage_kernels.h"

#include <algorithm>
#include <cmath>

#include <cuda_bf16.h>

#include "backend/cuda/bf16_math.cuh"
#include "backend/cuda/block_reduce.cuh"
#include "core/error.h"

namespace qdit::cuda {

namespace {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ float rbf(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }
// cpu::silu in f32: x / (1 + e^-x), IEEE division.
__device__ __forceinline__ float silu_f(float x) { return x / (1.0f + expf(-x)); }

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ double warp_sum(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_sumf(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

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
            uint32_t r[NE];
            bool tie = false;
#pragma unroll
            for (int p = 0; p < NP; ++p) {
                const float2 f = pair(j, p);
                r[2 * p] = quant_fast(f.x, inv_s, tie);
                r[2 * p + 1] = quant_fast(f.y, inv_s, tie);
            }
            if (tie) {
#pragma unroll
                for (int p = 0; p < NP; ++p) {
                    const float2 f = pair(j, p);
                    r[2 * p] = quant_exact(f.x, s);
                    r[2 * p + 1] = quant_exact(f.y, s);
                }
            }
            if constexpr (VEC == 8)
                *reinterpret_cast<uint2*>(q + b) =
                    make_uint2(pack_bytes4(r[0], r[1], r[2], r[3]), pack_bytes4(r[4], r[5], r[6], r[7]));
            else
                q[b] = int8_t(r[0] & 0xffu);
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

// The gated linear units: GELU (tanh form) of a alone, or SwiGLU bf16(silu(a)) · b.
enum class Glu { Swi, GeluTanh };
__device__ __forceinline__ float gelu_tanh_f(float v) {
    constexpr float beta = 0.7978845608028654f, kappa = 0.044715f;  // sqrt(2/π), torch's κ
    return 0.5f * v * (1.0f + tanhf(beta * (v + kappa * v * v * v)));
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
        uint32_t r[8];
        bool tie = false;
#pragma unroll
        for (int e = 0; e < 8; ++e) r[e] = quant_fast(f[e], inv_s, tie);
        if (tie) {
#pragma unroll
            for (int e = 0; e < 8; ++e) r[e] = quant_exact(f[e], s);
        }
        *reinterpret_cast<uint2*>(qr + 8 * v) =
            make_uint2(pack_bytes4(r[0], r[1], r[2], r[3]), pack_bytes4(r[4], r[5], r[6], r[7]));
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

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

template <typename F>
void dispatch_row(const RowLaunch& l, F&& f) {
#define QDIT_ROW_CASE(V, N) \
    if (l.vec == V && l.nv == N) return f(std::integral_constant<int, V>{}, std::integral_constant<int, N>{});
    QDIT_ROW_CASE(8, 1) QDIT_ROW_CASE(8, 2) QDIT_ROW_CASE(8, 4) QDIT_ROW_CASE(8, 8)
    QDIT_ROW_CASE(1, 1) QDIT_ROW_CASE(1, 2) QDIT_ROW_CASE(1, 4) QDIT_ROW_CASE(1, 8)
#undef QDIT_ROW_CASE
}

void check_launch(const char* what) {
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) raise<Error>("CUDA launch of {} failed: {}", what, cudaGetErrorString(e));
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

// ---------------------------------------------------------------------------
// q/k RMSNorm + RoPE: a block per token with 16-byte vectors for the Interleaved layout when the
// head fits (hd / 8 a power of two <= 32, aligned rows), else one warp per (token, head) where lane
// l owns the pairs l + 32·j.

namespace {

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
                        const bf16* wk, float eps, const float* freqs) {
    const int64_t t = blockIdx.x;
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
        bf16* p = qkv + t * ld + (is_k ? k_off + int64_t(head - heads) * hd : int64_t(head) * hd) + 8 * j;
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

__global__ void embedding_rows_kernel(const bf16* table, int64_t vocab, int64_t d, const int32_t* ids, bf16* out,
                                      int64_t ldo) {
    const int64_t row = blockIdx.x;
    const int32_t id = ids[row];
    const bool ok = id >= 0 && id < vocab;
    const bf16* src = table + int64_t(ok ? id : 0) * d;
    bf16* dst = out + row * ldo;
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) dst[i] = ok ? src[i] : __float2bfloat16_rn(0.f);
}

__global__ void modulation_kernel(const bf16* mod, int64_t items, int64_t chunks, int64_t d, unsigned tanh_mask,
                                  unsigned plain_mask, float* out) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= items * chunks * d) return;
    const float v = __bfloat162float(mod[i]);
    const int64_t b = i / (chunks * d), c = (i / d) % chunks;
    out[(c * items + b) * d + i % d] =
        (plain_mask >> c) & 1u ? v : (tanh_mask >> c) & 1u ? rbf(tanhf(v)) : rbf(1.0f + v);
}

__global__ void silu_kernel(const bf16* x, int64_t n, bf16* y) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float v = __bfloat162float(x[i]);
    y[i] = __float2bfloat16_rn(v / (1.0f + expf(-v)));
}

// One warp per (query, head). Keys go 32 at a time: lane j scores key kb + j against q (held in
// shared memory), then the warp rescales its running output (lane l owns dims l + 32·i) and adds
// the 32 values weighted by their bf16-rounded probabilities. Query head h reads kv head h / group;
// a causal query t stops after key t.
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

void qk_norm_rope(void* qkv, int64_t ld, int64_t k_offset, int64_t m, int64_t heads, int64_t hd, const void* wq,
                  const void* wk, float eps, const float* freqs, cudaStream_t stream, RopeLayout layout,
                  int64_t kv_heads) {
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
    if (layout == RopeLayout::Interleaved && hd % 8 == 0 && vecs <= 32 && (vecs & (vecs - 1)) == 0 && ld % 8 == 0 &&
        k_offset % 8 == 0 && aligned16(qkv) && aligned16(freqs) && (!wq || (aligned16(wq) && aligned16(wk)))) {
        qk_norm_rope_vec_kernel<<<unsigned(m), kQkVecThreads, 0, stream>>>(p, ld, k_offset, int(heads), int(kv_heads),
                                                                            int(hd), wqp, wkp, eps, freqs);
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

void embedding_rows(const void* table, int64_t vocab, int64_t d, const int32_t* ids, int64_t n, void* out,
                    int64_t ldo, cudaStream_t stream) {
    if (n <= 0) return;
    if (vocab <= 0 || d <= 0 || ldo < d || !table || !ids || !out)
        raise<ShapeError>("embedding_rows: table [{}, {}], {} ids, output row stride {}", vocab, d, n, ldo);
    const int threads = int(std::min<int64_t>(256, (d + 31) / 32 * 32));
    embedding_rows_kernel<<<unsigned(n), unsigned(threads), 0, stream>>>(static_cast<const bf16*>(table), vocab, d,
                                                                         ids, static_cast<bf16*>(out), ldo);
    check_launch("embedding_rows");
}

void modulation(const void* mod, int64_t chunks, int64_t d, unsigned tanh_mask, float* out, cudaStream_t stream,
                unsigned plain_mask, int64_t items) {
    const int64_t n = items * chunks * d;
    if (n <= 0) return;
    if (chunks > 32) raise<ShapeError>("modulation: {} chunks (at most 32)", chunks);
    modulation_kernel<<<unsigned((n + 255) / 256), 256, 0, stream>>>(static_cast<const bf16*>(mod), items, chunks, d,
                                                                       tanh_mask, plain_mask, out);
    check_launch("modulation");
}

void silu(const void* x, int64_t n, void* y, cudaStream_t stream) {
    if (n <= 0) return;
    silu_kernel<<<unsigned((n + 255) / 256), 256, 0, stream>>>(static_cast<const bf16*>(x), n,
                                                                 static_cast<bf16*>(y));
    check_launch("silu");
}

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
