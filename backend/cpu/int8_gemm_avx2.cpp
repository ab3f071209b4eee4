// AVX2 int8 GEMM (no VNNI) and activation quantization.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "backend/cpu/int8_gemm_internal.h"

namespace qdit::cpu::detail {

namespace {

constexpr int kMr = 4;  // rows per micro-tile; one 16-column block = 2 ymm per row

inline int32_t load_u32(const int8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

// Exact s8 x s8 products: maddubs(|a|, sign(w, a)) = a * w pairwise, and
// 2 * 128 * 127 < 32767 so the 16-bit pair sums never saturate (w is in ±127).
template <int MR>
void micro(const int8_t* a, int64_t lda, const int8_t* b, int64_t k4, int32_t* out /* [MR][16] */) {
    __m256i acc[MR][2];
    for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t kk = 0; kk < k4; ++kk) {
        const __m256i b0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(b + kk * 64));
        const __m256i b1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(b + kk * 64 + 32));
        for (int r = 0; r < MR; ++r) {
            const __m256i av = _mm256_set1_epi32(load_u32(a + r * lda + kk * 4));
            const __m256i aa = _mm256_abs_epi8(av);
            const __m256i p0 = _mm256_maddubs_epi16(aa, _mm256_sign_epi8(b0, av));
            const __m256i p1 = _mm256_maddubs_epi16(aa, _mm256_sign_epi8(b1, av));
            acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(p0, ones));
            acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(p1, ones));
        }
    }
    for (int r = 0; r < MR; ++r) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + r * 16), acc[r][0]);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + r * 16 + 8), acc[r][1]);
    }
}

void block_task(const GemmArgs& g, int64_t block, int64_t m_begin, int64_t m_end) {
    const PackedInt8Weight& w = *g.w;
    const int64_t k4 = k4_of(w.k), n0 = block * kBlockN;
    const int64_t cols = std::min<int64_t>(kBlockN, w.n - n0);
    const int8_t* b = w.packed.data<int8_t>() + block * kg_of(w.k) * 64;
    alignas(32) int32_t acc[kMr * 16];
    for (int64_t m = m_begin; m < m_end; m += kMr) {
        const int rows = int(std::min<int64_t>(kMr, m_end - m));
        const int8_t* a = g.a + m * g.lda;
        switch (rows) {
            case 1: micro<1>(a, g.lda, b, k4, acc); break;
            case 2: micro<2>(a, g.lda, b, k4, acc); break;
            case 3: micro<3>(a, g.lda, b, k4, acc); break;
            default: micro<4>(a, g.lda, b, k4, acc); break;
        }
        store_tile_scalar(g, acc, 16, m, rows, n0, cols);
    }
}

// Loads 8 values as f32; the tail goes through a zero-padded buffer.
inline __m256 load8(const void* x, DType xt, int64_t j, int64_t k) {
    if (k - j >= 8) {
        if (xt == DType::F32) return _mm256_loadu_ps(static_cast<const float*>(x) + j);
        const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(x) + j));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    alignas(32) float t[8] = {};
    convert_to_f32(static_cast<const uint8_t*>(x) + size_t(j) * dtype_size(xt), xt, t, k - j);
    return _mm256_load_ps(t);
}

}  // namespace

void gemm_avx2(const GemmArgs& g) {
    const GemmArgs gp = padded_copy(g, 0);
    run_tasks(g.m, round_up(g.w->n, kBlockN) / kBlockN, kMr, g.w->k,
              [&](int64_t block, int64_t b, int64_t e) { block_task(gp, block, b, e); });
}

void quantize_rows_avx2(const void* x, DType xt, int64_t m, int64_t k, int64_t ldx, int8_t* q,
                        float* scale) {
    const size_t es = dtype_size(xt);
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    // Picks the low byte of each int32 lane, then moves lane 1's 4 bytes next to lane 0's.
    const __m256i pick = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                          0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m256i gather = _mm256_setr_epi32(0, 4, 1, 1, 1, 1, 1, 1);
    for (int64_t i = 0; i < m; ++i) {
        const void* row = static_cast<const uint8_t*>(x) + size_t(i * ldx) * es;
        int8_t* qi = q + i * k;
        __m256 vmax = _mm256_setzero_ps();  // max_ps(v, acc) keeps acc when v is NaN
        for (int64_t j = 0; j < k; j += 8)
            vmax = _mm256_max_ps(_mm256_and_ps(load8(row, xt, j, k), abs_mask), vmax);
        alignas(32) float lanes[8];
        _mm256_store_ps(lanes, vmax);
        float absmax = 0.f;
        for (float v : lanes) absmax = std::max(absmax, v);
        if (absmax == 0.f) {
            scale[i] = 1.f;
            std::memset(qi, 0, size_t(k));
            continue;
        }
        const float s = absmax / 127.f;
        scale[i] = s;
        const __m256 vs = _mm256_set1_ps(s);
        const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
        for (int64_t j = 0; j < k; j += 8) {
            __m256i r = _mm256_cvtps_epi32(_mm256_div_ps(load8(row, xt, j, k), vs));
            r = _mm256_min_epi32(_mm256_max_epi32(r, lo), hi);
            r = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(r, pick), gather);
            const int64_t bytes = _mm_cvtsi128_si64(_mm256_castsi256_si128(r));
            std::memcpy(qi + j, &bytes, size_t(std::min<int64_t>(8, k - j)));
        }
    }
}

}  // namespace qdit::cpu::detail
