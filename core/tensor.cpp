#include "core/tensor.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace qdit {

std::string Device::str() const {
    return type == DeviceType::CPU ? "cpu" : fmt::format("cuda:{}", index);
}

HostStorage::HostStorage(size_t bytes) : size_(bytes) {
    size_t alloc = (bytes + 63) / 64 * 64;
    ptr_ = static_cast<uint8_t*>(std::aligned_alloc(64, alloc ? alloc : 64));
    if (!ptr_) throw std::bad_alloc();
}
HostStorage::~HostStorage() { std::free(ptr_); }

std::string shape_str(const Shape& s) { return fmt::format("[{}]", fmt::join(s, ", ")); }

int64_t shape_numel(const Shape& s) {
    int64_t n = 1;
    for (int64_t d : s) n *= d;
    return n;
}

Tensor::Tensor(std::shared_ptr<Storage> storage, size_t offset, Shape shape, DType dtype)
    : storage_(std::move(storage)), offset_(offset), shape_(std::move(shape)), dtype_(dtype) {
    QDIT_CHECK(offset_ + nbytes() <= storage_->size(), "tensor {} {} does not fit its storage",
               dtype_name(dtype_), shape_str(shape_));
}

Tensor Tensor::empty(Shape shape, DType dtype) {
    for (int64_t d : shape) QDIT_CHECK(d >= 0, "negative dimension in {}", shape_str(shape));
    size_t bytes = size_t(shape_numel(shape)) * dtype_size(dtype);
    return Tensor(std::make_shared<HostStorage>(bytes), 0, std::move(shape), dtype);
}

Tensor Tensor::zeros(Shape shape, DType dtype) {
    Tensor t = empty(std::move(shape), dtype);
    std::memset(t.raw(), 0, t.nbytes());
    return t;
}

int64_t Tensor::size(int64_t d) const {
    int64_t n = dim();
    if (d < 0) d += n;
    QDIT_CHECK(d >= 0 && d < n, "dimension {} out of range for shape {}", d, shape_str(shape_));
    return shape_[size_t(d)];
}

Tensor Tensor::view(Shape shape) const {
    QDIT_CHECK(shape_numel(shape) == numel(), "cannot view {} as {}", shape_str(shape_),
               shape_str(shape));
    return Tensor(storage_, offset_, std::move(shape), dtype_);
}

Tensor Tensor::slice_rows(int64_t begin, int64_t end) const {
    QDIT_CHECK(dim() >= 1 && 0 <= begin && begin <= end && end <= shape_[0],
               "rows [{}, {}) out of range for shape {}", begin, end, shape_str(shape_));
    Shape s = shape_;
    s[0] = end - begin;
    size_t row_bytes = shape_[0] ? nbytes() / size_t(shape_[0]) : 0;
    return Tensor(storage_, offset_ + size_t(begin) * row_bytes, std::move(s), dtype_);
}

void convert_to_f32(const void* src, DType s, float* dst, int64_t n) {
    switch (s) {
        case DType::F32: std::memcpy(dst, src, size_t(n) * 4); break;
        case DType::F64: {
            auto p = static_cast<const double*>(src);
            for (int64_t i = 0; i < n; ++i) dst[i] = float(p[i]);
        } break;
        case DType::BF16: {
            auto p = static_cast<const uint16_t*>(src);
            for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(p[i]);
        } break;
        case DType::F16: {
            auto p = static_cast<const uint16_t*>(src);
            for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(p[i]);
        } break;
        case DType::F8_E4M3: {
            auto p = static_cast<const uint8_t*>(src);
            for (int64_t i = 0; i < n; ++i) dst[i] = f8e4m3_to_f32(p[i]);
        } break;
        case DType::I64: {
            auto p = static_cast<const int64_t*>(src);
            for (int64_t i = 0; i < n; ++i) dst[i] = float(p[i]);
        } break;
        case DType::I32: {
            auto p = static_cast<const int32_t*>(src);
            for (int64_t i = 0; i < n; ++i) dst[i] = float(p[i]);
        } break;
        case DType::I8: {
            auto p = static_cast<const int8_t*>(src);
            for (int64_t i = 0; i < n; ++i) dst[i] = float(p[i]);
        } break;
        case DType::U8: {
            auto p = static_cast<const uint8_t*>(src);
            for (int64_t i = 0; i < n; ++i) dst[i] = float(p[i]);
        } break;
    }
}

void convert_from_f32(const float* src, void* dst, DType d, int64_t n) {
    switch (d) {
        case DType::F32: std::memcpy(dst, src, size_t(n) * 4); break;
        case DType::F64: {
            auto p = static_cast<double*>(dst);
            for (int64_t i = 0; i < n; ++i) p[i] = src[i];
        } break;
        case DType::BF16: {
            auto p = static_cast<uint16_t*>(dst);
            for (int64_t i = 0; i < n; ++i) p[i] = f32_to_bf16(src[i]);
        } break;
        case DType::F16: {
            auto p = static_cast<uint16_t*>(dst);
            for (int64_t i = 0; i < n; ++i) p[i] = f32_to_f16(src[i]);
        } break;
        case DType::I64: {
            auto p = static_cast<int64_t*>(dst);
            for (int64_t i = 0; i < n; ++i) p[i] = int64_t(std::nearbyint(src[i]));
        } break;
        case DType::I32: {
            auto p = static_cast<int32_t*>(dst);
            for (int64_t i = 0; i < n; ++i) p[i] = int32_t(std::nearbyint(src[i]));
        } break;
        case DType::I8: {
            auto p = static_cast<int8_t*>(dst);
            for (int64_t i = 0; i < n; ++i)
                p[i] = int8_t(std::fmax(-128.f, std::fmin(127.f, std::nearbyint(src[i]))));
        } break;
        case DType::U8: {
            auto p = static_cast<uint8_t*>(dst);
            for (int64_t i = 0; i < n; ++i)
                p[i] = uint8_t(std::fmax(0.f, std::fmin(255.f, std::nearbyint(src[i]))));
        } break;
        case DType::F8_E4M3:
            throw Error("conversion to F8_E4M3 is not implemented on the CPU");
    }
}

Tensor Tensor::to(DType t) const {
    QDIT_CHECK(device().type == DeviceType::CPU, "Tensor::to reads host memory; this {} tensor is on {}",
               shape_str(shape_), device().str());
    Tensor out = empty(shape_, t);
    if (t == dtype_) {
        std::memcpy(out.raw(), raw(), nbytes());
        return out;
    }
    const int64_t chunk = 1 << 16;
    std::vector<float> buf(size_t(std::min<int64_t>(chunk, numel())));
    const uint8_t* src = static_cast<const uint8_t*>(raw());
    uint8_t* dst = static_cast<uint8_t*>(out.raw());
    for (int64_t i = 0; i < numel(); i += chunk) {
        int64_t n = std::min(chunk, numel() - i);
        convert_to_f32(src + size_t(i) * dtype_size(dtype_), dtype_, buf.data(), n);
        convert_from_f32(buf.data(), dst + size_t(i) * dtype_size(t), t, n);
    }
    return out;
}

float Tensor::item_f32(int64_t i) const {
    QDIT_CHECK(i >= 0 && i < numel(), "index {} out of range for shape {}", i, shape_str(shape_));
    QDIT_CHECK(device().type == DeviceType::CPU, "Tensor::item_f32 reads host memory; this tensor is on {}",
               device().str());
    float f;
    convert_to_f32(static_cast<const uint8_t*>(raw()) + size_t(i) * dtype_size(dtype_), dtype_, &f,
                   1);
    return f;
}

}  // namespace qdit
