// Row kernels on bf16 activations: the fused residual / norm / modulation pass (row_op) and the
// gated activations (swiglu, gelu_tanh), each writing bf16 and / or the int8 rows the next Linear
// reads. Each follows the CPU op's numerics (backend/cpu/norm.h, activation.h): f32 arithmetic, a
// bf16 rounding wherever the CPU op stores, sums of squares in double; int8 outputs follow
// quant/int8.h (s = absmax / 127 in f32, true division, round half to even, clamp ±127; an
// all-zero row gets s = 1). Quantized rows are written with row stride ldq >= k, the columns
// [k, ldq) set to 0, so a K that the int8 GEMM cannot take (K % 16 != 0) can feed it padded with
// zeros.
//
// All pointers are device pointers; bf16 tensors are passed as void*; row strides in elements.
// Every launcher is asynchronous on `stream` and throws qdit::Error on a launch failure.
#pragma once
#include <cstdint>

#include <cuda_runtime.h>

namespace qdit::cuda {

// One pass per row (token) over the residual stream x [m, k]:
//   1. residual (when y is set), cpu::RMSNorm::add_to: x ← x + gate · rms(y; w_res, eps_res)
//      (gate F32 [k] or null: x ← x + rms(y)); with w_res null a plain add x ← bf16(x + y) (a
//      pre-norm block's residual, as torch adds two bf16 tensors), or with a gate
//      x ← bf16(x + bf16(gate · y)) (cpu::add_gated);
//   2. normalization of (the updated) x: norm = None passes x through, Rms is
//      cpu::RMSNorm::forward[_scaled] (w bf16 [k], scale F32 [k] or null), LayerNorm is
//      cpu::layer_norm (no affine, w unused; scale F32 [k] or null, then shift F32 [k] or null);
//   3. outputs of step 2: bf16 to `out` (or null) and/or int8 to q / qs (or null).
enum class RowNorm { None, Rms, LayerNorm };
struct RowOp {
    void* x = nullptr;
    int64_t ldx = 0;
    const void* y = nullptr;
    int64_t ldy = 0;
    const void* w_res = nullptr;
    float eps_res = 1e-5f;
    const float* gate = nullptr;

    RowNorm norm = RowNorm::None;
    const void* w = nullptr;
    float eps = 1e-5f;
    const float* scale = nullptr;
    const float* shift = nullptr;

    void* out = nullptr;
    int64_t ldo = 0;
    int8_t* q = nullptr;
    float* qs = nullptr;
    int64_t ldq = 0;

    int64_t m = 0, k = 0;
};
void row_op(const RowOp& op, cudaStream_t stream);
// row_op's quantization alone: q [m, ldq] / qs [m] <- the rows of x [m, k] (row stride ldx).
void quantize_rows(const void* x, int64_t ldx, int64_t m, int64_t k, int8_t* q, int64_t ldq, float* qs,
                   cudaStream_t stream);

// Attention computed against n_zero more keys whose rows are zero (their scores 0, their values 0;
// cuDNN's kernel is slower for a key count that is not a multiple of 128), taken back out per row
// and head: o' [m, k] (k = heads·hd, row stride ldo_in) is that attention's output and lse (f32,
// row r's head h at lse[h·ld_lse + r]) its softmax statistics (natural log of the exp-sum, the zero
// keys' n_zero included). The real keys' exp-sum is e^lse − n_zero, so each head's values become
// bf16(o' / (1 − n_zero·e^(−lse))), written as bf16 to out (or null; may be o' itself) and/or int8
// to q / qs (or null) as row_op writes them. Exact up to that rounding while the real keys' exp-sum
// is not far below n_zero: where every score of a row is far below zero (around −7 or less for all
// of its keys) the f32 statistics lose the real keys' share.
void drop_zero_keys(const void* o, int64_t ldo_in, int64_t m, int64_t k, int64_t hd, const float* lse, int64_t ld_lse,
                    int64_t n_zero, void* out, int64_t ldo, int8_t* q, float* qs, int64_t ldq, cudaStream_t stream);

// SwiGLU of the fused w1|w3 output h [m, 2k] (a = columns [0, k), b = [k, 2k), row stride ldh):
// g = bf16(bf16(silu(a)) · b), written as bf16 to out (or null) and/or int8 to q / qs (or null).
void swiglu(const void* h, int64_t ldh, int64_t m, int64_t k, void* out, int64_t ldo, int8_t* q, float* qs,
            int64_t ldq, cudaStream_t stream);

// GELU (tanh form, cpu::gelu_tanh) of h [m, k] (row stride ldh): bf16(gelu(h)), written as bf16 to
// out (or null) and/or int8 to q / qs (or null), as swiglu writes. Computed as v / (1 + e^(−2u)):
// within one bf16 ulp of the exact value (Ops.GeluTanhEveryBf16Value), not bit-equal to the CPU's.
void gelu_tanh(const void* h, int64_t ldh, int64_t m, int64_t k, void* out, int64_t ldo, int8_t* q, float* qs,
               int64_t ldq, cudaStream_t stream);

}  // namespace qdit::cuda
