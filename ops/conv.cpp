#include "ops/conv.h"

#include <cstring>

#include "backend/cpu/conv2d.h"
#include "backend/cpu/layout.h"
#include "ops/dispatch.h"
#ifdef QDIT_WITH_CUDA
#include "backend/cuda/conv.h"
#include "backend/cuda/elementwise.h"
#endif

namespace qdit::ops {

struct Conv2d::Impl {
    std::string name;
    int64_t in = 0, out = 0, kh = 0, kw = 0, pad = 0;
    DType dt = DType::F32;
    size_t bytes = 0;
    cpu::Conv2d cpu;
#ifdef QDIT_WITH_CUDA
    cuda::Conv2d gpu;
#endif
};

Conv2d::Conv2d(std::string name, const Tensor& weight, const Tensor& bias, int64_t padding, DType dtype,
               const Context& ctx) {
    const char* op = "conv2d";
    if (!weight.defined() || weight.dim() != 4 || !is_float(weight.dtype()) || weight.numel() == 0 || padding < 0 ||
        (bias.defined() && (bias.dim() != 1 || bias.size(0) != weight.size(0) || !is_float(bias.dtype()))) ||
        (dtype != DType::F32 && dtype != DType::BF16))
        raise<ShapeError>("{} {}: weight {}, bias {}, padding {}, activations {} (need a float weight [O, I, kh, kw], "
                          "bias [O] or none, padding >= 0, F32 or BF16 activations)",
                          op, name, weight.defined() ? shape_str(weight.shape()) : "none",
                          bias.defined() ? shape_str(bias.shape()) : "none", padding, dtype_name(dtype));
    auto impl = std::make_shared<Impl>();
    impl->name = name;
    impl->out = weight.size(0);
    impl->in = weight.size(1);
    impl->kh = weight.size(2);
    impl->kw = weight.size(3);
    impl->pad = padding;
    impl->dt = dtype;
    impl->bytes = size_t(weight.numel()) * dtype_size(dtype) + (bias.defined() ? size_t(bias.numel()) * 4 : 0);
    const Tensor w = weight.to(dtype);
    const Tensor b = bias.defined() ? bias.to(dtype).to(DType::F32) : Tensor();
    if (!ctx.cuda()) {
        impl->cpu = cpu::Conv2d(name, w, b, padding);
    } else {
#ifdef QDIT_WITH_CUDA
        impl->gpu = cuda::Conv2d(name, w, b, padding, dtype, detail::stream(ctx));
#else
        detail::no_cuda(op);
#endif
    }
    impl_ = std::move(impl);
}

Conv2d Conv2d::causal3d_single_frame(std::string name, const Tensor& weight, const Tensor& bias, DType dtype,
                                     const Context& ctx) {
    if (!weight.defined() || weight.dim() != 5 || !is_float(weight.dtype()) || weight.size(2) < 1 ||
        weight.size(3) != weight.size(4) || weight.size(3) % 2 == 0 || weight.device().type != DeviceType::CPU)
        raise<ShapeError>("causal_conv3d {}: weight {} (need a host float [O, I, kt, k, k], k odd)", name,
                          weight.defined() ? shape_str(weight.shape()) : "none");
    const int64_t O = weight.size(0), I = weight.size(1), kt = weight.size(2), k = weight.size(3);
    // weight[:, :, kt − 1] as a contiguous [O, I, k, k].
    const Tensor& w = weight;
    Tensor last = Tensor::empty({O, I, k, k}, w.dtype());
    const size_t slice = size_t(k * k) * dtype_size(w.dtype());
    const uint8_t* src = static_cast<const uint8_t*>(w.raw());
    uint8_t* dst = static_cast<uint8_t*>(last.raw());
    for (int64_t oi = 0; oi < O * I; ++oi)
        std::memcpy(dst + size_t(oi) * slice, src + (size_t(oi) * size_t(kt) + size_t(kt - 1)) * slice, slice);
    return Conv2d(std::move(name), last, bias, k / 2, dtype, ctx);
}

const std::string& Conv2d::name() const {
    static const std::string none;
    return impl_ ? impl_->name : none;
}
int64_t Conv2d::in_channels() const { return impl_ ? impl_->in : 0; }
int64_t Conv2d::out_channels() const { return impl_ ? impl_->out : 0; }
size_t Conv2d::weight_bytes() const { return impl_ ? impl_->bytes : 0; }

namespace {

void check_input(const Conv2d::Impl* p, const Tensor& x, const Context& ctx, const char* op) {
    if (!p) raise<UsageError>("{}: the layer was never loaded", op);
    detail::check_device(x, ctx, op, "x");
    if (x.dim() != 4 || x.size(3) != p->in || x.dtype() != p->dt || x.size(1) + 2 * p->pad < p->kh ||
        x.size(2) + 2 * p->pad < p->kw)
        raise<ShapeError>("{} {}: x {} {} for a {}x{} kernel, {} -> {} channels, padding {} (need {} [B, H, W, {}])",
                          op, p->name, dtype_name(x.dtype()), shape_str(x.shape()), p->kh, p->kw, p->in, p->out,
                          p->pad, dtype_name(p->dt), p->in);
}

}  // namespace

Tensor Conv2d::forward(const Tensor& x, const Context& ctx) const {
    const char* op = "conv2d";
    check_input(impl_.get(), x, ctx, op);
    if (!ctx.cuda()) return impl_->cpu.forward(x);
#ifdef QDIT_WITH_CUDA
    return impl_->gpu.forward(detail::dev(x), detail::stream(ctx)).as_tensor();
#else
    detail::no_cuda(op);
#endif
}

void Conv2d::forward_add(const Tensor& x, Tensor& acc, const Context& ctx) const {
    const char* op = "conv2d_add";
    check_input(impl_.get(), x, ctx, op);
    detail::check_device(acc, ctx, op, "acc");
    const Shape ys{x.size(0), x.size(1) + 2 * impl_->pad - impl_->kh + 1, x.size(2) + 2 * impl_->pad - impl_->kw + 1,
                   impl_->out};
    if (acc.shape() != ys || acc.dtype() != x.dtype())
        raise<ShapeError>("{} {}: acc {} {} for an output {} {}", op, impl_->name, dtype_name(acc.dtype()),
                          shape_str(acc.shape()), dtype_name(x.dtype()), shape_str(ys));
    if (!ctx.cuda()) {
        if (x.dtype() == DType::BF16)
            cpu::add_inplace(acc, impl_->cpu.forward(x));
        else
            impl_->cpu.forward_add(x, acc);
        return;
    }
#ifdef QDIT_WITH_CUDA
    const Tensor y = impl_->gpu.forward(detail::dev(x), detail::stream(ctx)).as_tensor();
    cuda::add_inplace(acc.raw(), y.raw(), acc.numel(), acc.dtype(), detail::stream(ctx));
#else
    detail::no_cuda(op);
#endif
}

}  // namespace qdit::ops
