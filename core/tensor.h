// A strided n-d view over a shared storage. Storage is either owned memory or
// a read-only region of a memory-mapped file kept alive by the view.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"

namespace qdit {

enum class DeviceType : uint8_t { CPU, CUDA };

struct Device {
    DeviceType type = DeviceType::CPU;
    int index = 0;
    bool operator==(const Device& o) const { return type == o.type && index == o.index; }
    std::string str() const;
};

// A block of bytes. Owning storage frees on destruction; a file mapping unmaps.
class Storage {
public:
    virtual ~Storage() = default;
    virtual uint8_t* data() = 0;
    virtual size_t size() const = 0;
    virtual bool writable() const { return true; }
    Device device() const { return device_; }

protected:
    Device device_;
};

// 64-byte aligned host memory.
class HostStorage : public Storage {
public:
    explicit HostStorage(size_t bytes);
    ~HostStorage() override;
    uint8_t* data() override { return ptr_; }
    size_t size() const override { return size_; }

private:
    uint8_t* ptr_ = nullptr;
    size_t size_ = 0;
};

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);  // "[3, 4]"
int64_t shape_numel(const Shape& s);
// n rounded up to a multiple of m (m > 0).
inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

class Tensor {
public:
    Tensor() = default;
    Tensor(std::shared_ptr<Storage> storage, size_t offset, Shape shape, DType dtype);

    // New contiguous host tensor; contents uninitialised.
    static Tensor empty(Shape shape, DType dtype);
    static Tensor zeros(Shape shape, DType dtype);

    bool defined() const { return storage_ != nullptr; }
    const Shape& shape() const { return shape_; }
    int64_t dim() const { return int64_t(shape_.size()); }
    int64_t size(int64_t d) const;  // negative d counts from the end
    int64_t numel() const { return shape_numel(shape_); }
    size_t nbytes() const { return size_t(numel()) * dtype_size(dtype_); }
    DType dtype() const { return dtype_; }
    Device device() const { return storage_ ? storage_->device() : Device{}; }
    const std::shared_ptr<Storage>& storage() const { return storage_; }

    void* raw() { return storage_->data() + offset_; }
    const void* raw() const { return storage_->data() + offset_; }
    template <typename T>
    T* data() {
        return reinterpret_cast<T*>(raw());
    }
    template <typename T>
    const T* data() const {
        return reinterpret_cast<const T*>(raw());
    }

    // Same bytes, new shape (numel must match).
    Tensor view(Shape shape) const;
    // Rows [begin, end) along dim 0.
    Tensor slice_rows(int64_t begin, int64_t end) const;
    // A new contiguous host tensor of dtype `t` (always a copy, even for the same dtype); host
    // tensors only (ops::to_host brings a device tensor back).
    Tensor to(DType t) const;
    // Element i (flat, row-major) as float, for tests and small tools.
    float item_f32(int64_t i) const;

private:
    std::shared_ptr<Storage> storage_;
    size_t offset_ = 0;
    Shape shape_;
    DType dtype_ = DType::F32;
};

// Converts n elements from src (dtype s) into dst as float.
void convert_to_f32(const void* src, DType s, float* dst, int64_t n);
// Converts n floats into dst of dtype d (float types and I32/I8/U8 by rounding).
void convert_from_f32(const float* src, void* dst, DType d, int64_t n);

}  // namespace qdit
