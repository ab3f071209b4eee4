// CUDA graphs as a runtime service around a model's block loop: the first call for a shape captures
// the work the body issues on the context's stream, later calls for that shape replay it (the same
// kernels in the same order, so results are unchanged). What the body reads must sit at fixed
// addresses: the caller keeps such inputs in the entry's slots and fills them before each run.
// The activation blocks allocated inside a capture stay with the graph until it is dropped.
// On the CPU, or on a GPU's legacy default stream (which cannot be captured), the body just runs.
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "ops/context.h"

namespace qdit::ops {

class GraphCache {
public:
    // Keeps the graphs of the `keep` most recently used shapes (a guided step alternates two).
    explicit GraphCache(size_t keep = 2) : keep_(keep) {}
    GraphCache(GraphCache&&) noexcept = default;
    GraphCache& operator=(GraphCache&&) noexcept = default;
    ~GraphCache();

    struct Entry {
        Entry() = default;
        Entry(const Entry&) = delete;
        Entry& operator=(const Entry&) = delete;
        std::string key;
        void* exec = nullptr;       // cudaGraphExec_t once captured
        std::vector<void*> held;    // allocator blocks the graph replays into
        std::map<std::string, Tensor> slots;
        // The slot `name`, made (uninitialised) with this shape and dtype on ctx's device when new;
        // `fresh` says whether it was just made.
        Tensor& slot(const std::string& name, const Shape& shape, DType dtype, const Context& ctx, bool* fresh = nullptr);
        ~Entry();
    };

    // Whether graphs run on ctx (a GPU context with its own stream).
    static bool usable(const Context& ctx) { return ctx.cuda() && ctx.stream != nullptr; }
    // The entry of `key`, made when new (dropping the least recently used one past `keep`).
    Entry& entry(const std::string& key);
    // A model's switch (its set_cuda_graph), off by default; turning it off drops every graph.
    void enable(bool on) {
        on_ = on;
        if (!on) clear();
    }
    // entry(key) when graphs are enabled and usable on ctx, else null (the caller runs eagerly).
    Entry* entry_if_on(const Context& ctx, const std::string& key) {
        return on_ && usable(ctx) ? &entry(key) : nullptr;
    }
    // Runs body: eagerly when graphs are not usable on ctx; else captured into e's graph on e's
    // first run, then (and on every later run) the graph is launched on ctx's stream.
    void run(Entry& e, const Context& ctx, const std::function<void()>& body);
    void clear() { entries_.clear(); }

private:
    size_t keep_;
    bool on_ = false;
    std::vector<std::unique_ptr<Entry>> entries_;  // most recently used last
};

// Two streams of work: what is issued on side() runs beside what is issued on ctx's stream from
// the construction to join() (or the destruction). On a GPU context with its own stream, side()
// has a second stream of the device, which first waits for the work issued on ctx's stream so far;
// join() makes ctx's stream wait for the side's work. Inside a CUDA graph capture the two become
// parallel branches of the graph. The rule for the caller: work on one stream reads what was
// written before the fork or on that stream, nothing the other stream wrote since. Activation
// memory released while the fork is open is handed out again before the join only to the stream
// that allocated it during the fork (the caching allocator orders reuse by one stream). On the
// CPU, on a legacy default stream, under ops::Profile (whose regions time one stream) or with
// QDIT_FORK=0 in the environment, side() is ctx itself and join() does nothing.
class Fork {
public:
    explicit Fork(const Context& ctx);
    ~Fork();
    Fork(const Fork&) = delete;
    Fork& operator=(const Fork&) = delete;
    const Context& side() const { return side_; }
    void join();

private:
    Context main_, side_;
    bool open_ = false;
};

}  // namespace qdit::ops
