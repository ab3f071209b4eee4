// Device helpers for the row kernels (norms, SwiGLU, q/k RoPE, quantization) that keep the CPU
// model's bf16 arithmetic bit for bit without the conversions that run on the SM's XU pipe
// (F2F, FRND, F2I: 16 lanes per cycle per SM, a quarter of the integer and an eighth of the f32
// rate). With one or two such conversions per operation, those kernels were bound by that pipe
// at a third of the memory bandwidth (ncu, bench/cuda/NOTES.md "row kernels and the XU pipe").
//
//   - bf16 rounding of two f32 values with one cvt.rn.bf16x2.f32 (F2FP, not an XU instruction),
//     unpacked with one integer operation per value;
//   - the double-precision sum of squares built from the bf16 bits instead of F2F.F64.F32;
//   - int8 rounding by the 1.5·2^23 addition instead of FRND / F2I.
#pragma once
#include <cstdint>

#include <cuda_bf16.h>

namespace qdit::cuda {

// Two bf16 in one 32-bit word, element 0 in the low half (the memory order of a bf16 pair).
__device__ __forceinline__ float bf16_lo(uint32_t w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float bf16_hi(uint32_t w) { return __uint_as_float(w & 0xffff0000u); }

// RNE conversion of (lo, hi) to a bf16 pair, as __float2bfloat16_rn does for each (NaN → 0x7fff).
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    uint32_t r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// Products and sums of bf16 pairs rounded once to bf16 (HMUL2 / HADD2, two values per instruction).
// For bf16 operands these equal bf16_rn(f32 product) and bf16_rn(f32 sum): the product of two 8-bit
// significands is exact in f32, and a sum is exact in f32 unless the exponents are more than 16
// apart, where both roundings return the larger operand. The _rn intrinsics keep the compiler from
// contracting a product and a following sum into one fma (one rounding where the CPU rounds twice:
// seen as one-ulp differences in x + gate · y).
__device__ __forceinline__ uint32_t mul_bf16x2(uint32_t a, uint32_t b) {
    const __nv_bfloat162 r =
        __hmul2_rn(*reinterpret_cast<const __nv_bfloat162*>(&a), *reinterpret_cast<const __nv_bfloat162*>(&b));
    return *reinterpret_cast<const uint32_t*>(&r);
}
__device__ __forceinline__ uint32_t add_bf16x2(uint32_t a, uint32_t b) {
    const __nv_bfloat162 r =
        __hadd2_rn(*reinterpret_cast<const __nv_bfloat162*>(&a), *reinterpret_cast<const __nv_bfloat162*>(&b));
    return *reinterpret_cast<const uint32_t*>(&r);
}

// Sums of squares of bf16 values in double, as the CPU sums f32 squares (exact for a bf16 above
// 2^-63) in double, with the doubles assembled from the bf16 bits instead of F2F.F64.F32 (an XU
// instruction). The assembled double is |x| · 2^128: the bf16's exponent and fraction bits moved
// under the double's (a shift and one AND-OR), exponent bias 127 → 1023 + 128 by the OR of bit 30.
// The squares then carry a factor 2^256, which leaves every rounding of the sum unchanged (a power
// of two, all terms normal) and is divided out at the end (kSumSqUnscale). A zero (or subnormal)
// bf16 becomes 2^-127 in place of 0, whose square (< 2^-252) changes no double sum with a term
// above 2^-190, nor float(sum) of one without (both 0 in f32): RMSNorm's 1/sqrt(float(Σx²)/k + eps)
// is unchanged. Inf / NaN give 2^128-ish, which still sends float(Σx²) to +inf.
constexpr double kSumSqUnscale = 0x1p-256;

__device__ __forceinline__ double abs_bf16_scaled(uint32_t bits_at_13) {  // bf16 bits << 13
    uint32_t hi;  // (bits & 0x0fffe000) | 0x40000000 as one LOP3 (the compiler splits it in two)
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(hi) : "r"(bits_at_13), "r"(0x0fffe000u), "r"(0x40000000u));
    return __hiloint2double(int(hi), 0);
}

// s + x0² + x1² (scaled by 2^256) for the bf16 pair w, the squares added in turn with one rounding
// each (fma of the exact double product), i.e. `s += double(x0 * x0); s += double(x1 * x1);`.
__device__ __forceinline__ double add_sq2(uint32_t w, double s) {
    const double d0 = abs_bf16_scaled(w << 13), d1 = abs_bf16_scaled(w >> 3);
    return fma(d1, d1, fma(d0, d0, s));
}
// double(x0²) + double(x1²) (scaled by 2^256) for the pair, rounded once.
__device__ __forceinline__ double sq2(uint32_t w) {
    const double d0 = abs_bf16_scaled(w << 13), d1 = abs_bf16_scaled(w >> 3);
    return fma(d0, d0, d1 * d1);
}

// quant/int8.h's rounding q = rint(x / s) (ties to even) for |x| <= amax, s = amax / 127 rounded,
// inv_s = 1 / s rounded, so |x / s| and |x · inv_s| stay below 127.0001 and q within ±127 without
// a clamp. The exact product x · inv_s is within 2^-15 of x / s, so its rint is rint(x / s) unless
// it lies within 2^-12 of a half-integer: quant_fast flags those in `tie` and the caller redoes
// them with quant_exact (IEEE division). fma(x, inv_s, 1.5·2^23) rounds x · inv_s to an integer
// held in its low fraction bits (two's complement in the low byte); both return that word.
constexpr float kRintMagic = 12582912.0f;  // 1.5 · 2^23

__device__ __forceinline__ uint32_t quant_fast(float x, float inv_s, bool& tie) {
    const float m = __fmaf_rn(x, inv_s, kRintMagic);
    const float d = __fmaf_rn(x, inv_s, -__fsub_rn(m, kRintMagic));  // x · inv_s − its rint
    tie |= fabsf(d) > 0.499755859375f;                                // 0.5 − 2^-12
    return __float_as_uint(m);
}
__device__ __forceinline__ uint32_t quant_exact(float x, float s) {
    return __float_as_uint(__fadd_rn(__fdiv_rn(x, s), kRintMagic));
}

// The low bytes of four words as one word (a in byte 0).
__device__ __forceinline__ uint32_t pack_bytes4(uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
    return __byte_perm(__byte_perm(a, b, 0x0040), __byte_perm(c, d, 0x0040), 0x5410);
}

// Eight values (one 16-byte vector of bf16) by the rule above with scale s and inv_s = 1 / s
// rounded, as eight int8 bytes (f[0] in byte 0): the fast path, or the exact division for all
// eight when one lies near a tie.
__device__ __forceinline__ uint2 quantize8(const float (&f)[8], float s, float inv_s) {
    uint32_t r[8];
    bool tie = false;
#pragma unroll
    for (int e = 0; e < 8; ++e) r[e] = quant_fast(f[e], inv_s, tie);
    if (tie) {
#pragma unroll
        for (int e = 0; e < 8; ++e) r[e] = quant_exact(f[e], s);
    }
    return make_uint2(pack_bytes4(r[0], r[1], r[2], r[3]), pack_bytes4(r[4], r[5], r[6], r[7]));
}

}  // namespace qdit::cuda
