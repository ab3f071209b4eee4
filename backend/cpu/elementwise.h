// Helpers for the CPU kernels of nn/: activations are F32 or BF16 tensors,
// every op computes in f32 and, for BF16, rounds once when it stores, which
// is what PyTorch does for each bf16 op. Internal to nn/ and models/.
#pragma once
#include <algorithm>
#include <cstdint>

#include "core/error.h"
#include "core/tensor.h"
#include "core/threads.h"

namespace qdit::cpu {

using bf16_t = uint16_t;  // raw bf16 bits

inline float load(const float* p, int64_t i) { return p[i]; }
inline float load(const bf16_t* p, int64_t i) { return bf16_to_f32(p[i]); }
inline void store(float* p, int64_t i, float v) { p[i] = v; }
inline void store(bf16_t* p, int64_t i, float v) { p[i] = f32_to_bf16(v); }

// The value a store of `v` into element type T would keep.
template <typename T>
inline float round_as(float v) {
    if constexpr (sizeof(T) == 2) return bf16_to_f32(f32_to_bf16(v));
    return v;
}

// Throws unless `t` is a contiguous host F32 or BF16 tensor.
inline void check_activation(const Tensor& t, const char* op) {
    if (!t.defined() || t.device().type != DeviceType::CPU ||
        (t.dtype() != DType::F32 && t.dtype() != DType::BF16))
        raise<ShapeError>("{}: expects a CPU F32 or BF16 tensor, got {}", op,
                          t.defined() ? dtype_name(t.dtype()) : "none");
}

// Calls fn(T{}) with T = float for F32 and bf16_t for BF16.
template <typename Fn>
inline void dispatch_float(DType t, Fn&& fn) {
    if (t == DType::F32)
        fn(float{});
    else if (t == DType::BF16)
        fn(bf16_t{});
    else
        raise<ShapeError>("expected F32 or BF16, got {}", dtype_name(t));
}

// The loop both RoPE layouts share: checks x [B, L, H, D] (F32/BF16) and freqs
// F32 [B, L, D/2, 2] (ShapeError naming `op`), then calls
// rotate(T* head, const float* cos_sin, half) for every token and head, in parallel.
// `rotate` is a generic lambda; T is float or bf16 storage.
void check_rope_args(const Tensor& x, const Tensor& freqs, const char* op);

template <typename Rotate>
void for_each_rope_head(Tensor& x, const Tensor& freqs, const char* op, Rotate&& rotate) {
    check_rope_args(x, freqs, op);
    const int64_t tokens = x.size(0) * x.size(1), heads = x.size(2), half = x.size(3) / 2;
    const float* f = freqs.data<float>();
    dispatch_float(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        T* xp = x.data<T>();
        parallel_for(tokens, std::max<int64_t>(1, 16384 / (heads * half)), [&](int64_t b, int64_t e) {
            for (int64_t t = b; t < e; ++t)
                for (int64_t h = 0; h < heads; ++h)
                    rotate(xp + (t * heads + h) * half * 2, f + t * half * 2, half);
        });
    });
}

}  // namespace qdit::cpu
