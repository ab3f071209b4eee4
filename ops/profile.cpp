#include "ops/profile.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#include <fmt/format.h>

#include "ops/dispatch.h"

namespace qdit::ops {

namespace {

struct Mark {
    std::string name;
    bool gpu = false;
    double t0 = 0, t1 = 0;  // CPU marks: ms since the epoch of steady_clock
#ifdef QDIT_WITH_CUDA
    cudaEvent_t e0 = nullptr, e1 = nullptr;
#endif
};

struct State {
    std::mutex mu;
    bool on = [] {
        const char* v = std::getenv("QDIT_PROFILE");
        return v && *v && std::strcmp(v, "0") != 0;
    }();
    std::vector<Mark> marks;
};

State& state() {
    static State s;
    return s;
}

double now_ms() {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void drop(Mark& m) {
#ifdef QDIT_WITH_CUDA
    if (m.e0) cudaEventDestroy(m.e0);
    if (m.e1) cudaEventDestroy(m.e1);
    m.e0 = m.e1 = nullptr;
#endif
    (void)m;
}

}  // namespace

bool Profile::enabled() { return state().on; }

void Profile::enable(bool on) { state().on = on; }

void Profile::reset() {
    State& s = state();
    std::lock_guard<std::mutex> lk(s.mu);
    for (Mark& m : s.marks) drop(m);
    s.marks.clear();
}

std::string Profile::report() {
    State& s = state();
    std::lock_guard<std::mutex> lk(s.mu);
    std::vector<std::pair<std::string, std::pair<double, int>>> sums;
    double total = 0;
    for (Mark& m : s.marks) {
        double ms = m.t1 - m.t0;
#ifdef QDIT_WITH_CUDA
        if (m.gpu) {
            float v = 0;
            if (cudaEventSynchronize(m.e1) != cudaSuccess || cudaEventElapsedTime(&v, m.e0, m.e1) != cudaSuccess)
                raise<Error>("profile: region '{}' could not be timed", m.name);
            ms = v;
        }
#endif
        auto it = std::find_if(sums.begin(), sums.end(), [&](const auto& p) { return p.first == m.name; });
        if (it == sums.end()) it = sums.insert(sums.end(), {m.name, {0.0, 0}});
        it->second.first += ms;
        it->second.second += 1;
        total += ms;
    }
    std::string out;
    for (const auto& [name, v] : sums)
        out += fmt::format("{:<28} {:10.3f} ms {:6d} calls {:5.1f} %\n", name, v.first, v.second,
                           total > 0 ? 100.0 * v.first / total : 0.0);
    if (!sums.empty()) out += fmt::format("{:<28} {:10.3f} ms\n", "(sum)", total);
    return out;
}

Region::Region(const char* name, const Context& ctx) : ctx_(&ctx) {
    State& s = state();
    if (!s.on) return;
    Mark m;
    m.name = name;
    m.gpu = ctx.cuda();
    if (m.gpu) {
#ifdef QDIT_WITH_CUDA
        if (cudaEventCreate(&m.e0) != cudaSuccess || cudaEventCreate(&m.e1) != cudaSuccess)
            raise<Error>("profile: cudaEventCreate failed");
        cudaEventRecord(m.e0, detail::stream(ctx));
#endif
    } else {
        m.t0 = now_ms();
    }
    std::lock_guard<std::mutex> lk(s.mu);
    mark_ = int(s.marks.size());
    s.marks.push_back(std::move(m));
}

Region::~Region() {
    if (mark_ < 0) return;
    State& s = state();
    std::lock_guard<std::mutex> lk(s.mu);
    Mark& m = s.marks[size_t(mark_)];
#ifdef QDIT_WITH_CUDA
    if (m.gpu) {
        cudaEventRecord(m.e1, detail::stream(*ctx_));
        return;
    }
#endif
    m.t1 = now_ms();
}

}  // namespace qdit::ops
