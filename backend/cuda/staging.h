// Host-to-device copies through a few pinned staging buffers: the caller fills a buffer (e.g. with
// file bytes, io/files.h's RangeReader), its copy to the device is queued on the stream, and the
// next buffer is filled while the copy runs. The host never holds more than the staging buffers,
// whatever the size of the data.
#pragma once
#include <cstddef>
#include <functional>
#include <vector>

#include <cuda_runtime.h>

#include "core/tensor.h"

namespace qdit::cuda {

class StagedUpload {
public:
    // `buffers` pinned buffers of `bytes` each, allocated on the first copy.
    explicit StagedUpload(cudaStream_t stream, int buffers = 4, size_t bytes = size_t(64) << 20);
    // Waits for the queued copies, then frees the buffers.
    ~StagedUpload();
    StagedUpload(const StagedUpload&) = delete;
    StagedUpload& operator=(const StagedUpload&) = delete;

    // Fills: fill(offset, n, host) writes bytes [offset, offset + n) of the data into `host`.
    using Fill = std::function<void(size_t offset, size_t n, void* host)>;
    // Copies `n` bytes to device memory `dst`, piece by piece (at most one buffer each): fill writes
    // a piece into a free buffer, whose copy is then queued on the stream. Returns once the last
    // piece is queued; work queued on the stream afterwards sees the bytes.
    void copy(void* dst, size_t n, const Fill& fill);

    double fill_seconds() const { return fill_s_; }  // time spent in fill
    double wait_seconds() const { return wait_s_; }  // time spent waiting for a free buffer
    size_t bytes() const { return bytes_done_; }     // copied so far
    size_t staging_bytes() const { return size_t(n_buffers_) * bytes_; }

private:
    cudaStream_t stream_;
    int n_buffers_;
    size_t bytes_;
    std::vector<Tensor> host_;  // page-locked
    std::vector<cudaEvent_t> done_;
    std::vector<bool> used_;
    int next_ = 0;
    double fill_s_ = 0, wait_s_ = 0;
    size_t bytes_done_ = 0;
};

}  // namespace qdit::cuda
