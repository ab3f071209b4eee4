#include "nn/linear_group.h"

#include <algorithm>

#include "backend/cpu/layout.h"
#include "nn/load.h"
#include "ops/elementwise.h"
#ifdef QDIT_WITH_CUDA
#include "backend/cuda/device_tensor.h"
#include "nn/linear_cuda.h"
#include "nn/load_cuda.h"
#include "nn/row_split_cuda.h"
#endif

namespace qdit::nn {

LinearGroup::LinearGroup(const Checkpoint* ck, uint64_t seed, const std::vector<Member>& members, DType compute,
                         const ops::Context& ctx, gpu::CheckpointReader* reader, bool row_split)
    : ctx_(ctx), compute_(compute), row_split_(row_split) {
    if (members.empty()) raise<ShapeError>("a Linear group needs at least one layer");
    for (const Member& m : members)
        if (m.window && !ctx.cuda())
            raise<UsageError>("{}: weight windows (tensor parallelism) are made on a GPU only", m.plan->spec.name);
    if (row_split && !ctx.comm)
        raise<UsageError>("{}: a row-split Linear needs a context with a communicator", members[0].plan->spec.name);
    for (const Member& m : members)
        if (int8_weights(m.plan->precision)) ++n_int8_;
    if (!ctx.cuda()) {
        if (!ck) raise<UsageError>("{}: random weights are made on a GPU only", members[0].plan->spec.name);
        const int64_t k = members[0].plan->spec.in_features;
        for (const Member& m : members) {
            if (m.plan->spec.in_features != k)
                raise<ShapeError>("{}: reads {} inputs in a group of {}", m.plan->spec.name, m.plan->spec.in_features, k);
            cols_.push_back(width_);
            cpu_.push_back(load_linear(*ck, *m.plan, compute));
            width_ += m.plan->spec.out_features;
            bytes_ += cpu_.back().weight_bytes();
        }
        spec_ = {true, false, k, k};
        return;
    }
#ifdef QDIT_WITH_CUDA
    if (compute != DType::BF16)
        raise<ShapeError>("{}: CUDA runs bf16 activations, not {}", members[0].plan->spec.name, dtype_name(compute));
    std::vector<gpu::Member> ms;
    for (const Member& m : members) {
        const LinearSpec& s = m.plan->spec;
        if (m.window)
            ms.push_back({m.plan, m.n_pad, m.k_pad, true, m.r0, m.c0});
        else
            ms.push_back({m.plan, std::max(m.n_pad, s.out_features), std::max(m.k_pad, s.in_features)});
        cols_.push_back(width_);
        width_ += ms.back().n_pad;
    }
    auto g = std::make_shared<gpu::Group>(
        gpu::make_group(ms, ms[0].k_pad, gpu::WeightSource{ck, seed, static_cast<cudaStream_t>(ctx.stream), reader}));
    // A row split quantizes its input itself, with the whole token's absmax: it reads dense rows.
    spec_ = row_split ? ops::ActivationSpec{true, false, g->k, g->kp}
                      : ops::ActivationSpec{g->needs_bf16(), g->needs_int8(), g->k, g->kp};
    bytes_ = g->bytes();
    gpu_ = g;
#else
    (void)seed;
    (void)reader;
    raise<UsageError>("{}: this build of qdit has no CUDA backend", members[0].plan->spec.name);
#endif
}

void LinearGroup::keep_on_host() {
    if (!ctx_.cuda()) return;
#ifdef QDIT_WITH_CUDA
    if (row_split_) raise<UsageError>("Linear group: a row-split group's weights stay on the GPU");
    auto& g = *static_cast<gpu::Group*>(gpu_.get());
    gpu::move_to_host(g, static_cast<cudaStream_t>(ctx_.stream));
    bytes_ = g.bytes();
    host_bytes_ = g.host_bytes();
#endif
}

const ops::Context& LinearGroup::context(const ops::Context* on) const {
    if (on && !(on->device == ctx_.device))
        raise<ShapeError>("Linear group: asked to run on {}, its weights are on {}", on->device.str(), ctx_.device.str());
    return on ? *on : ctx_;
}

Tensor LinearGroup::forward(const ops::Activation& in, const ops::Context* on) const {
    const ops::Context& ctx = context(on);
    const Tensor& x = in.x.defined() ? in.x : in.q;
    if (!ctx_.cuda() && cpu_.size() == 1 && in.x.defined() && in.x.dim() == 2 && in.x.size(1) == spec_.k)
        return cpu_[0].forward(in.x);
    Tensor y = ops::empty({x.defined() && x.dim() == 2 ? x.size(0) : 0, width_}, compute_, ctx);
    forward_into(in, y, &ctx);
    return y;
}

void LinearGroup::forward_into(const ops::Activation& in, Tensor& out, const ops::Context* on) const {
    const ops::Context& ctx = context(on);
    const Tensor& x = in.x.defined() ? in.x : in.q;
    const char* name = cpu_.empty() ? "cuda" : cpu_[0].name().c_str();
    if (!x.defined() || x.dim() != 2 || (in.x.defined() && in.x.size(1) != spec_.k))
        raise<ShapeError>("Linear group ({}): input {} (need [m, {}])", name, x.defined() ? shape_str(x.shape()) : "none",
                          spec_.k);
    const int64_t m = x.size(0);
    if (out.shape() != Shape{m, width_} || out.dtype() != compute_ || !(out.device() == ctx_.device))
        raise<ShapeError>("Linear group ({}): output {} {} on {} (need {} [{}, {}] on {})", name, dtype_name(out.dtype()),
                          shape_str(out.shape()), out.device().str(), dtype_name(compute_), m, width_,
                          ctx_.device.str());
    if (!ctx.cuda()) {
        if (!in.x.defined()) raise<ShapeError>("Linear group ({}): the CPU reads the dense rows, none given", name);
        for (size_t i = 0; i < cpu_.size(); ++i) cpu::put_columns(out, cols_[i], cpu_[i].forward(in.x));
        return;
    }
#ifdef QDIT_WITH_CUDA
    // The GEMMs read and write 16-byte aligned rows: a row block of a larger tensor (slice_rows)
    // may start elsewhere, and is then copied to (or from) a fresh buffer.
    auto aligned = [](const Tensor& t) { return !t.defined() || reinterpret_cast<uintptr_t>(t.raw()) % 16 == 0; };
    auto own = [&](const Tensor& t) {
        if (aligned(t)) return t;
        Tensor c = ops::empty(t.shape(), t.dtype(), ctx);
        const Tensor src = t.dim() == 1 ? t.view({t.size(0), 1}) : t;
        Tensor dst = t.dim() == 1 ? c.view({t.size(0), 1}) : c;
        ops::copy_rows(dst, 0, src, 0, m, ctx);
        return c;
    };
    const auto& g = *static_cast<const gpu::Group*>(gpu_.get());
    gpu::Input gi;
    if (in.x.defined()) {
        gi.x = cuda::DTensor::of(own(in.x));
        gi.ldx = spec_.k;
    }
    if (in.q.defined()) {
        gi.q = cuda::DTensor::of(own(in.q));
        gi.qs = cuda::DTensor::of(own(in.qs));
    }
    if ((spec_.dense || !gi.q.defined()) && !gi.x.defined())
        raise<ShapeError>("Linear group: the input lacks the bf16 rows its layers read");
    Tensor y = aligned(out) ? out : ops::empty(out.shape(), out.dtype(), ctx);
    if (row_split_)
        gpu::run_row_split(g, gi, m, y.raw(), width_, *ctx.comm, static_cast<cudaStream_t>(ctx.stream));
    else
        gpu::run_group(g, gi, m, y.raw(), width_, static_cast<cudaStream_t>(ctx.stream));
    if (y.raw() != out.raw()) ops::copy_rows(out, 0, y, 0, m, ctx);
#else
    raise<UsageError>("Linear group: this build of qdit has no CUDA backend");
#endif
}

WeightLoader::WeightLoader(ModelWeights src, const std::string& model, DType compute, const ops::Context& ctx)
    : src_(std::move(src)), compute_(compute), ctx_(ctx) {
    if (compute != DType::F32 && compute != DType::BF16)
        raise<ConfigError>("{} runs in F32 or BF16, not {}", model, dtype_name(compute));
    if (ctx.cuda() && compute != DType::BF16)
        raise<ConfigError>("{} runs in BF16 on {}, not {}", model, ctx.device.str(), dtype_name(compute));
    for (const LayerPlan& l : src_.plan.layers) plans_[l.spec.name] = &l;
#ifdef QDIT_WITH_CUDA
    if (src_.checkpoint && ctx_.cuda())
        reader_ = std::make_shared<gpu::CheckpointReader>(*src_.checkpoint,
                                                          static_cast<cudaStream_t>(ctx_.stream), load_threads());
#endif
}

const LayerPlan& WeightLoader::plan(const std::string& name) const {
    auto it = plans_.find(name);
    if (it == plans_.end()) raise<ShapeError>("{}: no Linear layer '{}' in the model plan", src_.where, name);
    return *it->second;
}

LinearGroup WeightLoader::group(const std::vector<LinearGroup::Member>& members, bool row_split) {
    LinearGroup g(src_.checkpoint, src_.seed, members, compute_, ctx_, reader_.get(), row_split);
    bytes_ += g.weight_bytes();
    n_int8_ += g.int8_members();
    return g;
}

Tensor WeightLoader::tensor(const std::string& name, Shape shape, bool norm) {
    Tensor t;
    if (src_.checkpoint && reader_) {
#ifdef QDIT_WITH_CUDA
        const cuda::DTensor d = reader_->tensor(name, compute_);
        t = d.as_tensor();
        if (!shape.empty()) t = t.view(std::move(shape));
#endif
    } else if (src_.checkpoint) {
        t = src_.checkpoint->get_as(name, compute_);
        t = ops::to_device(shape.empty() ? t : t.view(std::move(shape)), ctx_, ops::Memory::Weight);
    } else {
        if (shape.empty()) raise<ShapeError>("{}: a random tensor '{}' needs its shape", src_.where, name);
        norm = norm || name.find("norm") != std::string::npos;
        t = ops::random_normal({shape_numel(shape)}, src_.seed ^ std::hash<std::string>()(name), norm ? 1.f : 0.f,
                               0.02f, ctx_)
                .view(std::move(shape));
    }
    bytes_ += t.nbytes();
    return t;
}

Tensor WeightLoader::host_tensor(const std::string& name, Shape shape) {
    if (!ctx_.cuda()) return tensor(name, std::move(shape));
    if (src_.checkpoint) {
        const Tensor t = src_.checkpoint->get_as(name, compute_);
        return shape.empty() ? t : t.view(std::move(shape));
    }
    // Random weights: made on the device as tensor() makes them, then brought to the host.
    const size_t before = bytes_;
    const Tensor d = tensor(name, std::move(shape));
    bytes_ = before;
    return ops::to_host(d, ctx_);
}

}  // namespace qdit::nn
