#include "ops/graph.h"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>

#include "ops/dispatch.h"
#include "ops/profile.h"
#ifdef QDIT_WITH_CUDA
#include "backend/cuda/allocator.h"
#endif

namespace qdit::ops {

GraphCache::~GraphCache() = default;

GraphCache::Entry::~Entry() {
#ifdef QDIT_WITH_CUDA
    if (exec) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec));
    for (void* p : held) cuda::Allocator::instance().release(p);
#endif
}

Tensor& GraphCache::Entry::slot(const std::string& name, const Shape& shape, DType dtype, const Context& ctx,
                                bool* fresh) {
    auto it = slots.find(name);
    const bool made = it == slots.end();
    if (made) it = slots.emplace(name, empty(shape, dtype, ctx)).first;
    if (it->second.shape() != shape || it->second.dtype() != dtype)
        raise<ShapeError>("graph slot '{}' is {} {}, asked for {} {}", name, dtype_name(it->second.dtype()),
                          shape_str(it->second.shape()), dtype_name(dtype), shape_str(shape));
    if (fresh) *fresh = made;
    return it->second;
}

GraphCache::Entry& GraphCache::entry(const std::string& key) {
    auto it = std::find_if(entries_.begin(), entries_.end(), [&](const auto& e) { return e->key == key; });
    std::unique_ptr<Entry> e;
    if (it != entries_.end()) {
        e = std::move(*it);
        entries_.erase(it);
    } else {
        if (keep_ > 0 && entries_.size() >= keep_) entries_.erase(entries_.begin());
        e = std::make_unique<Entry>();
        e->key = key;
    }
    entries_.push_back(std::move(e));
    return *entries_.back();
}

void GraphCache::run(Entry& e, const Context& ctx, const std::function<void()>& body) {
    if (!usable(ctx)) {
        body();
        return;
    }
#ifdef QDIT_WITH_CUDA
    const cudaStream_t s = detail::stream(ctx);
    if (!e.exec) {
        auto& alloc = cuda::Allocator::instance();
        cudaGraph_t g = nullptr;
        alloc.begin_record();
        cuda::check(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed), "graph capture");
        try {
            body();
        } catch (...) {
            cudaStreamEndCapture(s, &g);
            if (g) cudaGraphDestroy(g);
            for (void* p : alloc.end_record()) alloc.release(p);
            cudaGetLastError();
            throw;
        }
        const cudaError_t ec = cudaStreamEndCapture(s, &g);
        e.held = alloc.end_record();
        cudaGraphExec_t exec = nullptr;
        const cudaError_t ei = ec == cudaSuccess ? cudaGraphInstantiate(&exec, g, 0) : ec;
        if (g) cudaGraphDestroy(g);
        if (ei != cudaSuccess) {
            for (void* p : e.held) alloc.release(p);
            e.held.clear();
            cuda::check(ei, "graph capture");
        }
        e.exec = exec;
    }
    cuda::check(cudaGraphLaunch(static_cast<cudaGraphExec_t>(e.exec), s), "graph launch");
#else
    (void)e;
    detail::no_cuda("graph");
#endif
}

#ifdef QDIT_WITH_CUDA
namespace {

// This thread's side stream of each device, made when first asked for (a stream of another thread
// might be capturing a graph of its own).
cudaStream_t side_stream(int device) {
    struct Streams {
        std::array<cudaStream_t, 64> s{};
        ~Streams() {
            for (cudaStream_t x : s)
                if (x) cudaStreamDestroy(x);
        }
    };
    thread_local Streams streams;
    if (device < 0 || device >= int(streams.s.size())) raise<Error>("ops::Fork: CUDA device {} out of range", device);
    cudaStream_t& s = streams.s[size_t(device)];
    if (!s) cuda::check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "creating a side stream");
    return s;
}

bool fork_enabled() {
    const char* env = std::getenv("QDIT_FORK");
    return !(env && !std::strcmp(env, "0"));
}

// `to` waits for the work issued on `from` so far (an edge of the graph when capturing).
void wait_for(cudaStream_t to, cudaStream_t from) {
    cudaEvent_t e = nullptr;
    cuda::check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "ops::Fork event");
    const cudaError_t r = cudaEventRecord(e, from);
    const cudaError_t w = r == cudaSuccess ? cudaStreamWaitEvent(to, e, 0) : r;
    cudaEventDestroy(e);
    cuda::check(w, "ops::Fork");
}

}  // namespace
#endif

Fork::Fork(const Context& ctx) : main_(ctx), side_(ctx) {
#ifdef QDIT_WITH_CUDA
    if (!GraphCache::usable(ctx) || Profile::enabled() || !fork_enabled()) return;
    cuda::check(cudaSetDevice(ctx.device.index), "selecting the CUDA device");
    const cudaStream_t s = side_stream(ctx.device.index);
    wait_for(s, detail::stream(ctx));
    side_.stream = s;
    cuda::Allocator::instance().hold_begin();
    open_ = true;
#endif
}

Fork::~Fork() {
    try {
        join();
    } catch (...) {
        // A failed join leaves a CUDA error that the next op reports.
    }
}

void Fork::join() {
#ifdef QDIT_WITH_CUDA
    if (!open_) return;
    open_ = false;
    const cudaStream_t side = detail::stream(side_);
    side_ = main_;
    struct Release {
        ~Release() { cuda::Allocator::instance().hold_end(); }
    } release;
    wait_for(detail::stream(main_), side);
#endif
}

}  // namespace qdit::ops
