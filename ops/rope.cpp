#include "ops/rope.h"

#include <cmath>

#include "backend/cpu/layout.h"
#include "backend/cpu/norm.h"
#include "backend/cpu/rope.h"
#include "backend/cpu/rope_half.h"
#include "ops/dispatch.h"
#ifdef QDIT_WITH_CUDA
#include "backend/cuda/rope.h"
#endif

namespace qdit::ops {

Tensor rope_half_table(double theta, int64_t head_dim, const std::vector<int64_t>& pos) {
    return cpu::RotaryHalf(theta, head_dim).freqs(pos);
}

Tensor rope_table(double theta, const std::vector<int64_t>& axes_dims, const std::vector<int64_t>& pos) {
    const int64_t na = int64_t(axes_dims.size());
    int64_t half = 0;
    for (int64_t d : axes_dims) {
        if (d < 2 || d % 2) raise<ShapeError>("rope_table: axis dims must be even and positive, got {}", d);
        half += d / 2;
    }
    if (na == 0 || int64_t(pos.size()) % na)
        raise<ShapeError>("rope_table: {} positions is not a multiple of {} axes", pos.size(), na);
    // torch: 1 / pow(theta, arange(0, d, 2).float() / d) in f32; the angle float(p) · ω in f32.
    std::vector<float> omega;
    for (int64_t d : axes_dims)
        for (int64_t k = 0; k < d / 2; ++k)
            omega.push_back(1.0f / std::pow(float(theta), float(2 * k) / float(d)));
    const int64_t n = int64_t(pos.size()) / na;
    Tensor out = Tensor::empty({n, half, 2}, DType::F32);
    float* o = out.data<float>();
    for (int64_t i = 0; i < n; ++i) {
        int64_t j = 0;
        for (int64_t a = 0; a < na; ++a)
            for (int64_t k = 0; k < axes_dims[size_t(a)] / 2; ++k, ++j) {
                const float angle = float(pos[size_t(i * na + a)]) * omega[size_t(j)];
                o[(i * half + j) * 2] = std::cos(angle);
                o[(i * half + j) * 2 + 1] = std::sin(angle);
            }
    }
    return out;
}

AxesRope::AxesRope(double theta, std::vector<int64_t> axes_dims, std::vector<int64_t> axes_lens)
    : impl_(std::make_shared<const cpu::RopeEmbedder>(theta, std::move(axes_dims), std::move(axes_lens))) {}

Tensor AxesRope::table(const std::vector<int64_t>& pos) const {
    if (!impl_) raise<ShapeError>("AxesRope: the table was never made");
    return static_cast<const cpu::RopeEmbedder*>(impl_.get())->freqs(pos);
}

void qk_rms_norm_rope(Tensor& qkv, int64_t heads, int64_t kv_heads, int64_t head_dim, const Tensor& wq,
                      const Tensor& wk, float eps, const Tensor& freqs, RopeLayout layout, const Context& ctx,
                      const Fp8Qk* e4m3) {
    const char* op = "qk_rms_norm_rope";
    for (const Tensor* t : std::initializer_list<const Tensor*>{&qkv, &wq, &wk, &freqs}) detail::check_device(*t, ctx, op, "an input");
    const int64_t hd = head_dim, n = qkv.dim() == 2 ? qkv.size(0) : -1;
    const bool norm = wq.defined();
    if (n < 0 || heads < 1 || kv_heads < 1 || heads % kv_heads || hd < 2 || hd % 2 ||
        qkv.size(1) != (heads + 2 * kv_heads) * hd || wk.defined() != norm ||
        (norm && (wq.numel() != hd || wk.numel() != hd || wq.dtype() != qkv.dtype() || wk.dtype() != qkv.dtype())) ||
        freqs.dtype() != DType::F32 || freqs.shape() != Shape{n, hd / 2, 2})
        raise<ShapeError>("{}: qkv {} {} with {} heads, {} kv heads of {} dims, freqs {} {} (need qkv [n, (heads + "
                          "2·kv_heads)·head_dim], freqs F32 [n, head_dim/2, 2], both or no weights [head_dim] of "
                          "qkv's dtype)",
                          op, dtype_name(qkv.dtype()), shape_str(qkv.shape()), heads, kv_heads, hd,
                          dtype_name(freqs.dtype()), shape_str(freqs.shape()));
    if (e4m3 && (!ctx.cuda() || !norm || layout != RopeLayout::Interleaved || e4m3->y.dtype() != DType::F8_E4M3 ||
                 e4m3->y.shape() != qkv.shape()))
        raise<ShapeError>("{}: an E4M3 output {} {} for qkv {} (needs CUDA, the q/k norms, the interleaved layout and "
                          "qkv's shape)",
                          op, dtype_name(e4m3->y.dtype()), shape_str(e4m3->y.shape()), shape_str(qkv.shape()));
    if (!ctx.cuda()) {
        const Tensor f = freqs.view({1, n, hd / 2, 2});
        int64_t col = 0;
        for (auto [h, w] : {std::pair{heads, &wq}, std::pair{kv_heads, &wk}}) {
            Tensor part = cpu::take_columns(qkv, col, h * hd).view({1, n, h, hd});
            if (norm) part = cpu::RMSNorm("", *w, eps).forward(part);
            if (layout == RopeLayout::Half)
                cpu::apply_rope_half(part, f);
            else
                cpu::apply_rope(part, f);
            cpu::put_columns(qkv, col, part.view({n, h * hd}));
            col += h * hd;
        }
        return;
    }
#ifdef QDIT_WITH_CUDA
    if (qkv.dtype() != DType::BF16) raise<ShapeError>("{}: CUDA runs bf16 activations, not {}", op, dtype_name(qkv.dtype()));
    cuda::qk_norm_rope(qkv.raw(), qkv.size(1), heads * hd, n, heads, hd, norm ? wq.raw() : nullptr,
                       norm ? wk.raw() : nullptr, eps, freqs.data<float>(), detail::stream(ctx),
                       layout == RopeLayout::Half ? cuda::RopeLayout::Half : cuda::RopeLayout::Interleaved, kv_heads,
                       e4m3 ? static_cast<uint8_t*>(const_cast<void*>(e4m3->y.raw())) : nullptr, qkv.size(1),
                       e4m3 ? static_cast<const float*>(e4m3->scalars.raw()) : nullptr);
#else
    detail::no_cuda(op);
#endif
}

}  // namespace qdit::ops
