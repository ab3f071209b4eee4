// AVX-512 VNNI int8 GEMM and activation quantization.
// GCC 12's own masked-intrinsic headers trip -Wmaybe-uninitialized (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "backend/cpu/int8_gemm_internal.h"

namespace qdit::cpu::detail {

namespace {

constexpr int kMr = 6;  // rows per micro-tile
constexpr int kNb = 4;  // 16-column blocks per micro-tile: 6 x 4 = 24 zmm accumulators
// Each micro-tile walks the whole K with its accumulators in registers: the
// weight panel streams from L2. Slicing K to keep the weights in L1 instead
// costs more, because the partial sums then go through memory (measured:
// 512-byte slices were 4 % slower, 256-byte slices 13 %).

inline int32_t load_u32(const int8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

// acc += u8(a) * s8(b) in groups of 4. Inline asm because GCC 12 does not tie
// the accumulator of the intrinsic to its register and copies all 24 of them
// through the stack every iteration (3x slower). The broadcast stays a separate
// vpbroadcastd: an embedded {1to16} memory operand on each vpdpbusd (which
// would need u8 weights, as the memory operand is the signed one) was 19 %
// slower on Zen 5 in an L1-resident loop: four loads per row instead of one.
inline __m512i dpbusd(__m512i acc, __m512i a, __m512i b) {
    asm("vpdpbusd %[b], %[a], %[acc]" : [acc] "+v"(acc) : [a] "v"(a), [b] "v"(b));
    return acc;
}

// out[r][j] = sum over k of u8(a[r]) * s8(w) for MR rows and NB column blocks
// over k4 groups of 4; a is the u8 (+128) copy, so the epilogue subtracts
// 128 * colsum. `out` is [MR][kNb * 16]. One line per k group from `pf` on is
// prefetched into L2.
template <int MR, int NB>
void micro(const int8_t* a, int64_t lda, const int8_t* b, int64_t bstride, int64_t k4,
           const int8_t* pf, int32_t* out) {
    __m512i acc[MR][NB];
    for (int r = 0; r < MR; ++r)
        for (int j = 0; j < NB; ++j) acc[r][j] = _mm512_setzero_si512();
    for (int64_t kk = 0; kk < k4; ++kk) {
        __m512i bv[NB];
        for (int j = 0; j < NB; ++j) bv[j] = _mm512_load_si512(b + j * bstride + kk * 64);
        _mm_prefetch(reinterpret_cast<const char*>(pf + kk * 64), _MM_HINT_T1);
        for (int r = 0; r < MR; ++r) {
            const __m512i av = _mm512_set1_epi32(load_u32(a + r * lda + kk * 4));
            for (int j = 0; j < NB; ++j) acc[r][j] = dpbusd(acc[r][j], av, bv[j]);
        }
    }
    for (int r = 0; r < MR; ++r)
        for (int j = 0; j < NB; ++j) _mm512_store_si512(out + r * kNb * 16 + j * 16, acc[r][j]);
}

using MicroFn = void (*)(const int8_t*, int64_t, const int8_t*, int64_t, int64_t, const int8_t*,
                        int32_t*);

template <int MR>
constexpr MicroFn pick_nb(int nb) {
    return nb == 1 ? micro<MR, 1> : nb == 2 ? micro<MR, 2> : nb == 3 ? micro<MR, 3> : micro<MR, 4>;
}
MicroFn pick(int mr, int nb) {
    switch (mr) {
        case 1: return pick_nb<1>(nb);
        case 2: return pick_nb<2>(nb);
        case 3: return pick_nb<3>(nb);
        case 4: return pick_nb<4>(nb);
        case 5: return pick_nb<5>(nb);
        default: return pick_nb<6>(nb);
    }
}

// f32 -> bf16 round-to-nearest-even (NaN stays a quiet NaN), as f32_to_bf16.
inline __m512i to_bf16_bits(__m512 f) {
    const __m512i u = _mm512_castps_si512(f);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    const __mmask16 nan = _mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q);
    return _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40)));
}

