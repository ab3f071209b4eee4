// A dense matrix product through oneDNN: y = x · Wᵀ (+ b) with F32 or BF16 activations, f32
// accumulation, the bias added in f32, one rounding to the activations' dtype. The dense path of
// nn::Linear and of ops::Dense on the CPU.
#pragma once
#include <cstdint>
#include <memory>

#include "core/tensor.h"

namespace qdit::cpu {

class Dense {
public:
    Dense() = default;
    // weight [N, K] F32 or BF16 (checked by the caller), bias F32 [N] or undefined.
    Dense(Tensor weight, Tensor bias);

    const Tensor& weight() const;
    const Tensor& bias() const;

    // y [m, N] ← x [m, K] · Wᵀ (+ b), x and y contiguous host rows of dtype dt (F32 or BF16). A
    // weight of the other dtype is converted once, on first use, and kept.
    void forward(const void* x, DType dt, int64_t m, void* y) const;

    struct State;

private:
    std::shared_ptr<State> s_;
};

}  // namespace qdit::cpu
