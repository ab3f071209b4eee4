// The per-token row op: a residual add fused with the normalization that follows it, writing what
// the next Linear group reads.
#pragma once
#include "ops/context.h"

namespace qdit::ops {

// One pass per row over the residual stream x [m, k] (F32 or BF16, updated in place):
//   1. when y [m, k] is given: x ← x + y, rounded once per element as torch adds;
//   2. when w [k] (x's dtype) is given: RMSNorm of the updated x (diffusers / transformers
//      numerics, backend/cpu/norm.h) written as `out` asks: the dense rows and / or their
//      per-token int8 quantization. Without w nothing is written (out is ignored).
Activation add_rms_norm(Tensor& x, const Tensor& y, const Tensor& w, float eps, const ActivationSpec& out,
                        const Context& ctx);

}  // namespace qdit::ops
