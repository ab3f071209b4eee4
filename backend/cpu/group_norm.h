// GroupNorm (torch.nn.GroupNorm, affine) on channels-last activations
// [B, ..., C]: each batch item's channels are split into `groups` runs of
// C / groups, and every run is normalised over all its positions together.
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace qdit::cpu {

// x [B, ..., C] F32 or BF16 → the same shape and dtype; weight and bias F32 [C]
// (checked by the caller, ops::group_norm), C % groups == 0. Mean and variance
// (biased) are taken in double, y = x · scale + shift with scale = f32(rstd · w),
// shift = f32(b − mean · rstd · w), rounded once; with silu, silu(y) where for
// BF16 the norm's output is rounded before the SiLU, as torch's two ops do.
Tensor group_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t groups, float eps,
                  bool silu);

}  // namespace qdit::cpu
