#include "ops/rope.h"

#include "backend/cpu/layout.h"
#include "backend/cpu/norm.h"
#include "backend/cpu/rope_half.h"
#include "ops/dispatch.h"
#ifdef QDIT_WITH_CUDA
#include "backend/cuda/zimage_kernels.h"
#endif

namespace qdit::ops {

Tensor rope_half_table(double theta, int64_t head_dim, const std::vector<int64_t>& pos) {
    return cpu::RotaryHalf(theta, head_dim).freqs(pos);
}

void qk_rms_norm_rope_half(Tensor& qkv, int64_t heads, int64_t kv_heads, int64_t head_dim, const Tensor& wq,
                           const Tensor& wk, float eps, const Tensor& freqs, const Context& ctx) {
    const char* op = "qk_rms_norm_rope_half";
    for (const Tensor* t : std::initializer_list<const Tensor*>{&qkv, &wq, &wk, &freqs}) detail::check_device(*t, ctx, op, "an input");
    const int64_t hd = head_dim, n = qkv.dim() == 2 ? qkv.size(0) : -1;
    if (n < 0 || heads < 1 || kv_heads < 1 || heads % kv_heads || hd < 2 || hd % 2 ||
        qkv.size(1) != (heads + 2 * kv_heads) * hd || wq.numel() != hd || wk.numel() != hd ||
        wq.dtype() != qkv.dtype() || wk.dtype() != qkv.dtype() || freqs.dtype() != DType::F32 ||
        freqs.shape() != Shape{n, hd / 2, 2})
        raise<ShapeError>("{}: qkv {} {} with {} heads, {} kv heads of {} dims, freqs {} {} (need qkv [n, (heads + "
                          "2·kv_heads)·head_dim], freqs F32 [n, head_dim/2, 2], weights [head_dim] of qkv's dtype)",
                          op, dtype_name(qkv.dtype()), shape_str(qkv.shape()), heads, kv_heads, hd,
                          dtype_name(freqs.dtype()), shape_str(freqs.shape()));
    if (!ctx.cuda()) {
        const Tensor f = freqs.view({1, n, hd / 2, 2});
        int64_t col = 0;
        for (auto [h, w] : {std::pair{heads, &wq}, std::pair{kv_heads, &wk}}) {
            Tensor part = cpu::RMSNorm("", *w, eps).forward(cpu::take_columns(qkv, col, h * hd).view({1, n, h, hd}));
            cpu::apply_rope_half(part, f);
            cpu::put_columns(qkv, col, part.view({n, h * hd}));
            col += h * hd;
        }
        return;
    }
#ifdef QDIT_WITH_CUDA
    if (qkv.dtype() != DType::BF16) raise<ShapeError>("{}: CUDA runs bf16 activations, not {}", op, dtype_name(qkv.dtype()));
    cuda::qk_norm_rope(qkv.raw(), qkv.size(1), heads * hd, n, heads, hd, wq.raw(), wk.raw(), eps,
                       freqs.data<float>(), detail::stream(ctx), cuda::RopeLayout::Half, kv_heads);
#else
    detail::no_cuda(op);
#endif
}

}  // namespace qdit::ops
