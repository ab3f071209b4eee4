#include "backend/cpu/conv2d.h"

#include <map>
#include <mutex>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include <oneapi/dnnl/dnnl.hpp>

namespace qdit::cpu {

namespace {

dnnl::engine& cpu_engine() {
    static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
    return engine;
}

using md = dnnl::memory::desc;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

dt dnnl_type(DType t) { return t == DType::BF16 ? dt::bf16 : dt::f32; }

}  // namespace

struct Conv2d::Impl {
    Tensor weight;  // F32 [O, I, kh, kw], the layout oneDNN reorders from
    Tensor bias;    // F32 [O] or undefined

    // Primitives per (B, H, W, dtype, accumulate). The weights are reordered
    // into each primitive's preferred layout once; shapes that want the same
    // layout share the copy.
    struct Prim {
        dnnl::convolution_forward conv;
        dnnl::memory weights;
    };
    using Key = std::tuple<int64_t, int64_t, int64_t, DType, bool>;
    std::mutex mu;
    std::map<Key, Prim> prims;
    std::vector<dnnl::memory> packed;
};

Conv2d::Conv2d(std::string name, const Tensor& weight, const Tensor& bias, int64_t padding)
    : name_(std::move(name)), pad_(padding) {
    if (!weight.defined() || weight.dim() != 4 || !is_float(weight.dtype()))
        raise<ShapeError>("{}: Conv2d weight must be a float tensor [O, I, kh, kw], got {}", name_,
                          weight.defined() ? shape_str(weight.shape()) : "none");
    out_ = weight.size(0);
    in_ = weight.size(1);
    kh_ = weight.size(2);
    kw_ = weight.size(3);
    if (padding < 0) raise<ShapeError>("{}: negative padding {}", name_, padding);
    impl_ = std::make_shared<Impl>();
    impl_->weight = weight.to(DType::F32);
    if (bias.defined()) {
        if (bias.numel() != out_ || !is_float(bias.dtype()))
            raise<ShapeError>("{}: Conv2d bias must be a float tensor of {} elements, got {} {}",
                              name_, out_, dtype_name(bias.dtype()), shape_str(bias.shape()));
        impl_->bias = bias.to(DType::F32).view({out_});
    }
}

Shape Conv2d::output_shape(const Tensor& x) const {
    const DType t = x.dtype();
    if (x.device().type != DeviceType::CPU || (t != DType::F32 && t != DType::BF16) ||
        x.dim() != 4 || x.size(3) != in_)
        raise<ShapeError>("{}: Conv2d expects a CPU F32 or BF16 input [B, H, W, {}], got {} {}",
                          name_, in_, dtype_name(t), shape_str(x.shape()));
    const int64_t ho = x.size(1) + 2 * pad_ - kh_ + 1, wo = x.size(2) + 2 * pad_ - kw_ + 1;
    if (ho <= 0 || wo <= 0)
        raise<ShapeError>("{}: input {} is smaller than the {}x{} kernel", name_,
                          shape_str(x.shape()), kh_, kw_);
    return {x.size(0), ho, wo, out_};
}

Tensor Conv2d::forward(const Tensor& x) const {
    Tensor y = Tensor::empty(output_shape(x), x.dtype());
    run(x, y, false);
    return y;
}

void Conv2d::forward_add(const Tensor& x, Tensor& acc) const { run(x, acc, true); }

void Conv2d::run(const Tensor& x, Tensor& y, bool accumulate) const {
    const Shape ys = output_shape(x);
    const DType t = x.dtype();
    if (y.shape() != ys || y.dtype() != t)
        raise<ShapeError>("{}: Conv2d output must be {} {}, got {} {}", name_, dtype_name(t),
                          shape_str(ys), dtype_name(y.dtype()), shape_str(y.shape()));
    const int64_t B = ys[0], H = x.size(1), W = x.size(2), ho = ys[1], wo = ys[2];
    if (B == 0) return;

    // oneDNN names dims in NCHW order whatever the memory layout; nhwc is the layout.
    const md src_md({B, in_, H, W}, dnnl_type(t), tag::nhwc);
    const md dst_md({B, out_, ho, wo}, dnnl_type(t), tag::nhwc);
    const md bias_md({out_}, dt::f32, tag::x);
    const bool has_bias = impl_->bias.defined();
    auto& eng = cpu_engine();
    Impl::Prim prim;
    {
        std::lock_guard<std::mutex> lk(impl_->mu);
        const Impl::Key key{B, H, W, t, accumulate};
        auto it = impl_->prims.find(key);
        if (it == impl_->prims.end()) {
            const md wei_any({out_, in_, kh_, kw_}, dnnl_type(t), tag::any);
            const dnnl::memory::dims stride{1, 1}, pad{pad_, pad_};
            auto d = has_bias ? dnnl::convolution_forward::desc(
                                    dnnl::prop_kind::forward_inference,
                                    dnnl::algorithm::convolution_direct, src_md, wei_any,
                                    bias_md, dst_md, stride, pad, pad)
                              : dnnl::convolution_forward::desc(
                                    dnnl::prop_kind::forward_inference,
                                    dnnl::algorithm::convolution_direct, src_md, wei_any,
                                    dst_md, stride, pad, pad);
            dnnl::primitive_attr attr;
            if (accumulate) {
                dnnl::post_ops po;
                po.append_sum(1.0f);
                attr.set_post_ops(po);
            }
            dnnl::convolution_forward::primitive_desc pd;
            try {
                pd = dnnl::convolution_forward::primitive_desc(d, attr, eng);
            } catch (const dnnl::error& e) {
                raise<Error>("{}: oneDNN has no {} convolution for this CPU ({}); run in F32",
                             name_, dtype_name(t), e.what());
            }
            Impl::Prim p{dnnl::convolution_forward(pd), dnnl::memory()};
            for (const dnnl::memory& m : impl_->packed)
                if (m.get_desc() == pd.weights_desc()) p.weights = m;
            if (!p.weights) {
                const md user_md({out_, in_, kh_, kw_}, dt::f32, tag::oihw);
                dnnl::memory user(user_md, eng, impl_->weight.raw());
                p.weights = dnnl::memory(pd.weights_desc(), eng);
                dnnl::stream s(eng);
                dnnl::reorder(user, p.weights).execute(s, user, p.weights);
                s.wait();
                impl_->packed.push_back(p.weights);
            }
            it = impl_->prims.emplace(key, std::move(p)).first;
        }
        prim = it->second;
    }
    std::unordered_map<int, dnnl::memory> args{
        {DNNL_ARG_SRC, dnnl::memory(src_md, eng, const_cast<void*>(x.raw()))},
        {DNNL_ARG_WEIGHTS, prim.weights},
        {DNNL_ARG_DST, dnnl::memory(dst_md, eng, y.raw())}};
    if (has_bias) args.emplace(DNNL_ARG_BIAS, dnnl::memory(bias_md, eng, impl_->bias.raw()));
    dnnl::stream stream(eng);
    prim.conv.execute(stream, args);
    stream.wait();
}

}  // namespace qdit::cpu
