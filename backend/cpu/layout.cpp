#include "backend/cpu/layout.h"

#include <algorithm>
#include <cmath>
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

namespace {

// [B, M, N] → [B, N, M] for elements of T's size, in 32x32 tiles.
template <typename T>
void transpose_last2(const T* in, T* out, int64_t B, int64_t M, int64_t N) {
    constexpr int64_t kTile = 32;
    const int64_t mt = (M + kTile - 1) / kTile;
    parallel_for(B * mt, 1, [&](int64_t begin, int64_t end) {
        for (int64_t task = begin; task < end; ++task) {
            const int64_t b = task / mt, m0 = (task % mt) * kTile, m1 = std::min(M, m0 + kTile);
            const T* src = in + b * M * N;
            T* dst = out + b * M * N;
            for (int64_t n0 = 0; n0 < N; n0 += kTile)
                for (int64_t m = m0; m < m1; ++m)
                    for (int64_t n = n0; n < std::min(N, n0 + kTile); ++n) dst[n * M + m] = src[m * N + n];
        }
    });
}

Tensor transposed(const Tensor& x, int64_t B, int64_t M, int64_t N, Shape out_shape) {
    Tensor y = Tensor::empty(std::move(out_shape), x.dtype());
    if (dtype_size(x.dtype()) == 4)
        transpose_last2(x.data<uint32_t>(), y.data<uint32_t>(), B, M, N);
    else if (dtype_size(x.dtype()) == 2)
        transpose_last2(x.data<uint16_t>(), y.data<uint16_t>(), B, M, N);
    else
        raise<ShapeError>("transpose: {} elements are not supported", dtype_name(x.dtype()));
    return y;
}

}  // namespace

Tensor nchw_to_nhwc(const Tensor& x, DType dt) {
    QDIT_CHECK(x.defined() && x.dim() == 4 && x.device().type == DeviceType::CPU, "nchw_to_nhwc: x {}",
               x.defined() ? shape_str(x.shape()) : "none");
    const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
    return transposed(x.to(dt), B, C, H * W, {B, H, W, C});
}

Tensor nhwc_to_nchw(const Tensor& x) {
    QDIT_CHECK(x.defined() && x.dim() == 4 && x.device().type == DeviceType::CPU, "nhwc_to_nchw: x {}",
               x.defined() ? shape_str(x.shape()) : "none");
    const int64_t B = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
    return transposed(x, B, H * W, C, {B, C, H, W});
}

Tensor div_add(const Tensor& x, float divisor, float addend, DType dt) {
    Tensor y = x.to(dt);
    dispatch_float(dt, [&](auto tag) {
        using T = decltype(tag);
        T* p = y.data<T>();
        parallel_for(y.numel(), 1 << 14, [&](int64_t b, int64_t e) {
            for (int64_t i = b; i < e; ++i) store(p, i, round_as<T>(load(p, i) / divisor) + addend);
        });
    });
    return y;
}

Tensor image_to_u8(const Tensor& image) {
    const int64_t B = image.size(0), C = image.size(1), H = image.size(2), W = image.size(3);
    Tensor out = Tensor::empty({B, H, W, C}, DType::U8);
    uint8_t* o = out.data<uint8_t>();
    dispatch_float(image.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const T* x = image.data<T>();
        parallel_for(B * H, 1, [&](int64_t begin, int64_t end) {
            for (int64_t r = begin; r < end; ++r) {
                const int64_t b = r / H, y = r % H;
                for (int64_t c = 0; c < C; ++c) {
                    const T* row = x + ((b * C + c) * H + y) * W;
                    for (int64_t i = 0; i < W; ++i) {
                        const float v = round_as<T>(load(row, i) * 0.5f + 0.5f);
                        const float u = std::isnan(v) ? 0.0f : std::min(1.0f, std::max(0.0f, v));
                        o[(r * W + i) * C + c] = uint8_t(std::nearbyint(u * 255.0f));
                    }
                }
            }
        });
    });
    return out;
}

}  // namespace qdit::cpu
