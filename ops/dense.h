// A dense Linear layer of high-precision activations on the context's device: y = x · Wᵀ + b with x
// and W in F32 or BF16, f32 accumulation (true f32 for F32: no TF32 on a GPU), the bias added in
// f32, one rounding to the activations' dtype. oneDNN on the CPU (backend/cpu/dense.h), cuBLASLt on
// a GPU (backend/cuda/lt_gemm.h's matmul). For the few Linear layers that are never quantized
// and run in F32 too (the VAE's mid-block attention); the quantizable Linear layers of the
// transformers are nn::LinearGroup.
#pragma once
#include <memory>
#include <string>

#include "ops/context.h"

namespace qdit::ops {

class Dense {
public:
    Dense() = default;
    // weight [N, K] and bias [N] (or undefined): host tensors of any float dtype, rounded to `dtype`
    // (F32 or BF16: the activations' dtype) as a model loaded in that dtype holds them. Placed on
    // ctx's device.
    Dense(std::string name, const Tensor& weight, const Tensor& bias, DType dtype, const Context& ctx);

    bool defined() const { return impl_ != nullptr; }
    int64_t in_features() const;
    int64_t out_features() const;
    size_t weight_bytes() const;  // on the device, the bias included

    // x [m, K] in the layer's dtype on ctx's device → [m, N].
    Tensor forward(const Tensor& x, const Context& ctx) const;

    struct Impl;

private:
    std::shared_ptr<const Impl> impl_;
};

}  // namespace qdit::ops
