#ifdef QDIT_WITH_CUDA  // a CUDA build: this file is empty without the CUDA backend
#include "nn/load_cuda.h"

#include <cstring>

#include "backend/cuda/weight_load.h"
#include "core/clock.h"

namespace qdit::nn::gpu {

using cuda::DTensor;
using cuda::MemKind;

CheckpointReader::CheckpointReader(const Checkpoint& ck, cudaStream_t stream, int threads)
    : ck_(ck), stream_(stream), files_(threads), up_(stream), started_(std::chrono::steady_clock::now()) {}

CheckpointReader::~CheckpointReader() {
    cudaStreamSynchronize(stream_);
    LoadStats s;
    s.wall_s = seconds_since(started_);
    s.read_s = up_.fill_seconds();
    s.wait_s = up_.wait_seconds();
    s.bytes = up_.bytes();
    s.staging_bytes = up_.bytes() ? up_.staging_bytes() : 0;
    for (size_t i = 0; i + 1 < events_.size(); i += 2) {
        float ms = 0;
        if (cudaEventElapsedTime(&ms, events_[i], events_[i + 1]) == cudaSuccess) s.convert_s += ms / 1e3;
    }
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
    cudaGetLastError();
    add_load_stats(s);
}

void CheckpointReader::record() {
    cudaEvent_t e;
    cuda::check(cudaEventCreate(&e), "load timing");
    events_.push_back(e);
    cuda::check(cudaEventRecord(e, stream_), "load timing");
}

void CheckpointReader::copy_bytes(const TensorBytes& b, size_t n, void* dst) {
    if (n > b.nbytes) raise<ShapeError>("{}: {} bytes asked of a tensor of {}", b.file, n, b.nbytes);
    up_.copy(dst, n, [&](size_t off, size_t len, void* host) { files_.read(b.file, b.offset + off, len, host); });
}

DTensor CheckpointReader::stored(const std::string& name) {
    const TensorInfo& info = ck_.info(name);
    if (cuda::weight_load_reads(info.dtype) || info.dtype == DType::I8) {
        DTensor d = DTensor::empty(info.shape, info.dtype);
        copy_bytes(ck_.bytes_of(name), d.nbytes(), d.raw());
        return d;
    }
    // F64, F8: the host's conversion to f32, then as above.
    const Tensor f = ck_.get_as(name, DType::F32);
    DTensor d = DTensor::empty(info.shape, DType::F32);
    up_.copy(d.raw(), f.nbytes(),
             [&](size_t off, size_t n, void* host) { std::memcpy(host, static_cast<const char*>(f.raw()) + off, n); });
    return d;
}

DTensor CheckpointReader::tensor(const std::string& name, DType dtype) {
    const TensorInfo& info = ck_.info(name);
    if (dtype != DType::BF16 && dtype != DType::F32)
        raise<ShapeError>("{}: '{}' is read onto the GPU as BF16 or F32, not {}", ck_.path(), name, dtype_name(dtype));
    DTensor out = DTensor::empty(info.shape, dtype, MemKind::Weight);
    if (info.dtype == dtype) {  // as stored: straight into place
        copy_bytes(ck_.bytes_of(name), out.nbytes(), out.raw());
        return out;
    }
    const DTensor raw = stored(name);
    const int64_t cols = info.shape.empty() ? 1 : info.shape.back(), rows = cols ? raw.numel() / cols : 0;
    begin_convert();
    cuda::check(cuda::convert_window(raw.raw(), raw.dtype(), cols, 0, 0, rows, cols, out.raw(), dtype, cols, stream_),
                "weight conversion");
    end_convert();
    return out;
}

}  // namespace qdit::nn::gpu

#endif  // QDIT_WITH_CUDA
