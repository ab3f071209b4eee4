// The per-token row op: a residual add fused with the normalization that follows it, writing what
// the next Linear group reads.
#pragma once
#include <vector>

#include "ops/context.h"

namespace qdit::ops {

// Modulation vectors (adaLN scales, shifts and gates) are F32 [items, k] holding values already in
// the activations' precision (ops::modulation writes them). x's m rows are `items` groups of
// consecutive rows (a batch's items), equal unless `groups` gives each group's rows (Qwen-Image's
// text stream holds only each item's real tokens); group b uses row b.
enum class Norm { None, Rms, LayerNorm };

// What is added to the residual stream first; nothing when y is undefined.
struct Residual {
    Tensor y;           // [m, k] like x
    Tensor w;           // when defined: y is RMS-normalized with this weight [k] (x's dtype) first
    float eps = 1e-5f;  // of that RMSNorm
    Tensor gate;        // when defined: F32 [items, k] multiplying (the normalized) y
};

// The normalization of the updated x whose result the op writes.
struct Normalize {
    Norm kind = Norm::None;
    Tensor w;           // Rms: the weight [k] of x's dtype; LayerNorm has no affine parameters
    float eps = 1e-5f;
    Tensor scale;       // when defined: F32 [items, k], the result · scale
    Tensor shift;       // LayerNorm only, with a scale: F32 [items, k], then + shift
};

// One pass per row over the residual stream x [m, k] (F32 or BF16; updated in place when res.y is
// given), every step rounded where torch rounds (backend/cpu/norm.h, layout.h):
//   1. x ← x + y, x + gate·y, x + rms(y; w) or x + gate·rms(y; w);
//   2. norm of the updated x (RMSNorm as diffusers / transformers, or LayerNorm without affine),
//      · scale, + shift, written as `out` asks: the dense rows and / or their per-token int8
//      quantization. With norm.kind None nothing is written (out is ignored).
// groups: empty, or the rows of each of the `items` groups (summing to m; a group may be empty).
Activation row(Tensor& x, const Residual& res, const Normalize& norm, const ActivationSpec& out, const Context& ctx,
               const std::vector<int64_t>& groups = {});

// The pre-norm block's row op: x ← x + y (when y is given), then RMSNorm(x; w) (when w is given).
inline Activation add_rms_norm(Tensor& x, const Tensor& y, const Tensor& w, float eps, const ActivationSpec& out,
                               const Context& ctx) {
    return row(x, Residual{y, {}, eps, {}}, Normalize{w.defined() ? Norm::Rms : Norm::None, w, eps, {}, {}}, out, ctx);
}

}  // namespace qdit::ops
