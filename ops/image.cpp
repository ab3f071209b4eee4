#include "ops/image.h"

#include "backend/cpu/layout.h"
#include "backend/cpu/upsample.h"
#include "ops/dispatch.h"
#ifdef QDIT_WITH_CUDA
#include "backend/cuda/image.h"
#endif

namespace qdit::ops {

namespace {

bool activation_dtype(DType t) { return t == DType::F32 || t == DType::BF16; }

}  // namespace

Tensor to_channels_last(const Tensor& x, DType dt, const Context& ctx) {
    const char* op = "to_channels_last";
    detail::check_device(x, ctx, op, "x");
    if (!x.defined() || x.dim() != 4 || !is_float(x.dtype()) || !activation_dtype(dt) ||
        (ctx.cuda() && !activation_dtype(x.dtype())))
        raise<ShapeError>("{}: x {} {} to {} (need a float [B, C, H, W]; F32 or BF16 on a GPU; to F32 or BF16)", op,
                          x.defined() ? dtype_name(x.dtype()) : "none", x.defined() ? shape_str(x.shape()) : "",
                          dtype_name(dt));
    if (!ctx.cuda()) return cpu::nchw_to_nhwc(x, dt);
#ifdef QDIT_WITH_CUDA
    const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
    Tensor y = empty({B, H, W, C}, dt, ctx);
    cuda::transpose(x.raw(), x.dtype(), y.raw(), dt, B, C, H * W, detail::stream(ctx));
    return y;
#else
    detail::no_cuda(op);
#endif
}

Tensor to_channels_first(const Tensor& x, const Context& ctx) {
    const char* op = "to_channels_first";
    detail::check_device(x, ctx, op, "x");
    if (!x.defined() || x.dim() != 4 || !activation_dtype(x.dtype()))
        raise<ShapeError>("{}: x {} {} (need F32 or BF16 [B, H, W, C])", op,
                          x.defined() ? dtype_name(x.dtype()) : "none", x.defined() ? shape_str(x.shape()) : "");
    if (!ctx.cuda()) return cpu::nhwc_to_nchw(x);
#ifdef QDIT_WITH_CUDA
    const int64_t B = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
    Tensor y = empty({B, C, H, W}, x.dtype(), ctx);
    cuda::transpose(x.raw(), x.dtype(), y.raw(), x.dtype(), B, H * W, C, detail::stream(ctx));
    return y;
#else
    detail::no_cuda(op);
#endif
}

Tensor upsample_nearest_2x(const Tensor& x, const Context& ctx) {
    const char* op = "upsample_nearest_2x";
    detail::check_device(x, ctx, op, "x");
    if (!x.defined() || x.dim() != 4 || !activation_dtype(x.dtype()))
        raise<ShapeError>("{}: x {} {} (need F32 or BF16 [B, H, W, C])", op,
                          x.defined() ? dtype_name(x.dtype()) : "none", x.defined() ? shape_str(x.shape()) : "");
    if (!ctx.cuda()) return cpu::upsample_nearest_2x(x);
#ifdef QDIT_WITH_CUDA
    const int64_t B = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
    Tensor y = empty({B, 2 * H, 2 * W, C}, x.dtype(), ctx);
    cuda::upsample_nearest_2x(x.raw(), y.raw(), x.dtype(), B, H, W, C, detail::stream(ctx));
    return y;
#else
    detail::no_cuda(op);
#endif
}

Tensor image_to_u8(const Tensor& image, const Context& ctx) {
    const char* op = "image_to_u8";
    detail::check_device(image, ctx, op, "image");
    if (!image.defined() || image.dim() != 4 || !activation_dtype(image.dtype()))
        raise<ShapeError>("{}: image {} {} (need F32 or BF16 [B, C, H, W])", op,
                          image.defined() ? dtype_name(image.dtype()) : "none",
                          image.defined() ? shape_str(image.shape()) : "");
    if (!ctx.cuda()) return cpu::image_to_u8(image);
#ifdef QDIT_WITH_CUDA
    const int64_t B = image.size(0), C = image.size(1), H = image.size(2), W = image.size(3);
    Tensor out = empty({B, H, W, C}, DType::U8, ctx);
    cuda::image_to_u8(image.raw(), image.dtype(), out.data<uint8_t>(), B, C, H, W, detail::stream(ctx));
    return out;
#else
    detail::no_cuda(op);
#endif
}

}  // namespace qdit::ops
