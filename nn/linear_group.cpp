#include "nn/linear_group.h"

#include <algorithm>

#include "backend/cpu/layout.h"
#include "nn/load.h"
#include "ops/elementwise.h"
#ifdef QDIT_WITH_CUDA
#include "backend/cuda/device_tensor.h"
#include "nn/linear_cuda.h"
#include "nn/load_cuda.h"
#endif

namespace qdit::nn {

LinearGroup::LinearGroup(const Checkpoint& ck, const std::vector<Member>& members, DType compute,
                         const ops::Context& ctx)
    : LinearGroup(&ck, 0, members, compute, ctx) {}

LinearGroup::LinearGroup(const Checkpoint* ck, uint64_t seed, const std::vector<Member>& members, DType compute,
                         const ops::Context& ctx, gpu::CheckpointReader* reader)
    : ctx_(ctx), compute_(compute) {
    if (members.empty()) raise<ShapeError>("a Linear group needs at least one layer");
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
        ms.push_back({m.plan, std::max(m.n_pad, s.out_features), std::max(m.k_pad, s.in_features)});
        cols_.push_back(width_);
        width_ += ms.back().n_pad;
    }
    auto g = std::make_shared<gpu::Group>(
        gpu::make_group(ms, ms[0].k_pad, gpu::WeightSource{ck, seed, static_cast<cudaStream_t>(ctx.stream), reader}));
    spec_ = {g->needs_bf16(), g->needs_int8(), g->k, g->kp};
    bytes_ = g->bytes();
    gpu_ = g;
#else
    (void)seed;
    (void)reader;
    raise<UsageError>("{}: this build of qdit has no CUDA backend", members[0].plan->spec.name);
#endif
}

Tensor LinearGroup::forward(const ops::Activation& in) const {
    const Tensor& x = in.x.defined() ? in.x : in.q;
    if (!x.defined() || x.dim() != 2 || (in.x.defined() && in.x.size(1) != spec_.k))
        raise<ShapeError>("Linear group ({}): input {} (need [m, {}])", cpu_.empty() ? "cuda" : cpu_[0].name(),
                          x.defined() ? shape_str(x.shape()) : "none", spec_.k);
    const int64_t m = x.size(0);
    if (!ctx_.cuda()) {
        if (!in.x.defined()) raise<ShapeError>("Linear group ({}): the CPU reads the dense rows, none given", cpu_[0].name());
        if (cpu_.size() == 1) return cpu_[0].forward(in.x);
        Tensor y = Tensor::empty({m, width_}, compute_);
        for (size_t i = 0; i < cpu_.size(); ++i) cpu::put_columns(y, cols_[i], cpu_[i].forward(in.x));
        return y;
    }
#ifdef QDIT_WITH_CUDA
    const auto& g = *static_cast<const gpu::Group*>(gpu_.get());
    const cudaStream_t s = static_cast<cudaStream_t>(ctx_.stream);
    gpu::Input gi;
    if (in.x.defined()) {
        gi.x = cuda::DTensor::of(in.x);
        gi.ldx = spec_.k;
    }
    if (in.q.defined()) {
        gi.q = cuda::DTensor::of(in.q);
        gi.qs = cuda::DTensor::of(in.qs);
    }
    if ((spec_.dense || !gi.q.defined()) && !gi.x.defined())
        raise<ShapeError>("Linear group: the input lacks the bf16 rows its layers read");
    Tensor y = ops::empty({m, width_}, DType::BF16, ctx_);
    gpu::run_group(g, gi, m, y.raw(), width_, s);
    return y;
#else
    raise<UsageError>("Linear group: this build of qdit has no CUDA backend");
#endif
}

WeightLoader::WeightLoader(const QuantPlan& plan, const Checkpoint* ck, uint64_t seed, DType compute,
                           const ops::Context& ctx, std::string where)
    : ck_(ck), seed_(seed), compute_(compute), ctx_(ctx), where_(std::move(where)) {
    for (const LayerPlan& l : plan.layers) plans_[l.spec.name] = &l;
#ifdef QDIT_WITH_CUDA
    if (ck_ && ctx_.cuda())
        reader_ = std::make_shared<gpu::CheckpointReader>(*ck_, static_cast<cudaStream_t>(ctx_.stream));
#endif
}

const LayerPlan& WeightLoader::plan(const std::string& name) const {
    auto it = plans_.find(name);
    if (it == plans_.end()) raise<ShapeError>("{}: no Linear layer '{}' in the model plan", where_, name);
    return *it->second;
}

LinearGroup WeightLoader::group(const std::vector<LinearGroup::Member>& members) {
    LinearGroup g(ck_, seed_, members, compute_, ctx_, reader_.get());
    bytes_ += g.weight_bytes();
    n_int8_ += g.int8_members();
    return g;
}

Tensor WeightLoader::tensor(const std::string& name, Shape shape, bool norm) {
    Tensor t;
    if (ck_ && reader_) {
#ifdef QDIT_WITH_CUDA
        const cuda::DTensor d = reader_->tensor(name, compute_);
        t = d.as_tensor();
        if (!shape.empty()) t = t.view(std::move(shape));
#endif
    } else if (ck_) {
        t = ck_->get_as(name, compute_);
        t = ops::to_device(shape.empty() ? t : t.view(std::move(shape)), ctx_, ops::Memory::Weight);
    } else {
        if (shape.empty()) raise<ShapeError>("{}: a random tensor '{}' needs its shape", where_, name);
        norm = norm || name.find("norm") != std::string::npos;
        t = ops::random_normal({shape_numel(shape)}, seed_ ^ std::hash<std::string>()(name), norm ? 1.f : 0.f, 0.02f,
                               ctx_)
                .view(std::move(shape));
    }
    bytes_ += t.nbytes();
    return t;
}

}  // namespace qdit::nn
