#include "backend/cuda/attention.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>

#include "backend/cuda/device_tensor.h"
#include "backend/cuda/plan_cache.h"
#include "core/clock.h"
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
enum : int64_t { kQ = 1, kK, kV, kO, kSeqQ, kSeqKv, kScalar0 };  // kScalar0 + Fp8Scalar: FP8's scalars
constexpr int64_t kStats = 100;                                    // the softmax statistics

// What the graph computes in: bf16, or FP8 (E4M3) with the output in bf16 or in E4M3.
enum class Precision : int { Bf16, Fp8, Fp8Out8 };
const char* precision_name(Precision p) {
    return p == Precision::Bf16 ? "bf16" : p == Precision::Fp8 ? "fp8" : "fp8 with an fp8 output";
}

// batch > 0: a padded batch of `batch` items s rows apart with device lengths (attention_padded);
// batch 0: one item of s tokens.
struct Key {
    int device;
    int64_t s, heads, kv_heads, hd, ldq, ldk, ldv, ldo;
    bool causal;
    int64_t batch = 0;
    Precision precision = Precision::Bf16;
    int64_t s_kv = 0;    // the keys' count where it differs from the queries' s (one item, bf16), else 0
    bool stats = false;  // the graph also writes each query row's softmax statistics (f32 [heads, s])
    int64_t keys() const { return s_kv ? s_kv : s; }
    bool operator<(const Key& o) const {
        return std::tie(device, s, heads, kv_heads, hd, ldq, ldk, ldv, ldo, causal, batch, precision, s_kv, stats) <
               std::tie(o.device, o.s, o.heads, o.kv_heads, o.hd, o.ldq, o.ldk, o.ldv, o.ldo, o.causal, o.batch,
                        o.precision, o.s_kv, o.stats);
    }
};

struct Plan {
    std::shared_ptr<fe::graph::Graph> graph;  // null when cuDNN could not build one: see error
    int64_t workspace = 0;
    std::string error;
};

struct State {
    std::mutex mu;
    std::map<int, cudnnHandle_t> handles;
    std::map<Key, std::shared_ptr<const Plan>> plans;
};

State& state() {
    static State* s = new State();  // handles live as long as the process
    return *s;
}

void fe_check(fe::error_t e, const char* step, const Key& k) {
    if (e.is_bad())
        raise<Error>("cuDNN SDPA ({}, {} tokens{}, {} heads, {} kv heads, head_dim {}{}{}): {} failed: {}",
                     precision_name(k.precision), k.s, k.s_kv ? fmt::format(" against {} keys", k.s_kv) : std::string(),
                     k.heads, k.kv_heads, k.hd, k.causal ? ", causal" : "",
                     k.batch ? fmt::format(", a padded batch of {}", k.batch) : std::string(), step, e.get_message());
}

// [b, h, rows, d] view of a row-major [rows, ld] matrix whose head h < heads occupies columns
// h·hd .. h·hd + hd (items k.s rows apart in a padded batch).
std::shared_ptr<fe::graph::Tensor_attributes> bhsd(fe::graph::Graph& g, const char* name, int64_t uid,
                                                   const Key& k, int64_t heads, int64_t rows, int64_t ld) {
    return g.tensor(fe::graph::Tensor_attributes()
                        .set_name(name)
                        .set_uid(uid)
                        .set_dim({std::max<int64_t>(k.batch, 1), heads, rows, k.hd})
                        .set_stride({k.s * ld, k.hd, ld, 1}));
}

