// Wall-clock time for the timings qdit reports (load, plans, stages).
#pragma once
#include <chrono>

namespace qdit {

// Seconds on the steady clock since t0.
inline double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace qdit
