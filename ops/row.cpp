#include "ops/row.h"

#include <algorithm>

#include "backend/cpu/layout.h"
#include "backend/cpu/norm.h"
#include "ops/dispatch.h"
#ifdef QDIT_WITH_CUDA
#include "backend/cuda/row.h"
#endif

namespace qdit::ops {

Activation row(Tensor& x, const Residual& res, const Normalize& norm, const ActivationSpec& out, const Context& ctx,
               const std::vector<int64_t>& groups) {
    const char* op = "row";
    for (const Tensor* t : std::initializer_list<const Tensor*>{&x, &res.y, &res.w, &res.gate, &norm.w, &norm.scale, &norm.shift})
        detail::check_device(*t, ctx, op, "an input");
    const int64_t m = x.dim() == 2 ? x.size(0) : -1, k = x.dim() == 2 ? x.size(1) : -1;
    if (m < 0 || (res.y.defined() && (res.y.shape() != x.shape() || res.y.dtype() != x.dtype())) ||
        (res.w.defined() && (res.w.numel() != k || res.w.dtype() != x.dtype())))
        raise<ShapeError>("{}: x {} {}, y {}, y's norm weight {} (need x [m, k], y like x, the weight [k] of x's dtype)",
                          op, dtype_name(x.dtype()), shape_str(x.shape()),
                          res.y.defined() ? shape_str(res.y.shape()) : "none",
                          res.w.defined() ? shape_str(res.w.shape()) : "none");
    if ((norm.kind == Norm::Rms) != norm.w.defined() || (norm.w.defined() && (norm.w.numel() != k || norm.w.dtype() != x.dtype())))
        raise<ShapeError>("{}: an RMSNorm needs its weight [{}] of x's dtype ({}), and only it takes one (got {})", op,
                          k, dtype_name(x.dtype()), norm.w.defined() ? shape_str(norm.w.shape()) : "none");
    if (norm.shift.defined() && (norm.kind != Norm::LayerNorm || !norm.scale.defined()))
        raise<ShapeError>("{}: a shift follows a LayerNorm's scale", op);
    if (norm.kind != Norm::None && out.int8 && out.kp < k)
        raise<ShapeError>("{}: int8 rows of stride {} cannot hold {} columns", op, out.kp, k);
    // The modulation vectors agree on the item count, which divides m (or the groups sum to m).
    int64_t items = 0;
    for (const Tensor* v : {&res.gate, &norm.scale, &norm.shift}) {
        if (!v->defined()) continue;
        if (v->dtype() != DType::F32 || v->dim() != 2 || v->size(1) != k || (items && v->size(0) != items) ||
            v->size(0) < 1 || (groups.empty() && m % v->size(0)))
            raise<ShapeError>("{}: modulation {} {} for x {} (need F32 [items, {}], the same items for all, dividing "
                              "the {} rows)",
                              op, dtype_name(v->dtype()), shape_str(v->shape()), shape_str(x.shape()), k, m);
        items = v->size(0);
    }
    if (!res.y.defined() && res.gate.defined()) raise<ShapeError>("{}: a gate without a residual input", op);
    items = std::max<int64_t>(items, 1);
    // Where each group starts (begin[items] = m).
    std::vector<int64_t> begin(size_t(items) + 1, 0);
    if (!groups.empty()) {
        int64_t sum = 0;
        for (int64_t g : groups) sum += g < 0 ? m + 1 : g;
        if (int64_t(groups.size()) != items || sum != m)
            raise<ShapeError>("{}: {} row groups summing to {} for {} items of x {} (need one per item, summing to {})",
                              op, groups.size(), sum, items, shape_str(x.shape()), m);
        for (int64_t b = 0; b < items; ++b) begin[size_t(b) + 1] = begin[size_t(b)] + groups[size_t(b)];
    } else {
        for (int64_t b = 0; b <= items; ++b) begin[size_t(b)] = b * (m / items);
    }
    const int64_t rows = m / items;
    const bool equal = groups.empty() || std::all_of(groups.begin(), groups.end(), [&](int64_t g) { return g == rows; });
    Activation a;
    if (!ctx.cuda() && !equal) {
        // Group by group on the host, into one output.
        if (norm.kind != Norm::None) a.x = Tensor::empty({m, k}, x.dtype());
        auto item_row = [](const Tensor& v, int64_t b) { return v.defined() ? v.slice_rows(b, b + 1) : Tensor(); };
        for (int64_t b = 0; b < items; ++b) {
            const int64_t r0 = begin[size_t(b)], r1 = begin[size_t(b) + 1];
            if (r0 == r1) continue;
            Tensor xb = x.slice_rows(r0, r1);
            const Residual rb{res.y.defined() ? res.y.slice_rows(r0, r1) : Tensor(), res.w, res.eps, item_row(res.gate, b)};
            const Normalize nb{norm.kind, norm.w, norm.eps, item_row(norm.scale, b), item_row(norm.shift, b)};
            const Activation ab = row(xb, rb, nb, out, ctx);
            if (a.x.defined()) copy_rows(a.x, r0, ab.x, 0, r1 - r0, ctx);
        }
        return a;
    }
    if (!ctx.cuda()) {
        Tensor x3 = x.view({items, rows, k});
        if (res.y.defined()) {
            const Tensor y3 = res.y.view({items, rows, k});
            if (res.w.defined())
                cpu::RMSNorm("", res.w, res.eps).add_to(x3, y3, res.gate);
            else if (res.gate.defined())
                cpu::add_gated(x3, y3, res.gate);
            else
                cpu::add_inplace(x3, y3);
        }
        if (norm.kind == Norm::Rms) {
            const cpu::RMSNorm n("", norm.w, norm.eps);
            a.x = norm.scale.defined() ? n.forward_scaled(x3, norm.scale) : n.forward(x3);
        } else if (norm.kind == Norm::LayerNorm) {
            a.x = cpu::layer_norm(x3, norm.eps, norm.scale, norm.shift);
        }
        if (a.x.defined()) a.x = a.x.view({m, k});
        return a;
    }
#ifdef QDIT_WITH_CUDA
    if (x.dtype() != DType::BF16) raise<ShapeError>("{}: CUDA runs bf16 activations, not {}", op, dtype_name(x.dtype()));
    if (norm.kind != Norm::None) {
        ActivationSpec rows = out;
        rows.k = k;  // the dense rows are x's width
        a = detail::allocate(m, rows, ctx);
    }
    auto rows_of = [&](const Tensor& t, int64_t b, int64_t ld) -> void* {
        return t.defined() ? static_cast<uint8_t*>(const_cast<void*>(t.raw())) +
                                 size_t(begin[size_t(b)] * ld) * dtype_size(t.dtype())
                           : nullptr;
    };
    auto item = [&](const Tensor& v, int64_t b) { return v.defined() ? v.data<float>() + b * k : nullptr; };
    for (int64_t b = 0; b < items; ++b) {
        cuda::RowOp r;
        r.x = rows_of(x, b, k);
        r.ldx = k;
        r.y = rows_of(res.y, b, k);
        r.ldy = k;
        r.w_res = res.w.defined() ? res.w.raw() : nullptr;
        r.eps_res = res.eps;
        r.gate = item(res.gate, b);
        r.norm = norm.kind == Norm::Rms ? cuda::RowNorm::Rms
                                        : norm.kind == Norm::LayerNorm ? cuda::RowNorm::LayerNorm : cuda::RowNorm::None;
        r.w = norm.w.defined() ? norm.w.raw() : nullptr;
        r.eps = norm.eps;
        r.scale = item(norm.scale, b);
        r.shift = item(norm.shift, b);
        r.out = rows_of(a.x, b, k);
        r.ldo = k;
        if (a.q.defined()) {
            r.q = static_cast<int8_t*>(rows_of(a.q, b, out.kp));
            r.qs = a.qs.data<float>() + begin[size_t(b)];
            r.ldq = out.kp;
        }
        r.m = begin[size_t(b) + 1] - begin[size_t(b)];
        r.k = k;
        if (r.m > 0) cuda::row_op(r, detail::stream(ctx));
    }
    return a;
#else
    detail::no_cuda(op);
#endif
}

}  // namespace qdit::ops
