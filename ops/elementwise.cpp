#include "ops/elementwise.h"

#include <cmath>
#include <utility>
#include <vector>

#include "backend/cpu/activation.h"
#include "backend/cpu/elementwise.h"
#include "backend/cpu/layout.h"
#include "ops/dispatch.h"
#ifdef QDIT_WITH_CUDA
#include "backend/cuda/random.h"
#include "backend/cuda/elementwise.h"
#endif

namespace qdit::ops {

Tensor silu(const Tensor& x, const Context& ctx) {
    const char* op = "silu";
    detail::check_device(x, ctx, op, "x");
    if (!ctx.cuda()) return cpu::silu(x);
#ifdef QDIT_WITH_CUDA
    if (x.dtype() != DType::BF16) raise<ShapeError>("{}: CUDA runs bf16 activations, not {}", op, dtype_name(x.dtype()));
    Tensor y = empty(x.shape(), DType::BF16, ctx);
    cuda::silu(x.raw(), x.numel(), y.raw(), detail::stream(ctx));
    return y;
#else
    detail::no_cuda(op);
#endif
}

Tensor random_normal(Shape shape, uint64_t seed, float mean, float std, const Context& ctx) {
    if (!ctx.cuda()) raise<UsageError>("random_normal: random weights are made on a GPU only");
#ifdef QDIT_WITH_CUDA
    Tensor t = empty(std::move(shape), DType::BF16, ctx, Memory::Weight);
    cuda::fill_normal_bf16(t.raw(), t.numel(), seed, mean, std, detail::stream(ctx));
    return t;
#else
    (void)shape, (void)seed, (void)mean, (void)std;
    detail::no_cuda("random_normal");
#endif
}

void add_inplace(Tensor& x, const Tensor& y, const Context& ctx) {
    const char* op = "add_inplace";
    detail::check_device(x, ctx, op, "x");
    detail::check_device(y, ctx, op, "y");
    if (!x.defined() || !y.defined() || x.shape() != y.shape() || x.dtype() != y.dtype() ||
        (x.dtype() != DType::F32 && x.dtype() != DType::BF16))
        raise<ShapeError>("{}: x {} {} and y {} {} (need the same shape and dtype, F32 or BF16)", op,
                          x.defined() ? dtype_name(x.dtype()) : "none", x.defined() ? shape_str(x.shape()) : "",
                          y.defined() ? dtype_name(y.dtype()) : "none", y.defined() ? shape_str(y.shape()) : "");
    if (!ctx.cuda()) return cpu::add_inplace(x, y);
#ifdef QDIT_WITH_CUDA
    cuda::add_inplace(x.raw(), y.raw(), x.numel(), x.dtype(), detail::stream(ctx));
#else
    detail::no_cuda(op);
#endif
}

Tensor div_add(const Tensor& x, float divisor, float addend, DType dt, const Context& ctx) {
    const char* op = "div_add";
    detail::check_device(x, ctx, op, "x");
    if (!x.defined() || !is_float(x.dtype()) || (dt != DType::F32 && dt != DType::BF16) ||
        (ctx.cuda() && x.dtype() != DType::F32 && x.dtype() != DType::BF16))
        raise<ShapeError>("{}: x {} to {} (need a float x, F32 or BF16 on a GPU, to F32 or BF16)", op,
                          x.defined() ? dtype_name(x.dtype()) : "none", dtype_name(dt));
    if (!ctx.cuda()) return cpu::div_add(x, divisor, addend, dt);
#ifdef QDIT_WITH_CUDA
    Tensor y = empty(x.shape(), dt, ctx);
    cuda::div_add(x.raw(), x.dtype(), y.raw(), dt, x.numel(), divisor, addend, detail::stream(ctx));
    return y;
#else
    detail::no_cuda(op);
#endif
}

namespace {

// The arguments of a denoising step (euler_step, true_cfg_euler_step).
void check_step(const char* op, const Tensor& x, const Tensor& pos, const Tensor& neg, const Tensor* x_in,
                const Context& ctx) {
    for (const auto& [t, what] : {std::pair<const Tensor*, const char*>{&x, "x"}, {&pos, "pos"}, {&neg, "neg"}})
        detail::check_device(*t, ctx, op, what);
    if (x_in) detail::check_device(*x_in, ctx, op, "x_in");
    auto desc = [](const Tensor* t) {
        return t && t->defined() ? fmt::format("{} {}", dtype_name(t->dtype()), shape_str(t->shape())) : std::string("none");
    };
    auto f32_or_bf16 = [](const Tensor& t) { return t.dtype() == DType::F32 || t.dtype() == DType::BF16; };
    if (!x.defined() || x.dtype() != DType::F32 || !pos.defined() || pos.shape() != x.shape() || !f32_or_bf16(pos) ||
        (neg.defined() && (neg.shape() != x.shape() || neg.dtype() != pos.dtype())) ||
        (x_in && (!x_in->defined() || x_in->shape() != x.shape() || !f32_or_bf16(*x_in))))
        raise<ShapeError>("{}: x {}, pos {}, neg {}, x_in {} (need F32 x; pos, neg and x_in of its shape, F32 or "
                          "BF16, neg of pos's dtype)",
                          op, desc(&x), desc(&pos), desc(&neg), desc(x_in));
}

// x_in ← x in x_in's dtype (the CPU steps).
void store_input(const Tensor& x, Tensor* x_in) {
    if (!x_in) return;
    const float* xs = x.data<float>();
    cpu::dispatch_float(x_in->dtype(), [&](auto tag) {
        using I = decltype(tag);
        I* y = x_in->data<I>();
        for (int64_t i = 0; i < x.numel(); ++i) cpu::store(y, i, xs[i]);
    });
}

}  // namespace

void euler_step(Tensor& x, const Tensor& pos, const Tensor& neg, float guidance, float dt, Tensor* x_in,
                const Context& ctx) {
    const char* op = "euler_step";
    check_step(op, x, pos, neg, x_in, ctx);
    const int64_t n = x.numel();
    if (!ctx.cuda()) {
        float* xs = x.data<float>();
        cpu::dispatch_float(pos.dtype(), [&](auto tag) {
            using V = decltype(tag);
            const V* p = pos.data<V>();
            const V* q = neg.defined() ? neg.data<V>() : nullptr;
            for (int64_t i = 0; i < n; ++i) {
                float v = cpu::load(p, i);
                if (q) v = v + guidance * (v - cpu::load(q, i));
                xs[i] = xs[i] + dt * -v;
            }
        });
        store_input(x, x_in);
        return;
    }
#ifdef QDIT_WITH_CUDA
    cuda::euler_step(x.data<float>(), pos.raw(), neg.defined() ? neg.raw() : nullptr, pos.dtype(), guidance, dt,
                     x_in ? x_in->raw() : nullptr, x_in ? x_in->dtype() : DType::F32, n, detail::stream(ctx));
#else
    detail::no_cuda(op);
#endif
}

void true_cfg_euler_step(Tensor& x, const Tensor& pos, const Tensor& neg, float scale, float delta, DType dt,
                         Tensor* x_in, const Context& ctx) {
    const char* op = "true_cfg_euler_step";
    check_step(op, x, pos, neg, x_in, ctx);
    if (x.dim() != 2 || (dt != DType::F32 && dt != DType::BF16))
        raise<ShapeError>("{}: x {} rounded to {} (need [tokens, values], F32 or BF16)", op, shape_str(x.shape()),
                          dtype_name(dt));
    const int64_t L = x.size(0), F = x.size(1);
    if (!ctx.cuda()) {
        float* xs = x.data<float>();
        auto r = [dt](float v) { return round_to_dtype(v, dt); };
        cpu::dispatch_float(pos.dtype(), [&](auto tag) {
            using V = decltype(tag);
            const V* p = pos.data<V>();
            const V* q = neg.defined() ? neg.data<V>() : nullptr;
            std::vector<float> v(static_cast<size_t>(F));
            for (int64_t tok = 0; tok < L; ++tok) {
                const int64_t o = tok * F;
                for (int64_t f = 0; f < F; ++f) v[size_t(f)] = cpu::load(p, o + f);
                if (q) {
                    double cond_sq = 0, comb_sq = 0;
                    for (int64_t f = 0; f < F; ++f) {
                        const float c = v[size_t(f)], u = cpu::load(q, o + f);
                        const float comb = r(u + r(scale * r(c - u)));
                        cond_sq += double(c) * double(c);
                        comb_sq += double(comb) * double(comb);
                        v[size_t(f)] = comb;
                    }
                    const float ratio = r(r(float(std::sqrt(cond_sq))) / r(float(std::sqrt(comb_sq))));
                    for (float& e : v) e = r(e * ratio);
                }
                for (int64_t f = 0; f < F; ++f) xs[o + f] = r(xs[o + f] + r(delta * v[size_t(f)]));
            }
        });
        store_input(x, x_in);
        return;
    }
#ifdef QDIT_WITH_CUDA
    cuda::true_cfg_euler_step(x.data<float>(), pos.raw(), neg.defined() ? neg.raw() : nullptr, pos.dtype(), L, F,
                              scale, delta, dt, x_in ? x_in->raw() : nullptr, x_in ? x_in->dtype() : DType::F32,
                              detail::stream(ctx));
#else
    detail::no_cuda(op);
#endif
}

Tensor timestep_embedding(const Tensor& t, int64_t dim, double max_period) {
    return cpu::timestep_embedding(t, dim, max_period);
}

Tensor modulation(const Tensor& raw, const std::vector<Mod>& modes, const Context& ctx) {
    const char* op = "modulation";
    detail::check_device(raw, ctx, op, "raw");
    const int64_t chunks = int64_t(modes.size());
    if (raw.dim() != 2 || chunks < 1 || chunks > 32 || raw.size(1) % chunks || !is_float(raw.dtype()))
        raise<ShapeError>("{}: raw {} {} in {} chunks (need float [items, chunks·k], at most 32 chunks)", op,
                          dtype_name(raw.dtype()), shape_str(raw.shape()), chunks);
    const int64_t items = raw.size(0), n = raw.size(1), k = n / chunks;
    Tensor out = empty({chunks * items, k}, DType::F32, ctx);
    if (!ctx.cuda()) {
        cpu::dispatch_float(raw.dtype(), [&](auto tag) {
            using T = decltype(tag);
            const T* src = raw.data<T>();
            float* dst = out.data<float>();
            for (int64_t i = 0; i < items * n; ++i) {
                const float v = cpu::load(src, i);
                const int64_t b = i / n, c = (i % n) / k;
                float& o = dst[(c * items + b) * k + i % k];
                switch (modes[size_t(c)]) {
                    case Mod::OnePlus: o = cpu::round_as<T>(1.0f + v); break;
                    case Mod::Tanh: o = cpu::round_as<T>(std::tanh(v)); break;
                    case Mod::Plain: o = v; break;
                }
            }
        });
        return out;
    }
#ifdef QDIT_WITH_CUDA
    if (raw.dtype() != DType::BF16) raise<ShapeError>("{}: CUDA runs bf16 activations, not {}", op, dtype_name(raw.dtype()));
    unsigned tanh_mask = 0, plain_mask = 0;
    for (int64_t c = 0; c < chunks; ++c) {
        if (modes[size_t(c)] == Mod::Tanh) tanh_mask |= 1u << c;
        if (modes[size_t(c)] == Mod::Plain) plain_mask |= 1u << c;
    }
    cuda::modulation(raw.raw(), chunks, k, tanh_mask, out.data<float>(), detail::stream(ctx), plain_mask, items);
    return out;
#else
    detail::no_cuda(op);
#endif
}

Tensor modulation_chunk(const Tensor& mod, int64_t c, int64_t items) {
    if (mod.dim() != 2 || items < 1 || c < 0 || (c + 1) * items > mod.size(0))
        raise<ShapeError>("modulation_chunk: chunk {} of {} items in {}", c, items, shape_str(mod.shape()));
    return mod.slice_rows(c * items, (c + 1) * items);
}

}  // namespace qdit::ops
