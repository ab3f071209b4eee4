// Normalizations of channels-last image activations (the VAE decoders).
#pragma once
#include "ops/context.h"

namespace qdit::ops {

// The Qwen-Image / Wan VAE's RMS norm over the channels of x [..., C] (F32 or BF16):
// y = ((v / max(‖v‖₂, eps)) · sqrt(C)) · gamma per position, each operation rounded to x's dtype
// as torch's F.normalize(...).to(dtype) · scale · gamma are (backend/cpu/norm.h); with silu, then
// silu(y) rounded once more. gamma F32 [C] on ctx's device (values in x's precision). On a GPU the
// sum of squares is taken in another order (backend/cuda/channel_norm.h).
Tensor channel_rms_norm(const Tensor& x, const Tensor& gamma, float eps, bool silu, const Context& ctx);

// GroupNorm (torch.nn.GroupNorm, affine) of channels-last x [B, ..., C] (F32 or BF16): each item's
// C channels in `groups` runs of C / groups, each run normalised over all its positions; mean and
// biased variance in double, y = x · f32(rstd·w) + f32(b − mean·rstd·w) rounded once to x's dtype;
// with silu, silu of that rounded value, rounded once more (torch's two ops). weight, bias F32 [C]
// on ctx's device (values in x's precision). Numerics: backend/cpu/group_norm.h; a GPU sums in
// double in another order and uses CUDA's expf (within 2 ulp) in the SiLU.
Tensor group_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t groups, float eps, bool silu,
                  const Context& ctx);

}  // namespace qdit::ops