Plan build(cudnnHandle_t handle, const Key& k) {
    const bool fp8 = k.precision != Precision::Bf16;
    auto g = std::make_shared<fe::graph::Graph>();
    g->set_io_data_type(fp8 ? fe::DataType_t::FP8_E4M3 : fe::DataType_t::BFLOAT16)
        .set_intermediate_data_type(fe::DataType_t::FLOAT)
        .set_compute_data_type(fe::DataType_t::FLOAT);
    // Grouped-query attention: K and V have kv_heads heads, which cuDNN maps to groups of queries.
    auto q = bhsd(*g, "Q", kQ, k, k.heads, k.s, k.ldq), kk = bhsd(*g, "K", kK, k, k.kv_heads, k.keys(), k.ldk),
         v = bhsd(*g, "V", kV, k, k.kv_heads, k.keys(), k.ldv);
    auto opts = fe::graph::SDPA_attributes()
                    .set_name("sdpa")
                    .set_generate_stats(k.stats)
                    .set_attn_scale(float(1.0 / std::sqrt(double(k.hd))));
    // Causal, top-left aligned (s_q == s_kv here): key j is masked for query i when j > i.
    if (k.causal)
        opts.set_diagonal_alignment(fe::DiagonalAlignment_t::TOP_LEFT).set_diagonal_band_right_bound(0);
    if (k.batch > 0) {
        auto len = [&](const char* name, int64_t uid) {
            return g->tensor(fe::graph::Tensor_attributes()
                                 .set_name(name)
                                 .set_uid(uid)
                                 .set_dim({k.batch, 1, 1, 1})
                                 .set_stride({1, 1, 1, 1})
                                 .set_data_type(fe::DataType_t::INT32));
        };
        opts.set_padding_mask(true).set_seq_len_q(len("seq_q", kSeqQ)).set_seq_len_kv(len("seq_kv", kSeqKv));
    }
    std::shared_ptr<fe::graph::Tensor_attributes> o;
    if (fp8) {
        auto scalar = [&](Fp8Scalar i) {
            return g->tensor(fe::graph::Tensor_attributes()
                                 .set_name(fmt::format("fp8_scalar_{}", int(i)))
                                 .set_uid(kScalar0 + i)
                                 .set_dim({1, 1, 1, 1})
                                 .set_stride({1, 1, 1, 1})
                                 .set_data_type(fe::DataType_t::FLOAT));
        };
        auto out = g->sdpa_fp8(q, kk, v, scalar(kDescaleQ), scalar(kDescaleK), scalar(kDescaleV), scalar(kDescaleS),
                               scalar(kScaleS), scalar(k.precision == Precision::Fp8 ? kScaleO : kScaleOFp8), opts);
        o = out[0];
        o->set_data_type(k.precision == Precision::Fp8 ? fe::DataType_t::BFLOAT16 : fe::DataType_t::FP8_E4M3);
        for (auto [t, uid] : {std::pair{out[2], kScalar0 + kAmaxS}, std::pair{out[3], kScalar0 + kAmaxO}})
            t->set_output(true).set_uid(uid).set_dim({1, 1, 1, 1}).set_stride({1, 1, 1, 1}).set_data_type(
                fe::DataType_t::FLOAT);
    } else {
        auto out = g->sdpa(q, kk, v, opts);
        o = out[0];
        if (k.stats)
            out[1]->set_output(true).set_uid(kStats).set_dim({1, k.heads, k.s, 1}).set_stride({k.heads * k.s, k.s, 1, 1})
                .set_data_type(fe::DataType_t::FLOAT);
    }
    o->set_output(true).set_uid(kO).set_dim({std::max<int64_t>(k.batch, 1), k.heads, k.s, k.hd}).set_stride({k.s * k.ldo, k.hd, k.ldo, 1});
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

// ---- the plan cache on disk (plan_cache.h) ----
// Bumped whenever the graph built above changes, so that plans of an older qdit are not reused.
constexpr int kPlanFormat = 1;

// The whole shape: sizes, row strides, mask and, for a padded batch, the number of items (s rows
// apart, lengths bound at execution).
std::string cache_key(const Key& k) {
    return plan_cache::key(plan_cache::Kind::Attention, kPlanFormat, k.device,
                           fmt::format("{} sdpa s {}{} heads {} kv_heads {} hd {} ld q {} k {} v {} o {} causal {} "
                                       "padded batch {}{}",
                                       precision_name(k.precision), k.s,
                                       k.s_kv ? fmt::format(" s_kv {}", k.s_kv) : std::string(), k.heads,
                                       k.kv_heads, k.hd, k.ldq, k.ldk, k.ldv, k.ldo, k.causal, k.batch,
                                       k.stats ? " stats" : ""));
}

// The plan for `k`: read from the plan cache, else built (and stored).
Plan get_plan(cudnnHandle_t handle, const Key& k) {
    const std::string key = cache_key(k);
    if (auto stored = plan_cache::load(plan_cache::Kind::Attention, handle, key, 0,
                                       [](const std::vector<uint8_t>&) { return true; })) {
        Plan p;
        p.graph = stored->graph;
        p.workspace = stored->workspace;
        return p;
    }
    const auto t0 = std::chrono::steady_clock::now();
    Plan p = build(handle, k);
    plan_cache::built(plan_cache::Kind::Attention, key, *p.graph, {}, seconds_since(t0));
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

// The plan for `key` (its device filled in here) with the device's cuDNN handle; a plan whose
// graph is null could not be built (its error says why; with `report`, printed once on stderr).
static std::shared_ptr<const Plan> find_plan(Key& key, cudnnHandle_t* handle, bool report) {
    check(cudaGetDevice(&key.device), "attention");
    State& st = state();
    std::lock_guard<std::mutex> lk(st.mu);
    auto h = st.handles.find(key.device);
    if (h == st.handles.end()) {
        cudnnHandle_t nh;
        if (cudnnCreate(&nh) != CUDNN_STATUS_SUCCESS) raise<Error>("cudnnCreate failed on device {}", key.device);
        h = st.handles.emplace(key.device, nh).first;
    }
    *handle = h->second;
    auto it = st.plans.find(key);
    if (it == st.plans.end()) {
        auto p = std::make_shared<Plan>();
        try {
            *p = get_plan(*handle, key);
        } catch (const std::exception& e) {  // qdit::Error from fe_check, or the frontend's own
            p->error = e.what();
            if (report) std::fprintf(stderr, "qdit: %s; this shape runs on the simple attention kernel\n", e.what());
        }
        it = st.plans.emplace(key, std::move(p)).first;
    }
    return it->second;
}

// Runs a built plan with its tensors bound by uid (kSeqQ / kSeqKv from len where given).
static void execute(const Plan& plan, cudnnHandle_t handle, std::unordered_map<int64_t, void*> ptrs,
                    const int32_t* len, cudaStream_t stream, const Key& key) {
    if (cudnnSetStream(handle, stream) != CUDNN_STATUS_SUCCESS) raise<Error>("cudnnSetStream failed");
    DTensor ws;
    if (plan.workspace > 0) ws = DTensor::empty({plan.workspace}, DType::U8);
    if (len) ptrs[kSeqQ] = ptrs[kSeqKv] = const_cast<int32_t*>(len);
    fe_check(plan.graph->execute(handle, ptrs, ws.defined() ? ws.raw() : nullptr), "execute", key);
}

// Runs cuDNN's bf16 SDPA for `key`; returns false without launching anything when cuDNN cannot
// build a plan for the shape and `fallback` is set (else that throws).
// With key.stats, lse receives the statistics.
static bool attention_cudnn(Key key, const void* q, const void* k, const void* v, void* o, const int32_t* len,
                            cudaStream_t stream, bool fallback, float* lse = nullptr) {
    cudnnHandle_t handle;
    // A plan with statistics that cannot be built is not reported: its caller runs without them.
    const std::shared_ptr<const Plan> plan = find_plan(key, &handle, fallback && !key.stats);
    if (!plan->graph) {
        if (fallback) return false;
        raise<Error>("{}", plan->error);
    }
    std::unordered_map<int64_t, void*> ptrs{
        {kQ, const_cast<void*>(q)}, {kK, const_cast<void*>(k)}, {kV, const_cast<void*>(v)}, {kO, o}};
    if (key.stats) ptrs[kStats] = lse;
    execute(*plan, handle, std::move(ptrs), len, stream, key);
    return true;
}

void forget_attention_plans() {
    State& st = state();
    std::lock_guard<std::mutex> lk(st.mu);
    st.plans.clear();
}
// FP8: the plan with a bf16 output where cuDNN builds one, else with an E4M3 output (converted).
static void attention_fp8_cudnn(Key key, const uint8_t* y, void* o, int64_t rows, const int32_t* len, float* scalars,
                                cudaStream_t stream) {
    std::unordered_map<int64_t, void*> ptrs{{kQ, const_cast<uint8_t*>(y)},
                                            {kK, const_cast<uint8_t*>(y + key.heads * key.hd)},
                                            {kV, const_cast<uint8_t*>(y + (key.heads + key.kv_heads) * key.hd)}};
    for (Fp8Scalar i : {kDescaleQ, kDescaleK, kDescaleV, kDescaleS, kScaleS, kAmaxS, kAmaxO})
        ptrs[kScalar0 + i] = scalars + i;
    cudnnHandle_t handle;
    key.precision = Precision::Fp8;
    const std::shared_ptr<const Plan> plan = find_plan(key, &handle, false);
    if (plan->graph) {
        ptrs[kO] = o;
        ptrs[kScalar0 + kScaleO] = scalars + kScaleO;
        return execute(*plan, handle, std::move(ptrs), len, stream, key);
    }
    const int64_t ldo = key.ldo, width = key.heads * key.hd;
    key.precision = Precision::Fp8Out8;
    key.ldo = width;
    const std::shared_ptr<const Plan> plan8 = find_plan(key, &handle, false);
    if (!plan8->graph) raise<Error>("{}; {}", plan->error, plan8->error);
    DTensor o8 = DTensor::empty({rows * width}, DType::U8);
    ptrs[kO] = o8.raw();
    ptrs[kScalar0 + kScaleOFp8] = scalars + kScaleOFp8;
    execute(*plan8, handle, std::move(ptrs), len, stream, key);
    fp8_dequantize_output(o8.raw(), width, o, ldo, rows, width, scalars, stream);
}

#else
bool cudnn_attention_available() { return false; }
const char* attention_impl_name() { return "simple"; }
void forget_attention_plans() {}
#endif

void attention(const void* q, int64_t ldq, const void* k, int64_t ldk, const void* v, int64_t ldv, void* o,
               int64_t ldo, int64_t s, int64_t heads, int64_t hd, cudaStream_t stream, AttentionImpl impl,
               int64_t kv_heads, bool causal) {
    if (s <= 0) return;
    if (kv_heads == 0) kv_heads = heads;
    if (heads <= 0 || hd <= 0 || kv_heads <= 0 || heads % kv_heads || ldq < heads * hd || ldk < kv_heads * hd ||
        ldv < kv_heads * hd || ldo < heads * hd)
        raise<ShapeError>("attention: {} query heads and {} kv heads (a divisor) of {} with row strides {}, {}, {}, {}",
                          heads, kv_heads, hd, ldq, ldk, ldv, ldo);
    const bool fallback = impl == AttentionImpl::Auto;
    if (impl == AttentionImpl::Auto) impl = cudnn_attention_available() ? AttentionImpl::Cudnn : AttentionImpl::Simple;
    if (impl == AttentionImpl::Simple)
        return attention_simple(q, ldq, k, ldk, v, ldv, o, ldo, s, heads, hd, stream, kv_heads, causal);
#if QDIT_WITH_CUDNN
    if (!cudnn_attention_available()) raise<Error>("attention: cuDNN 9 is not available here");
    if (!attention_cudnn({0, s, heads, kv_heads, hd, ldq, ldk, ldv, ldo, causal}, q, k, v, o, nullptr, stream,
                         fallback))
        attention_simple(q, ldq, k, ldk, v, ldv, o, ldo, s, heads, hd, stream, kv_heads, causal);
#else
    (void)fallback;
    raise<Error>("attention: this build has no cuDNN (configure with the cuDNN frontend headers)");
#endif
}

bool attention_with_stats(const void* q, int64_t ldq, const void* k, int64_t ldk, const void* v, int64_t ldv, void* o,
                          int64_t ldo, int64_t s, int64_t s_kv, int64_t heads, int64_t kv_heads, int64_t hd, float* lse,
                          cudaStream_t stream) {
    if (s <= 0) return true;
    if (kv_heads == 0) kv_heads = heads;
    if (s_kv < 1 || !lse || heads <= 0 || hd <= 0 || kv_heads <= 0 || heads % kv_heads || ldq < heads * hd ||
        ldk < kv_heads * hd || ldv < kv_heads * hd || ldo < heads * hd)
        raise<ShapeError>("attention_with_stats: {} queries against {} keys, {} query heads and {} kv heads (a divisor) "
                          "of {} with row strides {}, {}, {}, {}{}",
                          s, s_kv, heads, kv_heads, hd, ldq, ldk, ldv, ldo, lse ? "" : ", no statistics buffer");
#if QDIT_WITH_CUDNN
    if (!cudnn_attention_available()) return false;
    Key key{0, s, heads, kv_heads, hd, ldq, ldk, ldv, ldo, false};
    key.s_kv = s_kv == s ? 0 : s_kv;
    key.stats = true;
    return attention_cudnn(key, q, k, v, o, nullptr, stream, /*fallback=*/true, lse);
#else
    (void)q, (void)k, (void)v, (void)o, (void)stream;
    return false;
#endif
}

void attention_padded(const void* q, int64_t ldq, const void* k, int64_t ldk, const void* v, int64_t ldv, void* o,
                      int64_t ldo, int64_t batch, int64_t s, const int32_t* len, int64_t heads, int64_t kv_heads,
                      int64_t hd, cudaStream_t stream) {
    if (batch <= 0 || s <= 0) return;
    if (!len || heads <= 0 || hd <= 0 || kv_heads <= 0 || heads % kv_heads || ldq < heads * hd ||
        ldk < kv_heads * hd || ldv < kv_heads * hd || ldo < heads * hd)
        raise<ShapeError>("attention_padded: {} query heads and {} kv heads (a divisor) of {} with row strides {}, {}, "
                          "{}, {}{}",
                          heads, kv_heads, hd, ldq, ldk, ldv, ldo, len ? "" : ", no lengths");
#if QDIT_WITH_CUDNN
    if (!cudnn_attention_available()) raise<Error>("attention_padded: cuDNN 9 is not available here");
    Key key{0, s, heads, kv_heads, hd, ldq, ldk, ldv, ldo, false};
    key.batch = batch;
    attention_cudnn(key, q, k, v, o, len, stream, /*fallback=*/false);
#else
    (void)q, (void)k, (void)v, (void)o, (void)stream;
    raise<Error>("attention_padded: this build has no cuDNN (configure with the cuDNN frontend headers)");
#endif
}

bool fp8_attention_supported(int device) {
#if QDIT_WITH_CUDNN
    int major = 0;
    check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), "fp8 attention");
    return cudnn_attention_available() && (major == 9 || major == 10);
#else
    (void)device;
    return false;
#endif
}

