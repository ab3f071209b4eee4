#include "backend/cuda/attention.h"

#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>

#include "backend/cuda/device_tensor.h"
#include "backend/cuda/zimage_kernels.h"
#include "core/error.h"

#if QDIT_WITH_CUDNN
#include <cudnn.h>
#include <cudnn_frontend.h>
#endif

namespace qdit::cuda {

#if QDIT_WITH_CUDNN
namespace {

namespace fe = cudnn_frontend;

// One built SDPA graph per (device, shape, strides); its tensors are bound by uid at execution.
enum : int64_t { kQ = 1, kK, kV, kO };

struct Key {
    int device;
    int64_t s, heads, hd, ldq, ldk, ldv, ldo;
    bool operator<(const Key& o) const {
        return std::tie(device, s, heads, hd, ldq, ldk, ldv, ldo) <
               std::tie(o.device, o.s, o.heads, o.hd, o.ldq, o.ldk, o.ldv, o.ldo);
    }
};

struct Plan {
    std::shared_ptr<fe::graph::Graph> graph;
    int64_t workspace = 0;
};

struct State {
    std::mutex mu;
    std::map<int, cudnnHandle_t> handles;
    std::map<Key, Plan> plans;
};

State& state() {
    static State* s = new State();  // handles live as long as the process
    return *s;
}

void fe_check(fe::error_t e, const char* step, const Key& k) {
    if (e.is_bad())
        raise<Error>("cuDNN SDPA ({} tokens, {} heads, head_dim {}): {} failed: {}", k.s, k.heads, k.hd, step,
                     e.get_message());
}

// [b, h, s, d] view of a row-major [s, ld] matrix whose head h occupies columns h·hd .. h·hd + hd.
std::shared_ptr<fe::graph::Tensor_attributes> bhsd(fe::graph::Graph& g, const char* name, int64_t uid,
                                                   const Key& k, int64_t ld) {
    return g.tensor(fe::graph::Tensor_attributes()
                        .set_name(name)
                        .set_uid(uid)
                        .set_dim({1, k.heads, k.s, k.hd})
                        .set_stride({k.s * ld, k.hd, ld, 1}));
}

Plan build(cudnnHandle_t handle, const Key& k) {
    auto g = std::make_shared<fe::graph::Graph>();
    g->set_io_data_type(fe::DataType_t::BFLOAT16)
        .set_intermediate_data_type(fe::DataType_t::FLOAT)
        .set_compute_data_type(fe::DataType_t::FLOAT);
    auto q = bhsd(*g, "Q", kQ, k, k.ldq), kk = bhsd(*g, "K", kK, k, k.ldk), v = bhsd(*g, "V", kV, k, k.ldv);
    auto opts = fe::graph::SDPA_attributes()
                    .set_name("sdpa")
                    .set_generate_stats(false)
                    .set_attn_scale(float(1.0 / std::sqrt(double(k.hd))));
    auto [o, stats] = g->sdpa(q, kk, v, opts);
    (void)stats;
    o->set_output(true).set_uid(kO).set_dim({1, k.heads, k.s, k.hd}).set_stride({k.s * k.ldo, k.hd, k.ldo, 1});
    fe_check(g->validate(), "validate", k);
    fe_check(g->build_operation_graph(handle), "build_operation_graph", k);
    fe_check(g->create_execution_plans({fe::HeurMode_t::A}), "create_execution_plans", k);
    fe_check(g->check_support(handle), "check_support", k);
    fe_check(g->build_plans(handle), "build_plans", k);
    Plan p;
    p.graph = g;
    fe_check(g->get_workspace_size(p.workspace), "get_workspace_size", k);
    return p;
}

}  // namespace

bool cudnn_attention_available() {
    static const bool ok = cudnnGetVersion() >= 90000;
    return ok;
}

const char* attention_impl_name() {
    static const std::string name =
        cudnn_attention_available() ? "cudnn " + std::to_string(cudnnGetVersion()) : std::string("simple");
    return name.c_str();
}

static void attention_cudnn(const void* q, int64_t ldq, const void* k, int64_t ldk, const void* v, int64_t ldv,
                            void* o, int64_t ldo, int64_t s, int64_t heads, int64_t hd, cudaStream_t stream) {
    int dev = 0;
    check(cudaGetDevice(&dev), "attention");
    const Key key{dev, s, heads, hd, ldq, ldk, ldv, ldo};
    State& st = state();
    cudnnHandle_t handle;
    const Plan* plan;
    {
        std::lock_guard<std::mutex> lk(st.mu);
        auto h = st.handles.find(dev);
        if (h == st.handles.end()) {
            cudnnHandle_t nh;
            if (cudnnCreate(&nh) != CUDNN_STATUS_SUCCESS) raise<Error>("cudnnCreate failed on device {}", dev);
            h = st.handles.emplace(dev, nh).first;
        }
        handle = h->second;
        auto it = st.plans.find(key);
        if (it == st.plans.end()) it = st.plans.emplace(key, build(handle, key)).first;
        plan = &it->second;
    }
    if (cudnnSetStream(handle, stream) != CUDNN_STATUS_SUCCESS) raise<Error>("cudnnSetStream failed");
    DTensor ws;
    if (plan->workspace > 0) ws = DTensor::empty({plan->workspace}, DType::U8);
    std::unordered_map<int64_t, void*> ptrs{
        {kQ, const_cast<void*>(q)}, {kK, const_cast<void*>(k)}, {kV, const_cast<void*>(v)}, {kO, o}};
    fe_check(plan->graph->execute(handle, ptrs, ws.defined() ? ws.raw() : nullptr), "execute", key);
}
#else
bool cudnn_attention_available() { return false; }
const char* attention_impl_name() { return "simple"; }
#endif

void attention(const void* q, int64_t ldq, const void* k, int64_t ldk, const void* v, int64_t ldv, void* o,
               int64_t ldo, int64_t s, int64_t heads, int64_t hd, cudaStream_t stream, AttentionImpl impl) {
    if (s <= 0) return;
    if (heads <= 0 || hd <= 0 || ldq < heads * hd || ldk < heads * hd || ldv < heads * hd || ldo < heads * hd)
        raise<ShapeError>("attention: {} heads of {} with row strides {}, {}, {}, {}", heads, hd, ldq, ldk, ldv, ldo);
    if (impl == AttentionImpl::Auto) impl = cudnn_attention_available() ? AttentionImpl::Cudnn : AttentionImpl::Simple;
    if (impl == AttentionImpl::Simple) return attention_simple(q, ldq, k, ldk, v, ldv, o, ldo, s, heads, hd, stream);
#if QDIT_WITH_CUDNN
    if (!cudnn_attention_available()) raise<Error>("attention: cuDNN 9 is not available here");
    attention_cudnn(q, ldq, k, ldk, v, ldv, o, ldo, s, heads, hd, stream);
#else
    raise<Error>("attention: this build has no cuDNN (configure with the cuDNN frontend headers)");
#endif
}

}  // namespace qdit::cuda
