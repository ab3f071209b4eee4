#include "ops/glu.h"

#include "backend/cpu/activation.h"
#include "backend/cpu/layout.h"
#include "ops/dispatch.h"
#ifdef QDIT_WITH_CUDA
#include "backend/cuda/row.h"
#endif

namespace qdit::ops {

Activation swiglu(const Tensor& h, int64_t up_col, const ActivationSpec& out, const Context& ctx) {
    const char* op = "swiglu";
    detail::check_device(h, ctx, op, "h");
    const int64_t k = out.k, m = h.dim() == 2 ? h.size(0) : -1;
    if (m < 0 || k < 1 || up_col < k || up_col + k > h.size(1) || (out.int8 && out.kp < k))
        raise<ShapeError>("{}: h {} with {} gate columns and the up columns from {} (need h [m, n] holding both)",
                          op, shape_str(h.shape()), k, up_col);
    Activation a;
    if (!ctx.cuda()) {
        a.x = cpu::silu_mul(cpu::take_columns(h, 0, k), cpu::take_columns(h, up_col, k));
        return a;
    }
#ifdef QDIT_WITH_CUDA
    if (h.dtype() != DType::BF16) raise<ShapeError>("{}: CUDA runs bf16 activations, not {}", op, dtype_name(h.dtype()));
    if (up_col != k) raise<ShapeError>("{}: on CUDA the up columns follow the gate's (at {}, not {})", op, k, up_col);
    a = detail::allocate(m, out, ctx);
    cuda::swiglu(h.raw(), h.size(1), m, k, a.x.defined() ? a.x.raw() : nullptr, k,
                 a.q.defined() ? a.q.data<int8_t>() : nullptr, a.q.defined() ? a.qs.data<float>() : nullptr, out.kp,
                 detail::stream(ctx));
    return a;
#else
    detail::no_cuda(op);
#endif
}

Activation gelu_tanh(const Tensor& h, const ActivationSpec& out, const Context& ctx) {
    const char* op = "gelu_tanh";
    detail::check_device(h, ctx, op, "h");
    const int64_t k = out.k, m = h.dim() == 2 ? h.size(0) : -1;
    if (m < 0 || k < 1 || k > h.size(1) || (out.int8 && out.kp < k))
        raise<ShapeError>("{}: h {} read for {} columns (need h [m, n >= {}])", op, shape_str(h.shape()), k, k);
    Activation a;
    if (!ctx.cuda()) {
        a.x = cpu::gelu_tanh(k == h.size(1) ? h : cpu::take_columns(h, 0, k));
        return a;
    }
#ifdef QDIT_WITH_CUDA
    if (h.dtype() != DType::BF16) raise<ShapeError>("{}: CUDA runs bf16 activations, not {}", op, dtype_name(h.dtype()));
    a = detail::allocate(m, out, ctx);
    cuda::gelu_tanh(h.raw(), h.size(1), m, k, a.x.defined() ? a.x.raw() : nullptr, k,
                    a.q.defined() ? a.q.data<int8_t>() : nullptr, a.q.defined() ? a.qs.data<float>() : nullptr, out.kp,
                    detail::stream(ctx));
    return a;
#else
    detail::no_cuda(op);
#endif
}

}  // namespace qdit::ops
