// Elementwise ops on activations: SiLU, the adaLN modulation vectors, and the denoising loops' Euler
// step.
#pragma once
#include <vector>

#include "ops/context.h"

namespace qdit::ops {

// silu(x) of x [m, n] (F32 or BF16), rounded once.
Tensor silu(const Tensor& x, const Context& ctx);

// x ← x + y elementwise (same shape, F32 or BF16), rounded once per element as torch's add (the
// residual adds of the VAE decoders).
void add_inplace(Tensor& x, const Tensor& y, const Context& ctx);

// y = dt(dt(dt(x) / divisor) + addend) elementwise: x (any float dtype on the CPU, F32 or BF16 on a
// GPU) → y in dt (F32 or BF16), each operation rounded to dt as torch does on a tensor of that dtype
// (the VAE's latents / scaling_factor + shift_factor). Bit-identical on every backend.
Tensor div_add(const Tensor& x, float divisor, float addend, DType dt, const Context& ctx);

// One flow-matching Euler step of a denoising loop (diffusers' FlowMatchEulerDiscreteScheduler.step
// on the negated velocity, as the Z-Image pipeline calls it), elementwise on the F32 latents x:
//   v = pos + guidance·(pos − neg)  (classifier-free guidance; v = pos when neg is undefined),
//   x ← x + dt·(−v),
// in f32 with each operation rounded once (no fused multiply-add); pos and neg (x's shape, both F32
// or both BF16) are upcast exactly. When x_in is given (x's shape, F32 or BF16) it receives the new x
// in its dtype (round to nearest even): the transformer's next input. Bit-identical on every backend
// (NaN payloads aside).
void euler_step(Tensor& x, const Tensor& pos, const Tensor& neg, float guidance, float dt, Tensor* x_in,
                const Context& ctx);

// QwenImagePipeline's step on the F32 latents x [L, F] (L tokens of F values, each holding a value of
// dt, F32 or BF16), every operation in f32 rounded to dt as torch does on dt tensors (no fused
// multiply-add): with neg, true CFG with the norm rescale of each token's row,
//   comb = dt(neg + dt(scale·dt(pos − neg))),
//   v = dt(comb · dt(dt(‖pos‖) / dt(‖comb‖)))  (each norm summed in f64 in column order),
// else v = pos; then x ← dt(x + dt(delta·v)). pos and neg [L, F] (both F32 or both BF16); x_in as
// for euler_step. Bit-identical on every backend (NaN payloads aside).
void true_cfg_euler_step(Tensor& x, const Tensor& pos, const Tensor& neg, float scale, float delta, DType dt,
                         Tensor* x_in, const Context& ctx);

// The sinusoidal timestep features of diffusers' Z-Image t_embedder, on the host: t F32 [B] → F32
// [B, dim] of [cos(t·f_k), sin(t·f_k)], f_k = exp(−ln(max_period)·k / (dim/2)) in f32.
Tensor timestep_embedding(const Tensor& t, int64_t dim, double max_period = 10000.0);

// A BF16 tensor on a GPU of values N(mean, std) that depend only on `seed` and each element's index
// (random weights for benchmarks at the real size, backend/cuda/random.h). Not on the CPU.
Tensor random_normal(Shape shape, uint64_t seed, float mean, float std, const Context& ctx);

// What a chunk of a modulation Linear's output becomes: 1 + v (a scale), tanh(v) (Z-Image's
// gates) or v itself (shifts, plain gates), each rounded to raw's dtype once.
enum class Mod { OnePlus, Tanh, Plain };

// raw [items, chunks·k] (F32 or BF16; chunks = modes.size() <= 32) → F32 [chunks·items, k]: rows
// [c·items, (c+1)·items) hold columns [c·k, (c+1)·k) of every item mapped by modes[c], the vectors
// ops::row takes (modulation_chunk).
Tensor modulation(const Tensor& raw, const std::vector<Mod>& modes, const Context& ctx);
// Chunk c of modulation's output: F32 [items, k] (a view).
Tensor modulation_chunk(const Tensor& mod, int64_t c, int64_t items);

}  // namespace qdit::ops
