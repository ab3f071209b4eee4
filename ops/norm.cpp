#include "ops/norm.h"

#include "backend/cpu/norm.h"
#include "ops/dispatch.h"
#ifdef QDIT_WITH_CUDA
#include "backend/cuda/channel_norm.h"
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

}  // namespace qdit::ops
