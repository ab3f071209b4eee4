// Row-major 2-D helpers of the CPU ops: column blocks of a [m, n] tensor and the residual add.
#pragma once
#include "core/tensor.h"

namespace qdit::cpu {

// Columns [c0, c0 + w) of x [m, n] as a new contiguous [m, w] tensor.
Tensor take_columns(const Tensor& x, int64_t c0, int64_t w);
// dst[:, c0 : c0 + w) ← src [m, w] (same dtype).
void put_columns(Tensor& dst, int64_t c0, const Tensor& src);
// x ← x + y elementwise (F32 or BF16, same shape), rounded once per element as torch adds.
void add_inplace(Tensor& x, const Tensor& y);
// x ← x + gate · y for x, y [B, L, n] and gate F32 [B, n] (values in x's precision; item b's rows
// use row b): the product and the sum each rounded once, as torch's `x + gate * y` does.
void add_gated(Tensor& x, const Tensor& y, const Tensor& gate);

// [B, C, H, W] (any float dtype) → channels-last [B, H, W, C] in `dt` (each element converted once,
// round to nearest even).
Tensor nchw_to_nhwc(const Tensor& x, DType dt);
// Channels-last [B, H, W, C] → [B, C, H, W], same dtype (4- or 2-byte elements).
Tensor nhwc_to_nchw(const Tensor& x);

// y = dt(dt(dt(x) / divisor) + addend) elementwise, x any float dtype, y in dt (F32 or BF16): each
// operation rounded to dt as torch does it on a tensor of that dtype (ops::div_add).
Tensor div_add(const Tensor& x, float divisor, float addend, DType dt);

// image [B, C, H, W] F32 or BF16 → U8 [B, H, W, C] = round_half_even(clamp(v, 0, 1) · 255) with
// v = x·0.5 + 0.5 rounded to the image's dtype, the ·255 in f32; NaN → 0 (ops::image_to_u8).
Tensor image_to_u8(const Tensor& image);

}  // namespace qdit::cpu
