#include "backend/cuda/conv.h"

#include <chrono>
#include <map>
#include <mutex>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "backend/cuda/image.h"
#include "backend/cuda/plan_cache.h"
#include "core/clock.h"
#include "core/error.h"

#if QDIT_WITH_CUDNN
#include <cudnn.h>
#include <cudnn_frontend.h>
#endif

namespace qdit::cuda {

namespace {
constexpr int64_t kChannelAlign = 8;
int64_t padded(int64_t c) { return (c + kChannelAlign - 1) / kChannelAlign * kChannelAlign; }
}  // namespace

struct Conv2d::Impl {
    std::string name;
    int64_t in = 0, out = 0, in_p = 0, out_p = 0, kh = 0, kw = 0, pad = 0;
    DType dt = DType::F32;
    DTensor weight;  // dt [out_p, kh, kw, in_p]
    DTensor bias;    // F32 [out_p] or undefined
};

// ---- cuDNN plans -------------------------------------------------------------------------------

#if QDIT_WITH_CUDNN
namespace {

namespace fe = cudnn_frontend;

enum : int64_t { kX = 1, kW, kB, kY };

// How the bias is applied.
enum class Mode { FusedBias, F32Out, DtOut, NoBias };

struct Key {
    int device;
    DType dt;
    int64_t B, H, W, in_p, out_p, kh, kw, pad;
    bool bias;
    bool operator<(const Key& o) const {
        return std::tie(device, dt, B, H, W, in_p, out_p, kh, kw, pad, bias) <
               std::tie(o.device, o.dt, o.B, o.H, o.W, o.in_p, o.out_p, o.kh, o.kw, o.pad, o.bias);
    }
    int64_t ho() const { return H + 2 * pad - kh + 1; }
    int64_t wo() const { return W + 2 * pad - kw + 1; }
};

struct Plan {
    std::shared_ptr<fe::graph::Graph> graph;
    Mode mode = Mode::NoBias;
    DType out_dt = DType::F32;  // dtype of the graph's output
    int64_t workspace = 0;
    std::string info;
};

struct State {
    std::mutex mu;
    std::map<int, cudnnHandle_t> handles;
    std::map<Key, std::shared_ptr<Plan>> plans;
};

State& state() {
    static State* s = new State();  // handles and plans live as long as the process
    return *s;
}

fe::DataType_t fe_type(DType t) { return t == DType::BF16 ? fe::DataType_t::BFLOAT16 : fe::DataType_t::FLOAT; }

const char* mode_name(Mode m) {
    return m == Mode::FusedBias ? "fused bias"
           : m == Mode::F32Out  ? "f32 output + bias kernel"
           : m == Mode::DtOut   ? "output + bias kernel"
                                : "no bias";
}

// Builds one candidate graph; returns null (with the reason in *why) when cuDNN cannot run it.
std::shared_ptr<Plan> try_build(cudnnHandle_t handle, const Key& k, Mode mode, bool strict, std::string* why) {
    const auto t0 = std::chrono::steady_clock::now();
    auto g = std::make_shared<fe::graph::Graph>();
    g->set_io_data_type(fe_type(k.dt))
        .set_intermediate_data_type(fe::DataType_t::FLOAT)
        .set_compute_data_type(fe::DataType_t::FLOAT);
    auto x = g->tensor(fe::graph::Tensor_attributes()
                           .set_name("X")
                           .set_uid(kX)
                           .set_dim({k.B, k.in_p, k.H, k.W})
                           .set_stride({k.H * k.W * k.in_p, 1, k.W * k.in_p, k.in_p}));
    auto w = g->tensor(fe::graph::Tensor_attributes()
                           .set_name("W")
                           .set_uid(kW)
                           .set_dim({k.out_p, k.in_p, k.kh, k.kw})
                           .set_stride({k.kh * k.kw * k.in_p, 1, k.kw * k.in_p, k.in_p}));
    auto conv_opts = fe::graph::Conv_fprop_attributes()
                         .set_name("conv")
                         .set_padding({k.pad, k.pad})
                         .set_stride({1, 1})
                         .set_dilation({1, 1})
                         .set_compute_data_type(fe::DataType_t::FLOAT);
    auto y = g->conv_fprop(x, w, conv_opts);
    const int64_t ho = k.ho(), wo = k.wo();
    const std::vector<int64_t> ydim{k.B, k.out_p, ho, wo}, ystride{ho * wo * k.out_p, 1, wo * k.out_p, k.out_p};
    DType out_dt = k.dt;
    if (mode == Mode::FusedBias) {
        auto b = g->tensor(fe::graph::Tensor_attributes()
                               .set_name("bias")
                               .set_uid(kB)
                               .set_dim({1, k.out_p, 1, 1})
                               .set_stride({k.out_p, 1, k.out_p, k.out_p})
                               .set_data_type(fe::DataType_t::FLOAT));
        y->set_dim(ydim).set_stride(ystride).set_data_type(fe::DataType_t::FLOAT);
        auto yb = g->pointwise(y, b,
                               fe::graph::Pointwise_attributes()
                                   .set_name("bias_add")
                                   .set_mode(fe::PointwiseMode_t::ADD)
                                   .set_compute_data_type(fe::DataType_t::FLOAT));
        y = yb;
    } else if (mode == Mode::F32Out) {
        out_dt = DType::F32;
    }
    y->set_output(true).set_uid(kY).set_dim(ydim).set_stride(ystride).set_data_type(fe_type(out_dt));

    auto fail = [&](const char* step, fe::error_t e) {
        *why += fmt::format("\n  {}{}: {} failed: {}",
                            mode == Mode::FusedBias ? "fused bias" : mode == Mode::F32Out ? "f32 output" : "output",
                            strict ? "" : " (relaxed)", step, e.get_message());
        return nullptr;
    };
    fe::error_t e = g->validate();
    if (e.is_bad()) return fail("validate", e);
    e = g->build_operation_graph(handle);
    if (e.is_bad()) return fail("build_operation_graph", e);
    e = g->create_execution_plans({fe::HeurMode_t::A, fe::HeurMode_t::FALLBACK});
    if (e.is_bad()) return fail("create_execution_plans", e);
    if (strict) {
        std::vector<fe::NumericalNote_t> barred{fe::NumericalNote_t::DOWN_CONVERT_INPUTS,
                                                fe::NumericalNote_t::REDUCED_PRECISION_REDUCTION,
                                                fe::NumericalNote_t::FFT,
                                                fe::NumericalNote_t::WINOGRAD,
                                                fe::NumericalNote_t::WINOGRAD_TILE_4x4,
                                                fe::NumericalNote_t::WINOGRAD_TILE_6x6,
                                                fe::NumericalNote_t::WINOGRAD_TILE_13x13,
                                                fe::NumericalNote_t::NONDETERMINISTIC};
        if (k.dt == DType::F32) barred.push_back(fe::NumericalNote_t::TENSOR_CORE);
        g->deselect_numeric_notes(barred);
    }
    e = g->check_support(handle);
    if (e.is_bad()) return fail("check_support", e);
    e = g->build_plans(handle);
    if (e.is_bad()) return fail("build_plans", e);

    auto p = std::make_shared<Plan>();
    p->graph = g;
    p->mode = mode;
    p->out_dt = out_dt;
    e = g->get_workspace_size(p->workspace);
    if (e.is_bad()) return fail("get_workspace_size", e);
    std::string engine;
    if (g->get_plan_name(engine).is_bad()) engine = "?";
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    p->info = fmt::format("{}, engine {}{}, built in {:.0f} ms", mode_name(mode), engine,
                          strict ? "" : ", relaxed numerics", ms);
    return p;
}

// ---- the plan cache on disk (plan_cache.h) ----
// Bumped whenever the graphs built above change, so that plans of an older qdit are not reused.
constexpr int kPlanFormat = 1;

std::string cache_key(const Key& k) {
    return plan_cache::key(plan_cache::Kind::Conv, kPlanFormat, k.device,
                           fmt::format("{} x [{}, {}, {}, {}] w [{}, {}, {}] pad {} bias {}", dtype_name(k.dt), k.B,
                                       k.H, k.W, k.in_p, k.out_p, k.kh, k.kw, k.pad, k.bias));
}

// The plan stored for `k`, or null. Its entry holds the mode and `strict` before the graph.
std::shared_ptr<Plan> load_cached(cudnnHandle_t handle, const Key& k, const std::string& key) {
    const auto t0 = std::chrono::steady_clock::now();
    auto valid = [](const std::vector<uint8_t>& x) { return x[0] <= uint8_t(Mode::NoBias) && x[1] <= 1; };
    auto stored = plan_cache::load(plan_cache::Kind::Conv, handle, key, 2, valid);
    if (!stored) return nullptr;
    auto p = std::make_shared<Plan>();
    p->graph = stored->graph;
    p->workspace = stored->workspace;
    p->mode = Mode(stored->extra[0]);
    const bool strict = stored->extra[1] != 0;
    p->out_dt = p->mode == Mode::F32Out ? DType::F32 : k.dt;
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    p->info = fmt::format("{}{}, read from the plan cache in {:.0f} ms", mode_name(p->mode),
                          strict ? "" : ", relaxed numerics", ms);
    return p;
}

std::shared_ptr<Plan> build(cudnnHandle_t handle, const Key& k, const std::string& layer) {
    const std::string key = cache_key(k);
    if (auto p = load_cached(handle, k, key)) return p;
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<Mode> modes;
    if (!k.bias)
        modes = {Mode::NoBias};
    else if (k.dt == DType::F32)
        modes = {Mode::FusedBias, Mode::F32Out};
    else
        modes = {Mode::FusedBias, Mode::F32Out, Mode::DtOut};
    std::string why;
    for (bool strict : {true, false})
        for (Mode m : modes)
            if (auto p = try_build(handle, k, m, strict, &why)) {
                plan_cache::built(plan_cache::Kind::Conv, key, *p->graph, {uint8_t(p->mode), uint8_t(strict)},
                                  seconds_since(t0));
                return p;
            }
    raise<Error>("{}: cuDNN has no {} convolution plan for input [{}, {}, {}, {}] with {}x{} kernel, {} outputs, "
                 "padding {}; tried:{}",
                 layer, dtype_name(k.dt), k.B, k.H, k.W, k.in_p, k.kh, k.kw, k.out_p, k.pad, why);
}

// The handle of the current device and the plan for `k` (built on first use). Holds st.mu.
std::pair<cudnnHandle_t, std::shared_ptr<Plan>> get_plan(State& st, const Key& k, const std::string& layer) {
    auto h = st.handles.find(k.device);
    if (h == st.handles.end()) {
        cudnnHandle_t nh;
        const cudnnStatus_t s = cudnnCreate(&nh);
        if (s != CUDNN_STATUS_SUCCESS)
            raise<Error>("{}: cudnnCreate failed on device {}: {}", layer, k.device, cudnnGetErrorString(s));
        h = st.handles.emplace(k.device, nh).first;
    }
    auto it = st.plans.find(k);
    if (it == st.plans.end()) it = st.plans.emplace(k, build(h->second, k, layer)).first;
    return {h->second, it->second};
}

Key make_key(const Conv2d::Impl& m, int64_t B, int64_t H, int64_t W) {
    int dev = 0;
    check(cudaGetDevice(&dev), m.name.c_str());
    return Key{dev, m.dt, B, H, W, m.in_p, m.out_p, m.kh, m.kw, m.pad, m.bias.defined()};
}

}  // namespace

bool cudnn_conv_available() {
    static const bool ok = cudnnGetVersion() >= 90000;
    return ok;
}

void forget_conv_plans() {
    State& st = state();
    std::lock_guard<std::mutex> lock(st.mu);
    st.plans.clear();
}

#else
bool cudnn_conv_available() { return false; }
void forget_conv_plans() {}
#endif

// ---- Conv2d --------------------------------------------------------------------------------------

Conv2d::Conv2d(std::string name, const Tensor& weight, const Tensor& bias, int64_t padding, DType dtype,
               cudaStream_t stream) {
    auto m = std::make_shared<Impl>();
    m->name = std::move(name);
    if (dtype != DType::F32 && dtype != DType::BF16)
        raise<ShapeError>("{}: CUDA Conv2d runs in F32 or BF16, not {}", m->name, dtype_name(dtype));
    if (!weight.defined() || weight.dim() != 4 || !is_float(weight.dtype()) || weight.numel() == 0)
        raise<ShapeError>("{}: Conv2d weight must be a float tensor [O, I, kh, kw], got {}", m->name,
                          weight.defined() ? shape_str(weight.shape()) : "none");
    if (padding < 0) raise<ShapeError>("{}: negative padding {}", m->name, padding);
    m->dt = dtype;
    m->out = weight.size(0);
    m->in = weight.size(1);
    m->kh = weight.size(2);
    m->kw = weight.size(3);
    m->pad = padding;
    m->in_p = padded(m->in);
    m->out_p = padded(m->out);

    // [O, I, kh, kw] → zero-padded [Op, kh, kw, Ip] (f32 on the host), then the activation dtype.
    const Tensor w32 = weight.to(DType::F32);
    Tensor wp = Tensor::zeros({m->out_p, m->kh, m->kw, m->in_p}, DType::F32);
    const float* src = w32.data<float>();
    float* dst = wp.data<float>();
    for (int64_t o = 0; o < m->out; ++o)
        for (int64_t c = 0; c < m->in; ++c)
            for (int64_t u = 0; u < m->kh; ++u)
                for (int64_t v = 0; v < m->kw; ++v)
                    dst[((o * m->kh + u) * m->kw + v) * m->in_p + c] = src[((o * m->in + c) * m->kh + u) * m->kw + v];
    m->weight = DTensor::upload(wp.to(dtype), MemKind::Weight, stream);
    if (bias.defined()) {
        if (bias.numel() != m->out || !is_float(bias.dtype()))
            raise<ShapeError>("{}: Conv2d bias must be a float tensor of {} elements, got {} {}", m->name, m->out,
                              dtype_name(bias.dtype()), shape_str(bias.shape()));
        Tensor bp = Tensor::zeros({m->out_p}, DType::F32);
        const Tensor b32 = bias.to(DType::F32);
        for (int64_t o = 0; o < m->out; ++o) bp.data<float>()[o] = b32.data<float>()[o];
        m->bias = DTensor::upload(bp, MemKind::Weight, stream);
    }
    impl_ = std::move(m);
}

const std::string& Conv2d::name() const { return impl_->name; }
int64_t Conv2d::in_channels() const { return impl_->in; }
int64_t Conv2d::out_channels() const { return impl_->out; }
DType Conv2d::dtype() const { return impl_->dt; }
size_t Conv2d::weight_bytes() const {
    return impl_->weight.nbytes() + (impl_->bias.defined() ? impl_->bias.nbytes() : 0);
}

DTensor Conv2d::forward(const DTensor& x, cudaStream_t stream) const {
    if (!impl_) raise<Error>("CUDA Conv2d: forward on an empty layer");
    const Impl& m = *impl_;
    if (!x.defined() || x.dim() != 4 || x.dtype() != m.dt || x.size(3) != m.in)
        raise<ShapeError>("{}: CUDA Conv2d expects a {} input [B, H, W, {}], got {} {}", m.name, dtype_name(m.dt), m.in,
                          x.defined() ? dtype_name(x.dtype()) : "", x.defined() ? shape_str(x.shape()) : "none");
    const int64_t B = x.size(0), H = x.size(1), W = x.size(2);
    const int64_t ho = H + 2 * m.pad - m.kh + 1, wo = W + 2 * m.pad - m.kw + 1;
    if (ho <= 0 || wo <= 0)
        raise<ShapeError>("{}: input {} is smaller than the {}x{} kernel", m.name, shape_str(x.shape()), m.kh, m.kw);
    DTensor y = DTensor::empty({B, ho, wo, m.out}, m.dt);
    if (B == 0) return y;
#if QDIT_WITH_CUDNN
    if (!cudnn_conv_available()) raise<Error>("{}: CUDA Conv2d needs cuDNN 9, which does not load here", m.name);
    const Key key = make_key(m, B, H, W);
    State& st = state();
    std::lock_guard<std::mutex> lk(st.mu);  // one handle per device: the stream and the enqueue go together
    auto [handle, plan] = get_plan(st, key, m.name);

    DTensor xin = x;
    if (m.in_p != m.in) {
        xin = DTensor::empty({B, H, W, m.in_p}, m.dt);
        copy_channels(x.raw(), m.in, xin.raw(), m.in_p, B * H * W, m.in, m.dt, stream);
    }
    // The graph writes y directly when it applies the bias (or there is none) and O needs no padding.
    const bool direct = (plan->mode == Mode::FusedBias || plan->mode == Mode::NoBias) && m.out_p == m.out;
    DTensor yg = direct ? y : DTensor::empty({B, ho, wo, m.out_p}, plan->out_dt);
    DTensor ws;
    if (plan->workspace > 0) ws = DTensor::empty({plan->workspace}, DType::U8);

    const cudnnStatus_t ss = cudnnSetStream(handle, stream);
    if (ss != CUDNN_STATUS_SUCCESS) raise<Error>("{}: cudnnSetStream failed: {}", m.name, cudnnGetErrorString(ss));
    std::unordered_map<int64_t, void*> ptrs{{kX, xin.raw()}, {kW, m.weight.raw()}, {kY, yg.raw()}};
    if (plan->mode == Mode::FusedBias) ptrs.emplace(kB, m.bias.raw());
    fe::error_t e = plan->graph->execute(handle, ptrs, ws.defined() ? ws.raw() : nullptr);
    if (e.is_bad())
        raise<Error>("{}: cuDNN convolution of {} failed: {}", m.name, shape_str(x.shape()), e.get_message());
    if (!direct) {
        const bool add = plan->mode == Mode::F32Out || plan->mode == Mode::DtOut;
        if (add)
            add_bias_rows(yg.raw(), plan->out_dt, m.out_p, m.bias.data<float>(), y.raw(), m.dt, m.out, B * ho * wo,
                          m.out, stream);
        else
            copy_channels(yg.raw(), m.out_p, y.raw(), m.out, B * ho * wo, m.out, m.dt, stream);
    }
    return y;
#else
    (void)stream;
    raise<Error>("{}: CUDA Conv2d needs cuDNN, and this build has none (configure with cuDNN and the cuDNN "
                 "frontend headers, see scripts/fetch-headers.sh)",
                 m.name);
#endif
}

std::string Conv2d::plan_info(int64_t B, int64_t H, int64_t W) const {
    if (!impl_) raise<Error>("CUDA Conv2d: plan_info on an empty layer");
#if QDIT_WITH_CUDNN
    if (!cudnn_conv_available()) raise<Error>("{}: CUDA Conv2d needs cuDNN 9, which does not load here", impl_->name);
    State& st = state();
    std::lock_guard<std::mutex> lk(st.mu);
    return get_plan(st, make_key(*impl_, B, H, W), impl_->name).second->info;
#else
    (void)B, (void)H, (void)W;
    raise<Error>("{}: CUDA Conv2d needs cuDNN, and this build has none", impl_->name);
#endif
}

}  // namespace qdit::cuda
