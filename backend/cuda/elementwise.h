// Elementwise and gather kernels: embedding rows, the adaLN modulation vectors, SiLU (bf16, the CPU
// ops' roundings), the VAE's residual add and latent scaling (F32 or BF16), and the denoising loops'
// Euler step.
// Device pointers; asynchronous on `stream`; qdit::Error on a launch failure.
#pragma once
#include <cstdint>

#include <cuda_runtime.h>

#include "core/dtype.h"

namespace qdit::cuda {

// out[i, :] = table[ids[i], :] for i < n: rows of a bf16 table [vocab, d] (device), ids int32
// (device, each in [0, vocab): the caller checks them; an id outside is not read but gives a zero
// row), out bf16 with row stride ldo >= d.
void embedding_rows(const void* table, int64_t vocab, int64_t d, const int32_t* ids, int64_t n, void* out,
                    int64_t ldo, cudaStream_t stream);

// out F32 [chunks, items, d] from mod bf16 [items, chunks·d] (chunks <= 32): chunk c is v itself
// when bit c of plain_mask is set (shifts, gates without tanh), else bf16(1 + v) when bit c of
// tanh_mask is 0 and bf16(tanh(v)) when it is 1 (the adaLN scales and gates).
void modulation(const void* mod, int64_t chunks, int64_t d, unsigned tanh_mask, float* out, cudaStream_t stream,
                unsigned plain_mask = 0, int64_t items = 1);

// y = bf16(silu(x)) over n bf16 values.
void silu(const void* x, int64_t n, void* y, cudaStream_t stream);

// x ← dt(x + r) over n elements.
void add_inplace(void* x, const void* r, int64_t n, DType dt, cudaStream_t stream);

// ops::div_add: y = dt(dt(dt(x) / scale) + shift) over n elements, x in src_dt (the VAE's
// latents / scaling_factor + shift_factor; for BF16 the caller passes the shift already rounded to
// bf16, as torch adds it).
void div_add(const void* x, DType src_dt, void* y, DType dt, int64_t n, float scale, float shift,
             cudaStream_t stream);

// ops::euler_step over n elements: v = pos + guidance·(pos − neg) (v = pos when neg is null), x ← x +
// dt·(−v), in f32 with each operation rounded once (no fused multiply-add); pos and neg in v_dt, x F32;
// when x_in is not null it receives the new x in in_dt, rounded as the host's f32_to_bf16 does.
void euler_step(float* x, const void* pos, const void* neg, DType v_dt, float guidance, float dt, void* x_in,
                DType in_dt, int64_t n, cudaStream_t stream);

// ops::true_cfg_euler_step over L rows of F values: x F32, pos and neg (null: no CFG) in v_dt, every
// operation rounded to dt as the host's round_to_dtype does, the norms summed in f64 in column order;
// x_in as for euler_step.
void true_cfg_euler_step(float* x, const void* pos, const void* neg, DType v_dt, int64_t L, int64_t F, float scale,
                         float delta, DType dt, void* x_in, DType in_dt, cudaStream_t stream);

}  // namespace qdit::cuda
