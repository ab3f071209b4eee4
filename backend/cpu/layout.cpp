#include "backend/cpu/layout.h"

#include <cstring>

#include "backend/cpu/elementwise.h"
#include "core/threads.h"

namespace qdit::cpu {

namespace {

void check_block(const Tensor& x, int64_t c0, int64_t w, const char* op) {
    if (x.dim() != 2 || c0 < 0 || w < 0 || c0 + w > x.size(1))
        raise<ShapeError>("{}: columns [{}, {}) of a {} tensor (need [m, n] with the block inside)", op, c0, c0 + w,
                          shape_str(x.shape()));
}

}  // namespace

Tensor take_columns(const Tensor& x, int64_t c0, int64_t w) {
    check_block(x, c0, w, "take_columns");
    const int64_t m = x.size(0), n = x.size(1);
    const size_t es = dtype_size(x.dtype());
    Tensor out = Tensor::empty({m, w}, x.dtype());
    for (int64_t r = 0; r < m; ++r)
        std::memcpy(static_cast<uint8_t*>(out.raw()) + size_t(r * w) * es,
                    static_cast<const uint8_t*>(x.raw()) + size_t(r * n + c0) * es, size_t(w) * es);
    return out;
}

void put_columns(Tensor& dst, int64_t c0, const Tensor& src) {
    check_block(dst, c0, src.dim() == 2 ? src.size(1) : -1, "put_columns");
    QDIT_CHECK(src.size(0) == dst.size(0) && src.dtype() == dst.dtype(), "put_columns: {} {} into {} {}",
               dtype_name(src.dtype()), shape_str(src.shape()), dtype_name(dst.dtype()), shape_str(dst.shape()));
    const int64_t m = dst.size(0), n = dst.size(1), w = src.size(1);
    const size_t es = dtype_size(dst.dtype());
    for (int64_t r = 0; r < m; ++r)
        std::memcpy(static_cast<uint8_t*>(dst.raw()) + size_t(r * n + c0) * es,
                    static_cast<const uint8_t*>(src.raw()) + size_t(r * w) * es, size_t(w) * es);
}

void add_inplace(Tensor& x, const Tensor& y) {
    QDIT_CHECK(x.shape() == y.shape() && x.dtype() == y.dtype(), "add: {} {} and {} {}", dtype_name(x.dtype()),
               shape_str(x.shape()), dtype_name(y.dtype()), shape_str(y.shape()));
    dispatch_float(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        T* a = x.data<T>();
        const T* b = y.data<T>();
        parallel_for(x.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
            for (int64_t i = begin; i < end; ++i) store(a, i, load(a, i) + load(b, i));
        });
    });
}

void add_gated(Tensor& x, const Tensor& y, const Tensor& gate) {
    QDIT_CHECK(x.dim() == 3 && x.shape() == y.shape() && x.dtype() == y.dtype() && gate.dtype() == DType::F32 &&
                   gate.shape() == Shape({x.size(0), x.size(2)}),
               "add_gated: x {} {}, y {} {}, gate {} {} (need x, y [B, L, n], gate F32 [B, n])", dtype_name(x.dtype()),
               shape_str(x.shape()), dtype_name(y.dtype()), shape_str(y.shape()), dtype_name(gate.dtype()),
               shape_str(gate.shape()));
    const int64_t L = x.size(1), n = x.size(2);
    dispatch_float(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        T* a = x.data<T>();
        const T* b = y.data<T>();
        const float* g = gate.data<float>();
        parallel_for(x.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
            for (int64_t i = begin; i < end; ++i)
                store(a, i, load(a, i) + round_as<T>(g[(i / (L * n)) * n + i % n] * load(b, i)));
        });
    });
}

}  // namespace qdit::cpu
