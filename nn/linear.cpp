#include "nn/linear.h"

#include <utility>
#include <vector>

#include "backend/cpu/dense.h"
#include "backend/cpu/int8_gemm.h"
#include "backend/cpu/int8_weight_only.h"

namespace qdit::nn {

namespace {

Tensor bias_f32(const std::string& name, const Tensor& bias, int64_t n) {
    if (!bias.defined()) return Tensor();
    if (bias.numel() != n || !is_float(bias.dtype()))
        raise<ShapeError>("{}: bias must be a float tensor of {} elements, got {} {}", name, n,
                          dtype_name(bias.dtype()), shape_str(bias.shape()));
    return bias.to(DType::F32).view({n});
}

}  // namespace

struct Linear::Impl {
    bool int8 = false;
    Tensor bias;  // F32 [N] or undefined

    // Dense: the weight as given (oneDNN; the other dtype converted on first use).
    cpu::Dense dense;

    // int8: the packed weight with its scales.
    cpu::PackedInt8Weight packed;

    // int8 weight-only: the weight [N, K] and its scales [N] as given.
    bool weight_only = false;
    Tensor q, scale;
};

Linear::Linear(std::string name, const Tensor& weight, const Tensor& bias)
    : name_(std::move(name)), in_(weight.size(1)), out_(weight.size(0)), impl_(std::make_shared<Impl>()) {
    impl_->bias = bias_f32(name_, bias, out_);
}

Linear Linear::dense(std::string name, Tensor weight, Tensor bias) {
    if (weight.dim() != 2 || (weight.dtype() != DType::F32 && weight.dtype() != DType::BF16))
        raise<ShapeError>("{}: dense Linear weight must be F32 or BF16 [N, K], got {} {}", name,
                          dtype_name(weight.dtype()), shape_str(weight.shape()));
    Linear l(std::move(name), weight, bias);
    l.impl_->dense = cpu::Dense(std::move(weight), l.impl_->bias);
    return l;
}

Linear Linear::int8_weights(std::string name, const Tensor& q, const Tensor& scale, const Tensor& bias) {
    if (q.dim() != 2 || q.dtype() != DType::I8)
        raise<ShapeError>("{}: int8 Linear weight must be I8 [N, K], got {} {}", name,
                          dtype_name(q.dtype()), shape_str(q.shape()));
    if (scale.dtype() != DType::F32 || scale.numel() != q.size(0))
        raise<ShapeError>("{}: int8 weight scale must be F32 [{}], got {} {}", name, q.size(0),
                          dtype_name(scale.dtype()), shape_str(scale.shape()));
    Linear l(std::move(name), q, bias);
    l.impl_->int8 = true;
    return l;
}

Linear Linear::int8(std::string name, Tensor q, Tensor scale, Tensor bias) {
    Linear l = int8_weights(std::move(name), q, scale, bias);
    l.impl_->packed = cpu::pack_int8_weight(q, scale);
    return l;
}

Linear Linear::int8_weight_only(std::string name, Tensor q, Tensor scale, Tensor bias) {
    Linear l = int8_weights(std::move(name), q, scale, bias);
    l.impl_->weight_only = true;
    l.impl_->q = std::move(q);
    l.impl_->scale = std::move(scale);
    return l;
}

bool Linear::quantized() const { return impl_->int8; }

size_t Linear::weight_bytes() const {
    if (!impl_->int8) return impl_->dense.weight().nbytes();
    if (impl_->weight_only) return impl_->q.nbytes() + impl_->scale.nbytes();
    return size_t(out_ * in_) + impl_->packed.scale.nbytes();
}

Tensor Linear::forward(const Tensor& x) const {
    const DType dt = x.dtype();
    if (x.device().type != DeviceType::CPU || (dt != DType::F32 && dt != DType::BF16) ||
        x.dim() < 1 || x.size(-1) != in_)
        raise<ShapeError>("{}: Linear expects a CPU F32 or BF16 input [..., {}], got {} {}", name_,
                          in_, dtype_name(dt), shape_str(x.shape()));
    const int64_t m = x.numel() / in_;
    Shape ys = x.shape();
    ys.back() = out_;
    Tensor y = Tensor::empty(ys, dt);
    if (m == 0) return y;
    const float* bias = impl_->bias.defined() ? impl_->bias.data<float>() : nullptr;

    if (impl_->weight_only) {
        cpu::int8_weight_only_gemm(x.raw(), dt, m, in_, impl_->q.data<int8_t>(), impl_->scale.data<float>(), bias,
                                   y.raw(), out_);
        return y;
    }
    if (impl_->int8) {
        // Per-thread scratch: allocating it per call cost page faults and zero-filling.
        // A Tensor is 64-byte aligned, which lets the AMX kernel read the rows in place.
        thread_local Tensor q;
        thread_local std::vector<float> s;
        if (q.numel() < m * in_) q = Tensor::empty({m * in_}, DType::I8);
        if (s.size() < size_t(m)) s.resize(size_t(m));
        cpu::quantize_rows_int8(x.raw(), dt, m, in_, in_, q.data<int8_t>(), s.data());
        cpu::int8_gemm(q.data<int8_t>(), s.data(), m, impl_->packed, bias, y.raw(), dt, out_);
        return y;
    }

    impl_->dense.forward(x.raw(), dt, m, y.raw());
    return y;
}

}  // namespace qdit::nn
