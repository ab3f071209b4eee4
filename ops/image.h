// Layout moves and resampling of image activations. Inside the op layer, images are channels-last
// [B, H, W, C] (a convolution's input and output, the rows a channel norm reads); the public
// tensors of a model are NCHW like torch's.
#pragma once
#include "ops/context.h"

namespace qdit::ops {

// x [B, C, H, W] (any float dtype on the CPU; F32 or BF16 on a GPU) → [B, H, W, C] in `dt` (F32 or
// BF16), each element converted once (round to nearest even).
Tensor to_channels_last(const Tensor& x, DType dt, const Context& ctx);
// x [B, H, W, C] (F32 or BF16) → [B, C, H, W], same dtype.
Tensor to_channels_first(const Tensor& x, const Context& ctx);

// Nearest upsampling by 2: x [B, H, W, C] (F32 or BF16) → [B, 2H, 2W, C], y[b, i, j] = x[b, i/2, j/2].
// torch's "nearest" and "nearest-exact" modes give the same pixels at an integer scale of 2.
Tensor upsample_nearest_2x(const Tensor& x, const Context& ctx);

// VaeImageProcessor.postprocess(output_type="pil") as uint8: image [B, C, H, W] F32 or BF16 → U8
// [B, H, W, C] = round_half_even(clamp(v, 0, 1) · 255) with v = x·0.5 + 0.5 rounded to the image's
// dtype (torch does it in that dtype), the ·255 and rounding in f32 (numpy); NaN → 0. Bit-identical
// on every backend.
Tensor image_to_u8(const Tensor& image, const Context& ctx);

}  // namespace qdit::ops
