// What the GPU benchmarks share: a CUDA status check that ends the program, and the median device
// time of a launch after a warm-up long enough for a steady clock and power state.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x)                                                                                               \
    do {                                                                                                    \
        cudaError_t e_ = (x);                                                                               \
        if (e_ != cudaSuccess) {                                                                            \
            std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));       \
            std::exit(1);                                                                                   \
        }                                                                                                   \
    } while (0)

// Median time (ms) of `iters` launches of f(i), i = rotation index, after a warm-up of at least
// `warmup` launches and 150 ms (so that every variant is timed at the same, steady clock and power
// state; a cold GPU gave the first variant of each shape a 5-12 % head start in the first run).
template <class F>
double time_median(F&& f, int warmup, int iters) {
    int done = 0;
    const auto t0 = std::chrono::steady_clock::now();
    while (done < warmup || std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(150)) {
        for (int i = 0; i < 8; ++i) f(done++);
        CK(cudaDeviceSynchronize());
    }
    CK(cudaGetLastError());
    std::vector<cudaEvent_t> ev(size_t(iters) + 1);
    for (auto& e : ev) CK(cudaEventCreate(&e));
    // Back-to-back launches with an event between consecutive ones: each interval is one launch's
    // device time (the queue stays full, so launch overhead on the host is hidden).
    CK(cudaEventRecord(ev[0]));
    for (int i = 0; i < iters; ++i) {
        f(done + i);
        CK(cudaEventRecord(ev[size_t(i) + 1]));
    }
    CK(cudaEventSynchronize(ev.back()));
    CK(cudaGetLastError());
    std::vector<double> t(static_cast<size_t>(iters));
    for (int i = 0; i < iters; ++i) {
        float ms = 0;
        CK(cudaEventElapsedTime(&ms, ev[size_t(i)], ev[size_t(i) + 1]));
        t[size_t(i)] = ms;
    }
    for (auto& e : ev) cudaEventDestroy(e);
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}
