// Gated linear units on the output of a fused gate|up projection.
#pragma once
#include "ops/context.h"

namespace qdit::ops {

// SwiGLU of h [m, n] (F32 or BF16) whose gate is columns [0, out.k) and up columns
// [up_col, up_col + out.k): g = silu(gate)·up, rounded as torch's two ops are
// (backend/cpu/activation.h), written as `out` asks (dense [m, out.k] and / or int8 + scales).
Activation swiglu(const Tensor& h, int64_t up_col, const ActivationSpec& out, const Context& ctx);

// GELU, tanh form (torch's approximate="tanh", backend/cpu/activation.h), of columns [0, out.k) of
// h [m, n] (F32 or BF16), rounded once, written as `out` asks.
Activation gelu_tanh(const Tensor& h, const ActivationSpec& out, const Context& ctx);

}  // namespace qdit::ops