void panel_task(const GemmArgs& g, int64_t panel, int64_t m_begin, int64_t m_end) {
    const PackedInt8Weight& w = *g.w;
    const int64_t k4 = k4_of(w.k), kg = kg_of(w.k), blocks = round_up(w.n, kBlockN) / kBlockN;
    const int64_t nb0 = panel * kNb;
    const int nb = int(std::min<int64_t>(kNb, blocks - nb0));
    const int64_t n0 = nb0 * kBlockN;
    const int cols = int(std::min<int64_t>(kNb * kBlockN, w.n - n0));
    const int8_t* b = w.packed.data<int8_t>() + nb0 * kg * 64;
    // The first kNb micro-tiles prefetch the next panel's weights (k4 lines of
    // each of its kNb blocks), so that the next panel's first tile does not
    // stream them from L3 or DRAM at the full compute rate (5 % on 256 x 3840
    // x 3840). Later tiles "prefetch" the line they load anyway.
    const int8_t* next = nb0 + kNb < blocks ? b + kNb * kg * 64 : nullptr;
    alignas(64) int32_t tile[kMr * kNb * 16];
    for (int64_t m = m_begin, t = 0; m < m_end; m += kMr, ++t) {
        const int rows = int(std::min<int64_t>(kMr, m_end - m));
        const int8_t* pf = next && t < kNb ? next + t * kg * 64 : b;
        pick(rows, nb)(g.a + m * g.lda, g.lda, b, kg * 64, k4, pf, tile);
        store_tile_avx512(g, tile, kNb * 16, m, rows, n0, cols, true);
    }
}

inline __m512 load_f32(const void* x, DType xt, int64_t i, __mmask16 mask) {
    if (xt == DType::F32) return _mm512_maskz_loadu_ps(mask, static_cast<const float*>(x) + i);
    const __m256i h = _mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(x) + i);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

}  // namespace

void store_tile_avx512(const GemmArgs& g, const int32_t* acc, int64_t ld_acc, int64_t m0, int rows,
                       int64_t n0, int cols, bool u8_activations) {
    const int32_t* colsum = g.w->colsum.data<int32_t>();
    const float* sw = g.w->scale.data<float>();
    for (int j = 0; j * 16 < cols; ++j) {
        const int64_t n = n0 + j * 16;
        const __mmask16 mask = __mmask16((1u << std::min(16, cols - j * 16)) - 1);
        const __m512i corr = u8_activations
                                 ? _mm512_slli_epi32(_mm512_maskz_loadu_epi32(mask, colsum + n), 7)
                                 : _mm512_setzero_si512();
        const __m512 vsw = _mm512_maskz_loadu_ps(mask, sw + n);
        const __m512 vb = g.bias ? _mm512_maskz_loadu_ps(mask, g.bias + n) : _mm512_setzero_ps();
        for (int r = 0; r < rows; ++r) {
            const int64_t m = m0 + r;
            const __m512i v = _mm512_sub_epi32(_mm512_loadu_si512(acc + r * ld_acc + j * 16), corr);
            if (g.out == Out::S32) {
                _mm512_mask_storeu_epi32(static_cast<int32_t*>(g.y) + m * g.ldy + n, mask, v);
                continue;
            }
            const __m512 t = _mm512_mul_ps(_mm512_cvtepi32_ps(v), _mm512_set1_ps(g.a_scale[m]));
            const __m512 y = _mm512_fmadd_ps(t, vsw, vb);
            if (g.out == Out::F32)
                _mm512_mask_storeu_ps(static_cast<float*>(g.y) + m * g.ldy + n, mask, y);
            else
                _mm512_mask_cvtepi32_storeu_epi16(static_cast<uint16_t*>(g.y) + m * g.ldy + n, mask,
                                                  to_bf16_bits(y));
        }
    }
}

