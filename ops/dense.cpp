#include "ops/dense.h"

#include "backend/cpu/dense.h"
#include "ops/dispatch.h"
#ifdef QDIT_WITH_CUDA
#include "backend/cuda/lt_gemm.h"
#endif

namespace qdit::ops {

struct Dense::Impl {
    std::string name;
    int64_t n = 0, k = 0;
    DType dt = DType::F32;
    size_t bytes = 0;
    cpu::Dense cpu;
    Tensor w, b;  // on a GPU: [N, K] and [N] (or undefined) in dt
};

Dense::Dense(std::string name, const Tensor& weight, const Tensor& bias, DType dtype, const Context& ctx) {
    const char* op = "dense";
    if (!weight.defined() || weight.dim() != 2 || !is_float(weight.dtype()) || weight.numel() == 0 ||
        weight.device().type != DeviceType::CPU ||
        (bias.defined() && (bias.shape() != Shape{weight.size(0)} || !is_float(bias.dtype()) ||
                            bias.device().type != DeviceType::CPU)) ||
        (dtype != DType::F32 && dtype != DType::BF16))
        raise<ShapeError>("{} {}: weight {}, bias {}, activations {} (need a host float weight [N, K], bias [N] or "
                          "none, F32 or BF16 activations)",
                          op, name, weight.defined() ? shape_str(weight.shape()) : "none",
                          bias.defined() ? shape_str(bias.shape()) : "none", dtype_name(dtype));
    auto impl = std::make_shared<Impl>();
    impl->name = std::move(name);
    impl->n = weight.size(0);
    impl->k = weight.size(1);
    impl->dt = dtype;
    const Tensor w = weight.to(dtype);
    const Tensor b = bias.defined() ? bias.to(dtype) : Tensor();
    impl->bytes = w.nbytes() + (b.defined() ? b.nbytes() : 0);
    if (!ctx.cuda()) {
        impl->cpu = cpu::Dense(w, b.defined() ? b.to(DType::F32) : Tensor());
    } else {
        impl->w = to_device(w, ctx, Memory::Weight);
        if (b.defined()) impl->b = to_device(b, ctx, Memory::Weight);
    }
    impl_ = std::move(impl);
}

int64_t Dense::in_features() const { return impl_ ? impl_->k : 0; }
int64_t Dense::out_features() const { return impl_ ? impl_->n : 0; }
size_t Dense::weight_bytes() const { return impl_ ? impl_->bytes : 0; }

Tensor Dense::forward(const Tensor& x, const Context& ctx) const {
    const char* op = "dense";
    if (!impl_) raise<UsageError>("{}: the layer was never loaded", op);
    detail::check_device(x, ctx, op, "x");
    const Impl& p = *impl_;
    if (!x.defined() || x.dim() != 2 || x.size(1) != p.k || x.dtype() != p.dt)
        raise<ShapeError>("{} {}: x {} {} (need {} [m, {}])", op, p.name, x.defined() ? dtype_name(x.dtype()) : "none",
                          x.defined() ? shape_str(x.shape()) : "", dtype_name(p.dt), p.k);
    const int64_t m = x.size(0);
    Tensor y = empty({m, p.n}, p.dt, ctx);
    if (!ctx.cuda()) {
        p.cpu.forward(x.raw(), p.dt, m, y.raw());
        return y;
    }
#ifdef QDIT_WITH_CUDA
    cuda::matmul(x.raw(), p.k, p.w.raw(), p.k, true, p.b.defined() ? p.b.raw() : nullptr, y.raw(), p.n, m, p.n,
                 p.k, p.dt, p.dt, detail::stream(ctx));
    return y;
#else
    detail::no_cuda(op);
#endif
}

}  // namespace qdit::ops
