#include "backend/cuda/plan_cache.h"

#include <mutex>

#if QDIT_WITH_CUDNN
#include <chrono>
#include <exception>

#include <cuda_runtime.h>
#include <fmt/format.h>

#include "core/clock.h"
#include "io/cache.h"
#endif

namespace qdit::cuda {

namespace {

struct Counters {
    std::mutex mu;
    CudnnPlanStats stats;
    bool warned = false;
};

Counters& counters() {
    static Counters* c = new Counters();  // lives as long as the process
    return *c;
}

}  // namespace

PlanCounts CudnnPlanStats::total() const {
    PlanCounts t;
    for (const PlanCounts* c : {&conv, &attention}) {
        t.built += c->built;
        t.cached += c->cached;
        t.rejected += c->rejected;
        t.unstored += c->unstored;
        t.build_s += c->build_s;
        t.load_s += c->load_s;
    }
    return t;
}

CudnnPlanStats cudnn_plan_stats() {
    Counters& c = counters();
    std::lock_guard<std::mutex> lock(c.mu);
    return c.stats;
}

#if QDIT_WITH_CUDNN
namespace plan_cache {

namespace fe = cudnn_frontend;

namespace {

const char* kind_name(Kind k) { return k == Kind::Conv ? "convolution" : "attention"; }

// Updates the counts of `kind` under the lock.
template <typename F>
void count(Kind kind, F&& f) {
    Counters& c = counters();
    std::lock_guard<std::mutex> lock(c.mu);
    f(kind == Kind::Conv ? c.stats.conv : c.stats.attention);
}

void warn_once(const std::string& what) {
    Counters& c = counters();
    {
        std::lock_guard<std::mutex> lock(c.mu);
        if (c.warned) return;
        c.warned = true;
    }
    fmt::print(stderr, "warning: cuDNN plan cache: {}; building the plan instead (later problems are not repeated)\n",
               what);
}

}  // namespace

std::string key(Kind kind, int format, int device, const std::string& shape) {
    if (plan_cache_dir().empty()) return {};
    cudaDeviceProp prop{};
    int driver = 0;
    if (cudaGetDeviceProperties(&prop, device) != cudaSuccess || cudaDriverGetVersion(&driver) != cudaSuccess) {
        cudaGetLastError();
        return {};
    }
    PlanEnvironment env;
    env.gpu = prop.name;
    env.cc_major = prop.major;
    env.cc_minor = prop.minor;
    env.driver = driver;
    env.library = int64_t(cudnnGetVersion());
    env.frontend = CUDNN_FRONTEND_VERSION;
    env.qdit = QDIT_VERSION_STRING;
    return plan_cache_key(fmt::format("cudnn {} plan", kind_name(kind)), format, env, shape);
}

std::optional<Stored> load(Kind kind, cudnnHandle_t handle, const std::string& key, size_t extra_len,
                           const std::function<bool(const std::vector<uint8_t>&)>& valid) {
    if (key.empty()) return std::nullopt;
    const std::string dir = plan_cache_dir();
    if (dir.empty()) return std::nullopt;
    const auto t0 = std::chrono::steady_clock::now();
    const BlobCache cache(dir);
    auto reject = [&](const std::string& why) -> std::optional<Stored> {
        count(kind, [](PlanCounts& c) { ++c.rejected; });
        warn_once(why);
        return std::nullopt;
    };
    std::string problem;
    const auto blob = cache.get(key, &problem);
    if (!blob) return problem.empty() ? std::nullopt : reject(problem);
    const std::string path = cache.path_of(key);
    Stored s;
    if (blob->size() <= extra_len) return reject(fmt::format("{}: not a {} plan", path, kind_name(kind)));
    s.extra.assign(blob->begin(), blob->begin() + ptrdiff_t(extra_len));
    if (!valid(s.extra)) return reject(fmt::format("{}: not a {} plan", path, kind_name(kind)));
    s.graph = std::make_shared<fe::graph::Graph>();
    fe::error_t e;
    try {  // the JSON parser and the frontend throw on malformed entries
        const nlohmann::json j = nlohmann::json::from_ubjson(blob->begin() + ptrdiff_t(extra_len), blob->end());
        // The frontend reads these fields without checking that they are there.
        bool complete = j.is_object();
        for (const char* field : {"json_version", "cudnn_backend_data", "behavior_notes", "variant_pack_uids",
                                  "variant_pack_replacements", "fe_workspace_size"})
            complete = complete && j.contains(field);
        complete = complete && !((j.contains("nodes") || j.contains("tensors")) && !j.contains("gid"));
        e = complete ? s.graph->deserialize(handle, j, /*enforce_precompiled=*/true, /*run_warmup=*/false)
                     : fe::error_t{fe::error_code_t::INVALID_VALUE, "fields missing"};
        if (e.is_good()) e = s.graph->get_workspace_size(s.workspace);
    } catch (const std::exception& ex) {
        e = {fe::error_code_t::INVALID_VALUE, ex.what()};
    }
    if (e.is_bad()) return reject(fmt::format("{}: cuDNN cannot use it ({})", path, e.get_message()));
    const double secs = seconds_since(t0);
    count(kind, [secs](PlanCounts& c) {
        ++c.cached;
        c.load_s += secs;
    });
    return s;
}

void built(Kind kind, const std::string& key, const fe::graph::Graph& graph, const std::vector<uint8_t>& extra,
           double build_s) {
    count(kind, [build_s](PlanCounts& c) {
        ++c.built;
        c.build_s += build_s;
    });
    if (key.empty()) return;
    const std::string dir = plan_cache_dir();
    if (dir.empty()) return;
    std::vector<uint8_t> data;
    fe::error_t e;
    try {
        e = graph.serialize(data, /*serialize_structure=*/false);
    } catch (const std::exception& ex) {
        e = {fe::error_code_t::INVALID_VALUE, ex.what()};
    }
    if (e.is_bad()) {  // a graph cuDNN cannot serialize is built again by the next process
        count(kind, [](PlanCounts& c) { ++c.unstored; });
        return;
    }
    data.insert(data.begin(), extra.begin(), extra.end());
    std::string problem;
    if (!BlobCache(dir).put(key, data, &problem)) {
        count(kind, [](PlanCounts& c) { ++c.unstored; });
        warn_once("cannot store a plan: " + problem);
    }
}

}  // namespace plan_cache
#endif

}  // namespace qdit::cuda
