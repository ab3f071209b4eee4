#include "ops/row.h"

#include "backend/cpu/layout.h"
#include "backend/cpu/norm.h"
#include "ops/dispatch.h"
#ifdef QDIT_WITH_CUDA
#include "backend/cuda/zimage_kernels.h"
#endif

namespace qdit::ops {

Activation add_rms_norm(Tensor& x, const Tensor& y, const Tensor& w, float eps, const ActivationSpec& out,
                        const Context& ctx) {
    const char* op = "add_rms_norm";
    for (const Tensor* t : std::initializer_list<const Tensor*>{&x, &y, &w}) detail::check_device(*t, ctx, op, "an input");
    const int64_t m = x.dim() == 2 ? x.size(0) : -1, k = x.dim() == 2 ? x.size(1) : -1;
    if (m < 0 || (y.defined() && (y.shape() != x.shape() || y.dtype() != x.dtype())) ||
        (w.defined() && (w.numel() != k || w.dtype() != x.dtype())) || (w.defined() && out.int8 && out.kp < k))
        raise<ShapeError>("{}: x {} {}, y {}, w {} (need x [m, k], y like x, w [k] of x's dtype)", op,
                          dtype_name(x.dtype()), shape_str(x.shape()), y.defined() ? shape_str(y.shape()) : "none",
                          w.defined() ? shape_str(w.shape()) : "none");
    Activation a;
    if (!ctx.cuda()) {
        if (y.defined()) cpu::add_inplace(x, y);
        if (w.defined()) a.x = cpu::RMSNorm("", w, eps).forward(x);
        return a;
    }
#ifdef QDIT_WITH_CUDA
    if (x.dtype() != DType::BF16) raise<ShapeError>("{}: CUDA runs bf16 activations, not {}", op, dtype_name(x.dtype()));
    cuda::RowOp r;
    r.x = x.raw();
    r.ldx = k;
    if (y.defined()) {
        r.y = y.raw();
        r.ldy = k;
    }
    r.m = m;
    r.k = k;
    if (w.defined()) {
        r.norm = cuda::RowNorm::Rms;
        r.w = w.raw();
        r.eps = eps;
        if (out.dense) {
            a.x = empty({m, k}, DType::BF16, ctx);
            r.out = a.x.raw();
            r.ldo = k;
        }
        if (out.int8) {
            a.q = empty({m, out.kp}, DType::I8, ctx);
            a.qs = empty({m}, DType::F32, ctx);
            r.q = a.q.data<int8_t>();
            r.qs = a.qs.data<float>();
            r.ldq = out.kp;
        }
    }
    cuda::row_op(r, detail::stream(ctx));
    return a;
#else
    detail::no_cuda(op);
#endif
}

}  // namespace qdit::ops