void attention_fp8(const void* qkv, int64_t ld, void* o, int64_t ldo, int64_t batch, int64_t s, const int32_t* len,
                   int64_t heads, int64_t kv_heads, int64_t hd, cudaStream_t stream, uint8_t* qk8,
                   float* qk8_scalars) {
    if (batch <= 0 || s <= 0) return;
    if (kv_heads == 0) kv_heads = heads;
    if (heads <= 0 || hd <= 0 || kv_heads <= 0 || heads % kv_heads || ld < (heads + 2 * kv_heads) * hd ||
        ldo < heads * hd || ld % 8 || ldo % 8 || hd % 8 || (batch > 1 && !len))
        raise<ShapeError>("attention_fp8: {} query heads and {} kv heads (a divisor) of {} with row strides {} and {} "
                          "(multiples of 8), a batch of {}{}",
                          heads, kv_heads, hd, ld, ldo, batch, batch > 1 && !len ? " without lengths" : "");
    int device = 0;
    check(cudaGetDevice(&device), "attention_fp8");
    if (!fp8_attention_supported(device))
        raise<Error>("FP8 attention needs cuDNN 9 and a GPU of compute capability 9.x or 10.x (Hopper or "
                     "Blackwell); device {} is not one",
                     device);
#if QDIT_WITH_CUDNN
    if (!qk8 != !qk8_scalars) raise<ShapeError>("attention_fp8: E4M3 q and k without their scales, or the reverse");
    const int64_t rows = batch * s;
    const bool v_only = qk8 != nullptr;  // q and k written by their producer
    DTensor y, sc;
    if (!v_only) {
        y = DTensor::empty({rows * ld}, DType::U8);
        sc = DTensor::empty({kFp8ScalarFloats}, DType::F32);
        qk8 = static_cast<uint8_t*>(y.raw());
        qk8_scalars = static_cast<float*>(sc.raw());
    }
    fp8_quantize_qkv(qkv, ld, qk8, rows, s, len, heads * hd, (heads + kv_heads) * hd, (heads + 2 * kv_heads) * hd,
                     reinterpret_cast<unsigned*>(qk8_scalars + kFp8Scalars), qk8_scalars, stream, v_only);
    Key key{0, s, heads, kv_heads, hd, ld, ld, ld, ldo, false};
    key.batch = len ? batch : 0;
    attention_fp8_cudnn(key, qk8, o, rows, len, qk8_scalars, stream);
#else
    (void)qkv, (void)o, (void)len, (void)stream;
#endif
}

}  // namespace qdit::cuda
