// Where a model's time goes, by named region (a perf mode for models and benchmarks). Off by
// default, when a Region costs one branch; on (QDIT_PROFILE=1 in the environment, or
// Profile::enable) each Region marks its begin and end on the context: a pair of CUDA events on a
// GPU context's stream (GPU time of the work issued inside it, gaps included), the wall clock on
// the CPU. report() waits for the marks and sums them per name. Regions do not nest. A model runs
// without CUDA graphs while profiling (events inside a captured graph time nothing).
#pragma once
#include <string>

#include "ops/context.h"

namespace qdit::ops {

struct Profile {
    static bool enabled();
    static void enable(bool on);
    // Forgets the marks so far.
    static void reset();
    // One line per region name in first-seen order: total ms, calls, share of the regions' sum;
    // then the sum. Empty when nothing was recorded.
    static std::string report();
};

class Region {
public:
    Region(const char* name, const Context& ctx);
    ~Region();
    Region(const Region&) = delete;
    Region& operator=(const Region&) = delete;

private:
    int mark_ = -1;  // the open mark, or -1 when profiling is off
    const Context* ctx_;
};

}  // namespace qdit::ops
