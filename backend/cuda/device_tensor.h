// A contiguous row-major tensor in device memory from the caching allocator: the memory is shared
// by views (view / rows) and goes back to the allocator's cache when the last one is dropped.
#pragma once
#include <cstdint>
#include <memory>

#include <cuda_runtime.h>

#include "backend/cuda/allocator.h"
#include "core/tensor.h"

namespace qdit::cuda {

// Throws qdit::Error naming `what` when `e` is not cudaSuccess.
void check(cudaError_t e, const char* what);

class DTensor {
public:
    DTensor() = default;
    // Contents uninitialised.
    // `stream`: the stream whose work uses it (Allocator::allocate), or null.
    static DTensor empty(Shape shape, DType dtype, MemKind kind = MemKind::Activation, const void* stream = nullptr);
    static DTensor zeros(Shape shape, DType dtype, MemKind kind, cudaStream_t stream);
    // A copy of a host tensor (contiguous, any dtype); synchronous with respect to the host data.
    static DTensor upload(const Tensor& host, MemKind kind, cudaStream_t stream);
    // A host copy (waits for `stream`).
    Tensor download(cudaStream_t stream) const;

    bool defined() const { return mem_ != nullptr; }
    const Shape& shape() const { return shape_; }
    int64_t dim() const { return int64_t(shape_.size()); }
    int64_t size(int64_t d) const { return shape_[size_t(d < 0 ? d + dim() : d)]; }
    int64_t numel() const { return shape_numel(shape_); }
    size_t nbytes() const { return size_t(numel()) * dtype_size(dtype_); }
    DType dtype() const { return dtype_; }

    void* raw() const { return ptr_; }
    template <typename T>
    T* data() const {
        return static_cast<T*>(ptr_);
    }

    // Same memory, new shape (numel must match).
    DTensor view(Shape shape) const;
    // Rows [begin, end) along dim 0.
    DTensor rows(int64_t begin, int64_t end) const;

    // The same memory as a core Tensor on the current CUDA device (its Storage keeps the memory
    // alive), and back: a CUDA Tensor seen as a DTensor (any such Tensor, views included).
    Tensor as_tensor() const;
    static DTensor of(const Tensor& t);

private:
    std::shared_ptr<void> mem_;
    void* ptr_ = nullptr;
    Shape shape_;
    DType dtype_ = DType::F32;
};

}  // namespace qdit::cuda
