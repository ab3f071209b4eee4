#include "backend/cuda/device_tensor.h"
#include "backend/cuda/pinned.h"

#include <algorithm>

namespace qdit::cuda {

namespace {

// Device memory of the caching allocator seen through core's Storage.
class DeviceStorage : public Storage {
public:
    DeviceStorage(std::shared_ptr<void> mem, uint8_t* base, size_t size, int device)
        : mem_(std::move(mem)), base_(base), size_(size) {
        device_ = {DeviceType::CUDA, device};
    }
    uint8_t* data() override { return base_; }
    size_t size() const override { return size_; }
    const std::shared_ptr<void>& memory() const { return mem_; }

private:
    std::shared_ptr<void> mem_;
    uint8_t* base_;
    size_t size_;
};

// Page-locked host memory (cudaHostAlloc), freed with the last view.
class PinnedStorage : public Storage {
public:
    explicit PinnedStorage(size_t size) : size_(size) {
        void* p = nullptr;
        check(cudaHostAlloc(&p, std::max<size_t>(size, 1), cudaHostAllocDefault), "page-locked host memory");
        ptr_ = static_cast<uint8_t*>(p);
    }
    ~PinnedStorage() override { cudaFreeHost(ptr_); }
    uint8_t* data() override { return ptr_; }
    size_t size() const override { return size_; }

private:
    uint8_t* ptr_ = nullptr;
    size_t size_;
};

}  // namespace

Tensor pinned_host_tensor(Shape shape, DType dtype) {
    const size_t bytes = size_t(shape_numel(shape)) * dtype_size(dtype);
    return Tensor(std::make_shared<PinnedStorage>(bytes), 0, std::move(shape), dtype);
}

void check(cudaError_t e, const char* what) {
    if (e != cudaSuccess) raise<Error>("CUDA error in {}: {}", what, cudaGetErrorString(e));
}

DTensor DTensor::empty(Shape shape, DType dtype, MemKind kind, const void* stream) {
    DTensor t;
    t.shape_ = std::move(shape);
    t.dtype_ = dtype;
    Allocator& a = Allocator::instance();
    t.ptr_ = a.allocate(t.nbytes(), kind, stream);
    t.mem_ = std::shared_ptr<void>(t.ptr_, [](void* p) { Allocator::instance().release(p); });
    return t;
}

DTensor DTensor::zeros(Shape shape, DType dtype, MemKind kind, cudaStream_t stream) {
    DTensor t = empty(std::move(shape), dtype, kind);
    check(cudaMemsetAsync(t.ptr_, 0, t.nbytes(), stream), "DTensor::zeros");
    return t;
}

DTensor DTensor::upload(const Tensor& host, MemKind kind, cudaStream_t stream) {
    DTensor t = empty(host.shape(), host.dtype(), kind);
    check(cudaMemcpyAsync(t.ptr_, host.raw(), t.nbytes(), cudaMemcpyHostToDevice, stream), "DTensor::upload");
    check(cudaStreamSynchronize(stream), "DTensor::upload");  // the host tensor may go away next
    return t;
}

Tensor DTensor::download(cudaStream_t stream) const {
    Tensor h = Tensor::empty(shape_, dtype_);
    check(cudaMemcpyAsync(h.raw(), ptr_, nbytes(), cudaMemcpyDeviceToHost, stream), "DTensor::download");
    check(cudaStreamSynchronize(stream), "DTensor::download");
    return h;
}

DTensor DTensor::view(Shape shape) const {
    if (shape_numel(shape) != numel())
        raise<ShapeError>("DTensor::view: {} has {} elements, {} has {}", shape_str(shape_), numel(),
                          shape_str(shape), shape_numel(shape));
    DTensor t = *this;
    t.shape_ = std::move(shape);
    return t;
}

DTensor DTensor::rows(int64_t begin, int64_t end) const {
    if (dim() < 1 || begin < 0 || end < begin || end > shape_[0])
        raise<ShapeError>("DTensor::rows: [{}, {}) out of {}", begin, end, shape_str(shape_));
    DTensor t = *this;
    const size_t row_bytes = shape_[0] ? nbytes() / size_t(shape_[0]) : 0;
    t.ptr_ = static_cast<uint8_t*>(ptr_) + size_t(begin) * row_bytes;
    t.shape_[0] = end - begin;
    return t;
}

Tensor DTensor::as_tensor() const {
    int device = 0;
    check(cudaGetDevice(&device), "DTensor::as_tensor");
    auto storage = std::make_shared<DeviceStorage>(mem_, static_cast<uint8_t*>(ptr_), nbytes(), device);
    return Tensor(storage, 0, shape_, dtype_);
}

DTensor DTensor::of(const Tensor& t) {
    if (!t.defined()) return DTensor();
    const auto* s = dynamic_cast<const DeviceStorage*>(t.storage().get());
    if (!s)
        raise<ShapeError>("a {} tensor on {} is not in CUDA memory", shape_str(t.shape()), t.device().str());
    DTensor d;
    d.mem_ = s->memory();
    d.ptr_ = const_cast<void*>(t.raw());
    d.shape_ = t.shape();
    d.dtype_ = t.dtype();
    return d;
}

}  // namespace qdit::cuda
