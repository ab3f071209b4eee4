// Nearest-neighbour upsampling by 2 on channels-last activations, as
// F.interpolate(scale_factor=2, mode="nearest") on the NCHW tensor.
#pragma once
#include "core/tensor.h"

namespace qdit::cpu {

// x [B, H, W, C] (any dtype) → [B, 2H, 2W, C]; out[b, y, x] = in[b, y/2, x/2].
Tensor upsample_nearest_2x(const Tensor& x);

}  // namespace qdit::cpu
