#include "backend/cuda/allocator.h"

#include <algorithm>

#include <cuda_runtime.h>

#include "core/error.h"

namespace qdit::cuda {

Allocator& Allocator::instance() {
    static Allocator* a = new Allocator();  // never destroyed: blocks may outlive static destructors
    return *a;
}

size_t Allocator::round_size(size_t bytes) {
    constexpr size_t kSmall = 512, kLarge = size_t(2) << 20;
    if (bytes == 0) bytes = 1;
    const size_t g = bytes < (size_t(1) << 20) ? kSmall : kLarge;
    return (bytes + g - 1) / g * g;
}

void* Allocator::allocate(size_t bytes, MemKind kind) {
    const size_t size = round_size(bytes);
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) raise<Error>("cuda allocator: no CUDA device");
    std::lock_guard<std::mutex> lk(mu_);
    void* p = nullptr;
    auto it = free_.find({dev, size});
    if (it != free_.end() && !it->second.empty()) {
        p = it->second.back();
        it->second.pop_back();
    } else {
        cudaError_t e = cudaMalloc(&p, size);
        if (e == cudaErrorMemoryAllocation) {
            // Give the cached blocks back and try once more.
            cudaGetLastError();
            for (auto& [key, blocks] : free_)
                for (void* b : blocks) {
                    cudaFree(b);
                    st_.reserved -= key.second;
                }
            free_.clear();
            e = cudaMalloc(&p, size);
        }
        if (e != cudaSuccess) {
            cudaGetLastError();
            raise<Error>("cuda allocator: cudaMalloc of {} bytes failed: {} ({} bytes in use, {} reserved)",
                         size, cudaGetErrorString(e), st_.weight + st_.activation, st_.reserved);
        }
        ++st_.mallocs;
        st_.reserved += size;
        st_.peak_reserved = std::max(st_.peak_reserved, st_.reserved);
    }
    used_[p] = Block{size, kind, dev};
    if (recording_) recorded_.push_back(p);
    (kind == MemKind::Weight ? st_.weight : st_.activation) += size;
    st_.peak_activation = std::max(st_.peak_activation, st_.activation);
    st_.peak = std::max(st_.peak, st_.weight + st_.activation);
    return p;
}

void Allocator::release(void* p) {
    if (!p) return;
    std::lock_guard<std::mutex> lk(mu_);
    auto it = used_.find(p);
    if (it == used_.end()) return;
    const Block b = it->second;
    used_.erase(it);
    (b.kind == MemKind::Weight ? st_.weight : st_.activation) -= b.size;
    free_[{b.device, b.size}].push_back(p);
}

void Allocator::empty_cache() {
    std::lock_guard<std::mutex> lk(mu_);
    int cur = 0;
    cudaGetDevice(&cur);
    for (auto& [key, blocks] : free_) {
        cudaSetDevice(key.first);
        for (void* b : blocks) {
            cudaFree(b);
            st_.reserved -= key.second;
        }
    }
    cudaSetDevice(cur);
    free_.clear();
}

void Allocator::begin_record() {
    std::lock_guard<std::mutex> lk(mu_);
    recording_ = true;
    recorded_.clear();
}

std::vector<void*> Allocator::end_record() {
    std::lock_guard<std::mutex> lk(mu_);
    recording_ = false;
    std::vector<void*> held;
    std::sort(recorded_.begin(), recorded_.end());
    recorded_.erase(std::unique(recorded_.begin(), recorded_.end()), recorded_.end());
    for (void* p : recorded_) {
        if (used_.count(p)) continue;
        for (auto& [key, blocks] : free_) {
            auto it = std::find(blocks.begin(), blocks.end(), p);
            if (it == blocks.end()) continue;
            blocks.erase(it);
            used_[p] = Block{key.second, MemKind::Activation, key.first};
            st_.activation += key.second;
            st_.peak_activation = std::max(st_.peak_activation, st_.activation);
            st_.peak = std::max(st_.peak, st_.weight + st_.activation);
            held.push_back(p);
            break;
        }
    }
    recorded_.clear();
    return held;
}

MemStats Allocator::stats() const {
    std::lock_guard<std::mutex> lk(mu_);
    return st_;
}

void Allocator::reset_peak() {
    std::lock_guard<std::mutex> lk(mu_);
    st_.peak_activation = st_.activation;
    st_.peak = st_.weight + st_.activation;
    st_.peak_reserved = st_.reserved;
}

}  // namespace qdit::cuda
