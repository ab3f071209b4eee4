// Checkpoint tensors read straight into GPU memory: each tensor's bytes go from its file (pread on a
// few threads, io/files.h) through pinned staging buffers (backend/cuda/staging.h) to the device,
// the copy of one piece overlapping the read of the next, and are converted or int8-quantized there
// (backend/cuda/weight_load.h). The host holds the staging buffers and nothing else of the model.
// The results equal the host path's (host_weights + upload) bit for bit.
#pragma once
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "backend/cuda/device_tensor.h"
#include "backend/cuda/staging.h"
#include "io/files.h"
#include "io/safetensors.h"
#include "nn/load.h"

namespace qdit::nn::gpu {

class CheckpointReader {
public:
    // Reads from `ck` with `threads` reading threads, on `stream` (every copy and kernel goes there).
    CheckpointReader(const Checkpoint& ck, cudaStream_t stream, int threads = 4);
    // Waits for the queued work and adds this reader's times to nn::load_stats().
    ~CheckpointReader();
    CheckpointReader(const CheckpointReader&) = delete;
    CheckpointReader& operator=(const CheckpointReader&) = delete;

    const Checkpoint& checkpoint() const { return ck_; }
    cudaStream_t stream() const { return stream_; }

    // Tensor `name` on the device with its stored bytes (a temporary, MemKind::Activation): F32, F16,
    // BF16 and I8 as stored; other float types converted to F32 on the host first (as Tensor::to
    // does). Asynchronous: work queued on the stream afterwards sees it.
    cuda::DTensor stored(const std::string& name);
    // The first n bytes of the stored tensor at `b` into device memory `dst`, as they are.
    void copy_bytes(const TensorBytes& b, size_t n, void* dst);
    // Tensor `name` converted to `dtype` (BF16 or F32) in weight memory.
    cuda::DTensor tensor(const std::string& name, DType dtype);

    // Brackets device work (conversion, quantization) whose GPU time is reported as "convert".
    void begin_convert() { record(); }
    void end_convert() { record(); }

private:
    void record();  // an event on the stream, kept until the destructor reads the times

    const Checkpoint& ck_;
    cudaStream_t stream_;
    RangeReader files_;
    cuda::StagedUpload up_;
    std::vector<cudaEvent_t> events_;  // begin / end pairs
    std::chrono::steady_clock::time_point started_;
};

}  // namespace qdit::nn::gpu
