// CPU int8 W8A8 kernels: per-token activation quantization and an
// int8 x int8 -> int32 GEMM with the dequantization epilogue fused.
// Four paths (scalar reference, AVX2, AVX-512 VNNI, AMX) chosen at run time;
// every one gives the same int32 accumulators and the same output bits.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace qdit::cpu {

// Amx runs the GEMM on AMX tiles; its activation quantization is the AVX-512 one.
enum class Isa { Scalar, Avx2, Avx512Vnni, Amx };
// The path used by default: the fastest one this CPU (and OS) supports, or the
// one named by the environment variable QDIT_CPU_ISA (an isa_name; an unknown
// or unsupported name throws ConfigError).
Isa best_isa();
bool isa_supported(Isa isa);           // Amx: also asks Linux for the tile state, once
const char* isa_name(Isa isa);         // "scalar", "avx2", "avx512-vnni", "amx-int8"
Isa isa_from_name(const std::string& name);  // an isa_name; else ConfigError listing them

// An int8 weight [N, K] repacked once at load time into the layout the
// kernels stream, with what the epilogue needs.
struct PackedInt8Weight {
    int64_t n = 0, k = 0;
    Tensor packed;   // layout private to backend/cpu
    Tensor colsum;   // I32 [N]: sum over k of q_w (for the unsigned-activation trick)
    Tensor scale;    // F32 [N]: per-output-channel weight scale
};
PackedInt8Weight pack_int8_weight(const Tensor& q /* I8 [N,K] */, const Tensor& scale /* F32 [N] */);

// Per-token quantization following quant/int8.h: x is m rows of k values of
// dtype F32 or BF16 with row stride ldx (elements). Writes q (m*k, dense) and scale (m).
void quantize_rows_int8(const void* x, DType xt, int64_t m, int64_t k, int64_t ldx, int8_t* q,
                        float* scale, Isa isa = best_isa());

// c[m, n] = sum_k a[m, k] * w[n, k] as exact int32 (for tests).
void int8_gemm_s32(const int8_t* a, int64_t m, const PackedInt8Weight& w, int32_t* c,
                   Isa isa = best_isa());

// y[m, n] = (sum_k a[m,k] w[n,k]) * a_scale[m] * w.scale[n] + bias[n]
// y has dtype F32 or BF16 and row stride ldy; bias is F32 [N] or null.
void int8_gemm(const int8_t* a, const float* a_scale, int64_t m, const PackedInt8Weight& w,
               const float* bias, void* y, DType yt, int64_t ldy, Isa isa = best_isa());

}  // namespace qdit::cpu
