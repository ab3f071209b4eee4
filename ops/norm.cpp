#include "ops/norm.h"

#include "backend/cpu/group_norm.h"
#include "backend/cpu/norm.h"
#include "ops/dispatch.h"
#ifdef QDIT_WITH_CUDA
#include "backend/cuda/channel_norm.h"
#include "backend/cuda/group_norm.h"
#endif

namespace qdit::ops {

Tensor channel_rms_norm(const Tensor& x, const Tensor& gamma, float eps, bool silu, const Context& ctx) {
    const char* op = "channel_rms_norm";
    detail::check_device(x, ctx, op, "x");
    detail::check_device(gamma, ctx, op, "gamma");
    const int64_t C = x.defined() && x.dim() >= 1 ? x.size(-1) : 0;
    if (C < 1 || (x.dtype() != DType::F32 && x.dtype() != DType::BF16) || !gamma.defined() ||
        gamma.dtype() != DType::F32 || gamma.shape() != Shape{C} || !(eps > 0))
        raise<ShapeError>("{}: x {} {}, gamma {} {}, eps {} (need F32 or BF16 x [..., C], F32 gamma [C], eps > 0)", op,
                          x.defined() ? dtype_name(x.dtype()) : "none", x.defined() ? shape_str(x.shape()) : "",
                          gamma.defined() ? dtype_name(gamma.dtype()) : "none",
                          gamma.defined() ? shape_str(gamma.shape()) : "", eps);
    if (!ctx.cuda()) return cpu::channel_rms_norm(x, gamma, eps, silu);
#ifdef QDIT_WITH_CUDA
    Tensor y = empty(x.shape(), x.dtype(), ctx);
    cuda::channel_rms_norm(x.raw(), y.raw(), x.numel() / C, C, x.dtype(), gamma.data<float>(), eps, silu,
                           detail::stream(ctx));
    return y;
#else
    detail::no_cuda(op);
#endif
}

Tensor group_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t groups, float eps, bool silu,
                  const Context& ctx) {
    const char* op = "group_norm";
    detail::check_device(x, ctx, op, "x");
    detail::check_device(weight, ctx, op, "weight");
    detail::check_device(bias, ctx, op, "bias");
    const int64_t C = x.defined() && x.dim() >= 2 ? x.size(-1) : 0;
    auto f32_c = [&](const Tensor& t) { return t.defined() && t.dtype() == DType::F32 && t.shape() == Shape{C}; };
    if (C < 1 || (x.dtype() != DType::F32 && x.dtype() != DType::BF16) || !f32_c(weight) || !f32_c(bias) ||
        groups < 1 || C % groups || !(eps > 0))
        raise<ShapeError>("{}: x {} {}, weight {}, bias {}, {} groups, eps {} (need F32 or BF16 x [B, ..., C], F32 "
                          "weight and bias [C], C a multiple of groups, eps > 0)",
                          op, x.defined() ? dtype_name(x.dtype()) : "none", x.defined() ? shape_str(x.shape()) : "",
                          weight.defined() ? shape_str(weight.shape()) : "none",
                          bias.defined() ? shape_str(bias.shape()) : "none", groups, eps);
    if (!ctx.cuda()) return cpu::group_norm(x, weight, bias, groups, eps, silu);
#ifdef QDIT_WITH_CUDA
    Tensor y = empty(x.shape(), x.dtype(), ctx);
    const int64_t B = x.size(0);
    cuda::group_norm(x.raw(), y.raw(), x.dtype(), B, B ? x.numel() / (B * C) : 0, C, groups,
                     weight.data<float>(), bias.data<float>(), eps, silu, detail::stream(ctx));
    return y;
#else
    detail::no_cuda(op);
#endif
}

}  // namespace qdit::ops
