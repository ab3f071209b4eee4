// y = x · Wᵀ + b, either dense (oneDNN matmul, F32 or BF16), int8 W8A8 (per-token activation
// quantization + the int8 GEMM with fused dequantization) or int8 weight-only (the activations
// as they are, times the int8 weights, scaled per output).
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "core/tensor.h"

namespace qdit::nn {

class Linear {
public:
    // weight [N, K] F32 or BF16; bias [N] (any float dtype, kept as F32) or undefined.
    static Linear dense(std::string name, Tensor weight, Tensor bias);
    // q I8 [N, K] (values in ±127), scale F32 [N] (see quant/int8.h), bias as above.
    static Linear int8(std::string name, Tensor q, Tensor scale, Tensor bias);
    // The same weights, the activations not quantized (backend/cpu/int8_weight_only.h).
    static Linear int8_weight_only(std::string name, Tensor q, Tensor scale, Tensor bias);

    const std::string& name() const { return name_; }
    int64_t in_features() const { return in_; }
    int64_t out_features() const { return out_; }
    bool quantized() const;
    // Bytes held for the weight (and its scales, for int8); the bias is not counted.
    size_t weight_bytes() const;

    // x [..., K] F32 or BF16 -> y [..., N] of the same dtype.
    Tensor forward(const Tensor& x) const;

    struct Impl;

private:
    // Name, shape (of weight [N, K]) and bias: the fields every kind sets.
    Linear(std::string name, const Tensor& weight, const Tensor& bias);
    // The int8 factories' checks and common fields.
    static Linear int8_weights(std::string name, const Tensor& q, const Tensor& scale, const Tensor& bias);

    std::string name_;
    int64_t in_ = 0, out_ = 0;
    std::shared_ptr<Impl> impl_;
};

}  // namespace qdit::nn
