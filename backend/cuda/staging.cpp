#include "backend/cuda/staging.h"

#include <algorithm>
#include <chrono>

#include "backend/cuda/device_tensor.h"
#include "backend/cuda/pinned.h"
#include "core/clock.h"

namespace qdit::cuda {

StagedUpload::StagedUpload(cudaStream_t stream, int buffers, size_t bytes)
    : stream_(stream), n_buffers_(std::max(1, buffers)), bytes_(std::max<size_t>(bytes, 4096)) {}

StagedUpload::~StagedUpload() {
    for (size_t i = 0; i < host_.size(); ++i) {
        if (used_[i]) cudaEventSynchronize(done_[i]);
        cudaEventDestroy(done_[i]);
    }  // the buffers are freed with host_, after their copies
}

void StagedUpload::copy(void* dst, size_t n, const Fill& fill) {
    if (host_.empty()) {
        host_.resize(size_t(n_buffers_));
        done_.resize(size_t(n_buffers_), nullptr);
        used_.assign(size_t(n_buffers_), false);
        for (int i = 0; i < n_buffers_; ++i) {
            host_[size_t(i)] = pinned_host_tensor({int64_t(bytes_)}, DType::U8);
            check(cudaEventCreateWithFlags(&done_[size_t(i)], cudaEventDisableTiming), "staging event");
        }
    }
    for (size_t off = 0; off < n; off += bytes_) {
        const size_t len = std::min(bytes_, n - off);
        const size_t b = size_t(next_);
        next_ = (next_ + 1) % n_buffers_;
        if (used_[b]) {
            const auto t0 = std::chrono::steady_clock::now();
            check(cudaEventSynchronize(done_[b]), "staging copy");
            wait_s_ += seconds_since(t0);
        }
        const auto t0 = std::chrono::steady_clock::now();
        fill(off, len, host_[b].raw());
        fill_s_ += seconds_since(t0);
        check(cudaMemcpyAsync(static_cast<char*>(dst) + off, host_[b].raw(), len, cudaMemcpyHostToDevice, stream_),
              "staging copy");
        check(cudaEventRecord(done_[b], stream_), "staging copy");
        used_[b] = true;
        bytes_done_ += len;
    }
}

}  // namespace qdit::cuda
