// Internals shared by the int8 GEMM paths (backend/cpu only).
//
// Packed weight layout: blocks of 16 output channels; inside a block, groups
// of 4 consecutive k for each of the 16 channels:
//   packed[((nb * kg) + kk) * 64 + j * 4 + t] = q_w[nb * 16 + j][kk * 4 + t]
// with N zero-padded to a multiple of 16 and K to a multiple of 64 (kg = K/4
// rounded up to a multiple of 16 groups). One 64-byte row of the block is
// exactly one zmm operand of vpdpbusd (16 int32 lanes x 4 bytes) or two ymm
// operands for AVX2; 16 consecutive rows (1 KiB) are one AMX B tile (the
// VNNI layout of tdpbssd), which is why K is padded to 64. The SIMD paths walk
// only the k4 = K/4 (rounded up) groups that hold data.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>

#include "backend/cpu/int8_gemm.h"

namespace qdit::cpu::detail {

constexpr int64_t kBlockN = 16;
constexpr int64_t kTileK = 64;  // k per AMX tile row

inline int64_t k4_of(int64_t k) { return (k + 3) / 4; }
// Groups of 4 k per 16-column block in the packed weight (the block stride / 64).
inline int64_t kg_of(int64_t k) { return (k + kTileK - 1) / kTileK * (kTileK / 4); }

enum class Out { S32, F32, BF16 };

struct GemmArgs {
    const int8_t* a;         // [m, k] activations (a kernel may swap in its own copy)
    int64_t m, lda;
    const PackedInt8Weight* w;
    const float* a_scale;    // [m]  (unused for S32)
    const float* bias;       // [n] or null
    void* y;                 // int32 / f32 / bf16 rows
    Out out;
    int64_t ldy;             // row stride of y in elements
};

void gemm_avx512(const GemmArgs& g);
void gemm_amx(const GemmArgs& g);
void gemm_avx2(const GemmArgs& g);

// Quantize rows [0, m) on the calling thread (the dispatcher splits rows).
void quantize_rows_avx512(const void* x, DType xt, int64_t m, int64_t k, int64_t ldx, int8_t* q,
                          float* scale);
void quantize_rows_avx2(const void* x, DType xt, int64_t m, int64_t k, int64_t ldx, int8_t* q,
                        float* scale);

// The epilogue for one element. The fma is explicit so that every path (and
// every compiler contraction setting) rounds identically:
//   y = fma(float(acc) * s_x, s_w, bias).
inline float dequant(int32_t acc, float sx, float sw, float bias) {
    return std::fma(float(acc) * sx, sw, bias);
}

// Scalar epilogue for a tile whose accumulators are in a dense buffer
// acc[r * ld_acc + j], rows [0, rows), columns [n0, n0 + cols).
void store_tile_scalar(const GemmArgs& g, const int32_t* acc, int64_t ld_acc, int64_t m0,
                       int64_t rows, int64_t n0, int64_t cols);

// The AVX-512 epilogue of a tile whose accumulators are acc[r * ld_acc + j]:
// with u8_activations (the +128 copy of vpdpbusd) it first subtracts
// 128 * colsum. Rows [0, rows), columns [n0, n0 + cols).
void store_tile_avx512(const GemmArgs& g, const int32_t* acc, int64_t ld_acc, int64_t m0, int rows,
                       int64_t n0, int cols, bool u8_activations);

// Copies a into rows of K rounded up to k_multiple bytes, M rounded up to
// m_multiple rows, zero-padded (the padded weights are zero too) and XOR-ed
// with `flip` (0x80 turns s8 into u8 + 128 for vpdpbusd), so the kernels read
// whole 4-byte groups (or 16 x 64-byte tiles) and need no tails. Returns args
// pointing at the copy, a buffer of the calling thread valid until its next call.
GemmArgs padded_copy(const GemmArgs& g, uint8_t flip, int64_t k_multiple = 4,
                     int64_t m_multiple = 1);

// Splits the GEMM's (column panel, row step) units into equal contiguous ranges
// on the thread pool; `tile_fn(panel, m_begin, m_end)` processes the rows of
// one panel that fall in a range. k (the depth) sizes the work: small GEMMs
// run on the calling thread.
void run_tasks(int64_t m, int64_t n_panels, int64_t rows_per_step, int64_t k,
               const std::function<void(int64_t, int64_t, int64_t)>& tile_fn);

}  // namespace qdit::cpu::detail
