// Elementwise activations and the sinusoidal timestep embedding. F32 or BF16
// in and out, computed in f32, rounded once per torch op for BF16.
#pragma once
#include "core/tensor.h"

namespace qdit::cpu {

// silu(x) = x / (1 + exp(−x)).
Tensor silu(const Tensor& x);

// The SwiGLU gate silu(a) · b, rounded as torch's two ops are (silu, then the product).
Tensor silu_mul(const Tensor& a, const Tensor& b);

// GELU with the tanh approximation (torch's approximate="tanh"):
// 0.5·x·(1 + tanh(sqrt(2/π)·(x + 0.044715·x³))), in f32, rounded once.
Tensor gelu_tanh(const Tensor& x);

// t [B] F32 → F32 [B, dim]: [cos(t·f_k), sin(t·f_k)] (cos first), with
// f_k = exp(−ln(max_period)·k / (dim/2)) in f32; dim must be even.
Tensor timestep_embedding(const Tensor& t, int64_t dim, double max_period = 10000.0);

}  // namespace qdit::cpu
