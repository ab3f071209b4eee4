// Intel AMX int8 GEMM: tdpbssd multiplies the signed int8 activations by the
// signed int8 weights directly (no +128 copy, no column-sum correction), so the
// int32 accumulators are the exact sums of every other path.
//
// Tiles: C 0..3 (a 2 x 2 grid of 16 x 16 int32), A 4..5 (16 rows x 64 k),
// B 6..7 (16 groups of 4 k x 16 columns: 16 consecutive rows of a packed
// weight block, see int8_gemm_internal.h). A micro-tile is 32 rows x 32
// columns; the epilogue is the AVX-512 one.
//
// Blocking: every 32-column panel of the weight re-reads the activation rows,
// so they must stay in L2. Rows are taken in blocks and K in chunks such that
// one block's chunk of activations fits kActBlockBytes; a micro-tile's partial
// sums go to memory between chunks (int32 addition is exact in any order).
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "backend/cpu/int8_gemm_internal.h"

namespace qdit::cpu::detail {

namespace {

constexpr int64_t kTileRows = 16;
constexpr int64_t kStepRows = 2 * kTileRows;           // rows per micro-tile
constexpr int64_t kPanelBlocks = 2;                    // 16-column blocks per micro-tile
constexpr int64_t kPanelCols = kPanelBlocks * kBlockN;
constexpr int64_t kMaxBlockRows = 384;                 // rows per block, at most
constexpr int64_t kActBlockBytes = int64_t(1) << 20;   // rows x K chunk of activations

// The 64-byte operand of ldtilecfg (palette 1).
struct alignas(64) TileConfig {
    uint8_t palette = 1;
    uint8_t start_row = 0;
    uint8_t reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
};

void configure_tiles() {
    TileConfig c;
    for (int t = 0; t < 8; ++t) {
        c.colsb[t] = 64;
        c.rows[t] = 16;
    }
    _tile_loadconfig(&c);
}

// One K chunk of a row block.
struct Chunk {
    int64_t k0 = 0;          // first k (a multiple of 64)
    int64_t steps = 0;       // 64-k steps
    bool first = true, last = true;
    int32_t* partial = nullptr;  // [rows][ld_partial] partial sums between chunks
    int64_t ld_partial = 0;
};

// Software prefetch of the next panel's weights into L2, spread over the
// micro-tiles of the current panel: `lines` 64-byte lines of each of the two
// blocks per k step.
struct Prefetch {
    const int8_t* p0 = nullptr;
    const int8_t* p1 = nullptr;
    int64_t lines = 0;
};

// The MT x NT tiles of C over `steps` k steps: a has row stride lda, b is the
// first weight block's chunk, b + bstride the second's. C starts as zero or
// from c_in; it is stored to c_out. Strides ldc_* are in int32 elements.
template <int MT, int NT>
void micro(const int8_t* a, int64_t lda, const int8_t* b, int64_t bstride, int64_t steps,
           const int32_t* c_in, int64_t ldc_in, int32_t* c_out, int64_t ldc_out,
           const Prefetch& pf) {
    const int64_t li = ldc_in * 4;
    if (c_in) {
        _tile_loadd(0, c_in, li);
        if constexpr (NT > 1) _tile_loadd(1, c_in + kBlockN, li);
        if constexpr (MT > 1) _tile_loadd(2, c_in + kTileRows * ldc_in, li);
        if constexpr (MT > 1 && NT > 1) _tile_loadd(3, c_in + kTileRows * ldc_in + kBlockN, li);
    } else {
        _tile_zero(0);
        if constexpr (NT > 1) _tile_zero(1);
        if constexpr (MT > 1) _tile_zero(2);
        if constexpr (MT > 1 && NT > 1) _tile_zero(3);
    }
    for (int64_t s = 0; s < steps; ++s) {
        const int8_t* as = a + s * kTileK;
        const int8_t* bs = b + s * kTileRows * 64;
        for (int64_t l = 0; l < pf.lines; ++l) {
            if (pf.p0) _mm_prefetch(reinterpret_cast<const char*>(pf.p0 + (s * pf.lines + l) * 64), _MM_HINT_T1);
            if (pf.p1) _mm_prefetch(reinterpret_cast<const char*>(pf.p1 + (s * pf.lines + l) * 64), _MM_HINT_T1);
        }
        _tile_loadd(4, as, lda);
        _tile_loadd(6, bs, 64);
        _tile_dpbssd(0, 4, 6);
        if constexpr (NT > 1) {
            _tile_loadd(7, bs + bstride, 64);
            _tile_dpbssd(1, 4, 7);
        }
        if constexpr (MT > 1) {
            _tile_loadd(5, as + kTileRows * lda, lda);
            _tile_dpbssd(2, 5, 6);
            if constexpr (NT > 1) _tile_dpbssd(3, 5, 7);
        }
    }
    const int64_t lo = ldc_out * 4;
    _tile_stored(0, c_out, lo);
    if constexpr (NT > 1) _tile_stored(1, c_out + kBlockN, lo);
    if constexpr (MT > 1) _tile_stored(2, c_out + kTileRows * ldc_out, lo);
    if constexpr (MT > 1 && NT > 1) _tile_stored(3, c_out + kTileRows * ldc_out + kBlockN, lo);
}

using MicroFn = void (*)(const int8_t*, int64_t, const int8_t*, int64_t, int64_t, const int32_t*,
                         int64_t, int32_t*, int64_t, const Prefetch&);

// g: the row block (rows [0, g.m)); rows [m_begin, m_end) of one panel.
void panel_task(const GemmArgs& g, const Chunk& ch, int64_t panel, int64_t m_begin, int64_t m_end) {
    const PackedInt8Weight& w = *g.w;
    const int64_t kg = kg_of(w.k), blocks = round_up(w.n, kBlockN) / kBlockN;
    const int64_t nb0 = panel * kPanelBlocks, n0 = nb0 * kBlockN;
    const bool two_cols = blocks - nb0 > 1;
    const int cols = int(std::min<int64_t>(kPanelCols, w.n - n0));
    const int64_t bstride = kg * 64;  // bytes per packed block
    const int8_t* b = w.packed.data<int8_t>() + nb0 * bstride + ch.k0 * 16;
    // The next panel's chunk (16 lines per k step and block) is prefetched into
    // L2 over this panel's micro-tiles: micro-tile t takes `lines` lines per k
    // step, from line t * lines * steps of each block on.
    const int64_t row_steps = (g.m + kStepRows - 1) / kStepRows;
    const int64_t lines = (kTileRows + row_steps - 1) / row_steps;
    const int64_t next = nb0 + kPanelBlocks;
    const int8_t* next0 = next < blocks ? b + kPanelBlocks * bstride : nullptr;
    const int8_t* next1 = next + 1 < blocks ? b + (kPanelBlocks + 1) * bstride : nullptr;
    alignas(64) int32_t tile[kStepRows * kPanelCols];
    configure_tiles();
    for (int64_t m = m_begin; m < m_end; m += kStepRows) {
        const int64_t t = m / kStepRows;  // micro-tile index in the panel
        Prefetch pf;
        if (t * lines < kTileRows && next0) {
            const int64_t off = t * lines * ch.steps * 64;
            pf = {next0 + off, next1 ? next1 + off : nullptr,
                  std::min(lines, kTileRows - t * lines)};
        }
        const int rows = int(std::min<int64_t>(kStepRows, m_end - m));
        const MicroFn fn = rows > kTileRows ? (two_cols ? micro<2, 2> : micro<2, 1>)
                                            : (two_cols ? micro<1, 2> : micro<1, 1>);
        int32_t* part = ch.partial ? ch.partial + m * ch.ld_partial + n0 : nullptr;
        const int32_t* c_in = ch.first ? nullptr : part;
        if (ch.last) {
            fn(g.a + m * g.lda + ch.k0, g.lda, b, bstride, ch.steps, c_in, ch.ld_partial, tile,
               kPanelCols, pf);
            store_tile_avx512(g, tile, kPanelCols, m, rows, n0, cols, false);
        } else {
            fn(g.a + m * g.lda + ch.k0, g.lda, b, bstride, ch.steps, c_in, ch.ld_partial, part,
               ch.ld_partial, pf);
        }
    }
    _tile_release();
}

}  // namespace

void gemm_amx(const GemmArgs& g) {
    const PackedInt8Weight& w = *g.w;
    // A tile reads 64 bytes of each of 16 rows: the activations are used in
    // place when K is a multiple of 64, M of 16 and the rows start on cache
    // lines (a tile row over two lines loads at half the speed), else through
    // an aligned copy with K and M zero-padded (zeros add nothing to the sums).
    const bool in_place = w.k % kTileK == 0 && g.m % kTileRows == 0 && g.lda % 64 == 0 &&
                          reinterpret_cast<uintptr_t>(g.a) % 64 == 0;
    const GemmArgs ga = in_place ? g : padded_copy(g, 0, kTileK, kTileRows);

    const int64_t n_blocks = (g.m + kMaxBlockRows - 1) / kMaxBlockRows;
    const int64_t block_rows = round_up((g.m + n_blocks - 1) / n_blocks, kStepRows);
    const int64_t total_steps = kg_of(w.k) / kTileRows;
    const int64_t max_steps = std::max<int64_t>(1, kActBlockBytes / (block_rows * kTileK));
    const int64_t n_chunks = (total_steps + max_steps - 1) / max_steps;
    const int64_t chunk_steps = (total_steps + n_chunks - 1) / n_chunks;
    const int64_t panels = (round_up(w.n, kBlockN) / kBlockN + kPanelBlocks - 1) / kPanelBlocks;

    // Partial sums between K chunks: one row block, all columns.
    thread_local Tensor partial;
    const int64_t ld_partial = panels * kPanelCols;
    if (n_chunks > 1 && partial.numel() < block_rows * ld_partial)
        partial = Tensor::empty({block_rows * ld_partial}, DType::I32);

    for (int64_t m0 = 0; m0 < g.m; m0 += block_rows) {
        GemmArgs gb = ga;
        gb.m = std::min(block_rows, g.m - m0);
        gb.a = ga.a + m0 * ga.lda;
        gb.a_scale = g.a_scale ? g.a_scale + m0 : nullptr;
        gb.y = static_cast<uint8_t*>(g.y) + size_t(m0 * g.ldy) * (g.out == Out::BF16 ? 2 : 4);
        for (int64_t s0 = 0; s0 < total_steps; s0 += chunk_steps) {
            Chunk ch;
            ch.k0 = s0 * kTileK;
            ch.steps = std::min(chunk_steps, total_steps - s0);
            ch.first = s0 == 0;
            ch.last = s0 + ch.steps == total_steps;
            if (n_chunks > 1) {
                ch.partial = partial.data<int32_t>();
                ch.ld_partial = ld_partial;
            }
            run_tasks(gb.m, panels, kStepRows, ch.steps * kTileK,
                      [&](int64_t panel, int64_t b, int64_t e) { panel_task(gb, ch, panel, b, e); });
        }
    }
}

}  // namespace qdit::cpu::detail
