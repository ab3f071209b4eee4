#include "backend/cpu/dense.h"

#include <map>
#include <mutex>
#include <unordered_map>
#include <utility>

#include <oneapi/dnnl/dnnl.hpp>

namespace qdit::cpu {

namespace {

dnnl::engine& cpu_engine() {
    static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
    return engine;
}

dnnl::memory::data_type dnnl_type(DType t) {
    return t == DType::BF16 ? dnnl::memory::data_type::bf16 : dnnl::memory::data_type::f32;
}

}  // namespace

struct Dense::State {
    Tensor weight, bias;
    // A lazily made copy of the weight in the other dtype for inputs whose dtype differs; matmul
    // primitives cached by (M, dtype).
    std::mutex mu;
    Tensor weight_other;
    std::map<std::pair<int64_t, DType>, dnnl::matmul> matmuls;
};

Dense::Dense(Tensor weight, Tensor bias) : s_(std::make_shared<State>()) {
    s_->weight = std::move(weight);
    s_->bias = std::move(bias);
}

const Tensor& Dense::weight() const { return s_->weight; }
const Tensor& Dense::bias() const { return s_->bias; }

void Dense::forward(const void* x, DType dt, int64_t m, void* y) const {
    if (m == 0) return;
    const int64_t n = s_->weight.size(0), k = s_->weight.size(1);
    const float* bias = s_->bias.defined() ? s_->bias.data<float>() : nullptr;
    using md = dnnl::memory::desc;
    using tag = dnnl::memory::format_tag;
    const auto t = dnnl_type(dt);
    const md src_md({m, k}, t, tag::ab), wei_md({k, n}, t, tag::ba),
        bias_md({1, n}, dnnl::memory::data_type::f32, tag::ab), dst_md({m, n}, t, tag::ab);
    dnnl::matmul mm;
    const Tensor* w = &s_->weight;
    {
        std::lock_guard<std::mutex> lk(s_->mu);
        if (w->dtype() != dt) {
            if (!s_->weight_other.defined()) s_->weight_other = w->to(dt);
            w = &s_->weight_other;
        }
        auto it = s_->matmuls.find({m, dt});
        if (it == s_->matmuls.end()) {
            dnnl::matmul::desc d = bias ? dnnl::matmul::desc(src_md, wei_md, bias_md, dst_md)
                                        : dnnl::matmul::desc(src_md, wei_md, dst_md);
            it = s_->matmuls.emplace(std::make_pair(m, dt), dnnl::matmul(dnnl::matmul::primitive_desc(d, cpu_engine())))
                     .first;
        }
        mm = it->second;
    }
    auto& eng = cpu_engine();
    std::unordered_map<int, dnnl::memory> args{
        {DNNL_ARG_SRC, dnnl::memory(src_md, eng, const_cast<void*>(x))},
        {DNNL_ARG_WEIGHTS, dnnl::memory(wei_md, eng, const_cast<void*>(w->raw()))},
        {DNNL_ARG_DST, dnnl::memory(dst_md, eng, y)}};
    if (bias) args.emplace(DNNL_ARG_BIAS, dnnl::memory(bias_md, eng, const_cast<float*>(bias)));
    dnnl::stream stream(eng);
    mm.execute(stream, args);
    stream.wait();
}

}  // namespace qdit::cpu