void gemm_avx512(const GemmArgs& g) {
    const GemmArgs gu = padded_copy(g, 0x80);
    const int64_t panels = (round_up(g.w->n, kBlockN) / kBlockN + kNb - 1) / kNb;
    run_tasks(g.m, panels, kMr, g.w->k,
              [&](int64_t panel, int64_t b, int64_t e) { panel_task(gu, panel, b, e); });
}

void quantize_rows_avx512(const void* x, DType xt, int64_t m, int64_t k, int64_t ldx, int8_t* q,
                          float* scale) {
    const size_t es = dtype_size(xt);
    const __m512 abs_mask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    for (int64_t i = 0; i < m; ++i) {
        const void* row = static_cast<const uint8_t*>(x) + size_t(i * ldx) * es;
        int8_t* qi = q + i * k;
        // max(v, acc) keeps acc when v is NaN, like std::max in the reference.
        // Four accumulators: one max per vector would wait on the previous one.
        __m512 vmax[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                          _mm512_setzero_ps()};
        int64_t j = 0;
        for (; j + 64 <= k; j += 64)
            for (int u = 0; u < 4; ++u)
                vmax[u] = _mm512_max_ps(
                    _mm512_and_ps(load_f32(row, xt, j + u * 16, __mmask16(0xffff)), abs_mask), vmax[u]);
        for (; j < k; j += 16) {
            const __mmask16 mask = k - j >= 16 ? __mmask16(0xffff) : __mmask16((1u << (k - j)) - 1);
            vmax[0] = _mm512_max_ps(_mm512_and_ps(load_f32(row, xt, j, mask), abs_mask), vmax[0]);
        }
        const float absmax = _mm512_reduce_max_ps(
            _mm512_max_ps(_mm512_max_ps(vmax[0], vmax[1]), _mm512_max_ps(vmax[2], vmax[3])));
        if (absmax == 0.f) {
            scale[i] = 1.f;
            std::memset(qi, 0, size_t(k));
            continue;
        }
        const float s = absmax / 127.f;
        scale[i] = s;
        const __m512 vs = _mm512_set1_ps(s);
        // The reference rounds x / s (a true division) to nearest even. The
        // division is the slowest step, so x * (1 / s) is used where it gives
        // the same integer: with |x / s| <= 127 the two differ by at most 2^-15,
        // so they round alike unless x / s lies within 2^-12 of a half-integer.
        // A vector with such a lane (about 1 in 100) is divided. Scales that
        // are not normal numbers (1 / s could overflow) always divide.
        const bool reciprocal = s >= std::numeric_limits<float>::min() && std::isfinite(s);
        const __m512 vinv = _mm512_set1_ps(1.f / s);
        const __m512 half = _mm512_set1_ps(0.5f), near = _mm512_set1_ps(0x1p-12f);
        const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
        for (int64_t j = 0; j < k; j += 16) {
            const __mmask16 mask = k - j >= 16 ? __mmask16(0xffff) : __mmask16((1u << (k - j)) - 1);
            const __m512 x = load_f32(row, xt, j, mask);
            __m512 v = _mm512_mul_ps(x, vinv);
            // v - floor(v) is exact for |v| < 2^23; NaN lanes compare false.
            const __m512 frac = _mm512_sub_ps(
                v, _mm512_roundscale_ps(v, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC));
            const __m512 dist = _mm512_and_ps(_mm512_sub_ps(frac, half), abs_mask);
            if (!reciprocal || _mm512_cmp_ps_mask(dist, near, _CMP_LT_OQ) != 0)
                v = _mm512_div_ps(x, vs);
            // The default (nearest-even) rounding mode, as the reference.
            __m512i r = _mm512_cvtps_epi32(v);
            r = _mm512_min_epi32(_mm512_max_epi32(r, lo), hi);
            _mm512_mask_cvtepi32_storeu_epi8(qi + j, mask, r);
        }
    }
}

}  // namespace qdit::cpu::detail
