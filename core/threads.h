// A small fixed thread pool with a blocking parallel_for. The number of
// threads is QDIT_NUM_THREADS when set, else the hardware concurrency.
#pragma once
#include <cstdint>
#include <functional>

namespace qdit {

int num_threads();
void set_num_threads(int n);  // for tests and benchmarks; n <= 0 restores the default

// Calls fn(begin, end) on disjoint chunks covering [0, n), in parallel, and
// waits. Chunks are at least `grain` long. Exceptions from fn are rethrown.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace qdit
