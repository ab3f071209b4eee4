#include "backend/cpu/norm.h"

#include <cmath>
#include <vector>

#include "core/threads.h"
#include "backend/cpu/elementwise.h"

namespace qdit::cpu {

namespace {

// Rows per parallel chunk: enough work per task for dims in the hundreds.
int64_t row_grain(int64_t d) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, d)); }

// 1 / sqrt(mean(x²) + eps) of one row; the sum is taken in double and rounded
// to f32, which is what torch's f32 sum approximates.
template <typename T>
float rms_inverse(const T* x, int64_t d, float eps) {
    double ss = 0;
    for (int64_t i = 0; i < d; ++i) {
        float v = load(x, i);
        ss += double(v * v);
    }
    float var = float(ss) / float(d);
    return 1.0f / std::sqrt(var + eps);
}

// Rows of x [B, L, D] (or [N, D] with B = 1) and the modulation row each uses.
struct Rows {
    int64_t n = 0, d = 0, per_batch = 0;
};

Rows rows_of(const Tensor& x, const Tensor& mod, int64_t d, const char* op) {
    Rows r;
    r.d = d;
    r.n = x.numel() / d;
    r.per_batch = r.n;
    if (mod.defined()) {
        if (x.dim() != 3 || mod.dtype() != DType::F32 || mod.dim() != 2 ||
            mod.size(0) != x.size(0) || mod.size(1) != d)
            raise<ShapeError>("{}: x must be [B, L, {}] with modulation F32 [B, {}], got {} and {}",
                              op, d, d, shape_str(x.shape()), shape_str(mod.shape()));
        r.per_batch = x.size(1);
    }
    return r;
}

}  // namespace

RMSNorm::RMSNorm(std::string name, Tensor weight, float eps)
    : name_(std::move(name)), weight_(std::move(weight)), eps_(eps) {
    check_activation(weight_, name_.c_str());
    if (weight_.dim() != 1) raise<ShapeError>("{}: weight must be [D], got {}", name_, shape_str(weight_.shape()));
    dim_ = weight_.size(0);
}

namespace {

// The shared kernel: out = f(x_row_normed) per element, where `emit(T* out_row,
// row, i, normed)` stores the result.
template <typename T, typename Emit>
void rms_rows(const Tensor& x, const Tensor& w, float eps, const Rows& r, Emit&& emit) {
    const T* xp = x.data<T>();
    const T* wp = w.data<T>();
    parallel_for(r.n, row_grain(r.d), [&](int64_t b, int64_t e) {
        for (int64_t row = b; row < e; ++row) {
            const T* xr = xp + row * r.d;
            float inv = rms_inverse(xr, r.d, eps);
            for (int64_t i = 0; i < r.d; ++i) {
                // f32 product, rounded to the weight dtype before the weight multiply.
                float n = round_as<T>(load(xr, i) * inv);
                emit(row, i, round_as<T>(n * load(wp, i)));
            }
        }
    });
}

}  // namespace

Tensor RMSNorm::forward(const Tensor& x) const { return forward_scaled(x, Tensor()); }

Tensor RMSNorm::forward_scaled(const Tensor& x, const Tensor& scale) const {
    check_activation(x, name_.c_str());
    if (x.dtype() != weight_.dtype() || x.size(-1) != dim_)
        raise<ShapeError>("{}: expects {} [..., {}], got {} {}", name_, dtype_name(weight_.dtype()),
                          dim_, dtype_name(x.dtype()), shape_str(x.shape()));
    Rows r = rows_of(x, scale, dim_, name_.c_str());
    Tensor y = Tensor::empty(x.shape(), x.dtype());
    dispatch_float(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        T* yp = y.data<T>();
        const float* sp = scale.defined() ? scale.data<float>() : nullptr;
        rms_rows<T>(x, weight_, eps_, r, [&](int64_t row, int64_t i, float n) {
            if (sp) n = n * sp[(row / r.per_batch) * r.d + i];
            store(yp, row * r.d + i, n);
        });
    });
    return y;
}

void RMSNorm::add_to(Tensor& x, const Tensor& y, const Tensor& gate) const {
    check_activation(x, name_.c_str());
    check_activation(y, name_.c_str());
    if (x.dtype() != weight_.dtype() || y.dtype() != x.dtype() || x.shape() != y.shape() ||
        x.size(-1) != dim_)
        raise<ShapeError>("{}: residual {} {} and branch {} {} must match [..., {}] {}", name_,
                          dtype_name(x.dtype()), shape_str(x.shape()), dtype_name(y.dtype()),
                          shape_str(y.shape()), dim_, dtype_name(weight_.dtype()));
    Rows r = rows_of(y, gate, dim_, name_.c_str());
    dispatch_float(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        T* xp = x.data<T>();
        const float* gp = gate.defined() ? gate.data<float>() : nullptr;
        rms_rows<T>(y, weight_, eps_, r, [&](int64_t row, int64_t i, float n) {
            if (gp) n = round_as<T>(gp[(row / r.per_batch) * r.d + i] * n);
            const int64_t k = row * r.d + i;
            store(xp, k, load(xp, k) + n);
        });
    });
}

Tensor layer_norm(const Tensor& x, float eps, const Tensor& scale, const Tensor& shift) {
    check_activation(x, "layer_norm");
    const int64_t d = x.size(-1);
    Rows r = rows_of(x, scale, d, "layer_norm");
    if (shift.defined() && (!scale.defined() || shift.shape() != scale.shape() || shift.dtype() != DType::F32))
        raise<ShapeError>("layer_norm: shift {} needs a scale of its shape (scale {})", shape_str(shift.shape()),
                          scale.defined() ? shape_str(scale.shape()) : "none");
    Tensor y = Tensor::empty(x.shape(), x.dtype());
    dispatch_float(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const T* xp = x.data<T>();
        T* yp = y.data<T>();
        const float* sp = scale.defined() ? scale.data<float>() : nullptr;
        const float* hp = shift.defined() ? shift.data<float>() : nullptr;
        parallel_for(r.n, row_grain(d), [&](int64_t b, int64_t e) {
            for (int64_t row = b; row < e; ++row) {
                const T* xr = xp + row * d;
                double sum = 0, sq = 0;
                for (int64_t i = 0; i < d; ++i) sum += load(xr, i);
                const double mean = sum / double(d);
                for (int64_t i = 0; i < d; ++i) {
                    double c = load(xr, i) - mean;
                    sq += c * c;
                }
                const float m = float(mean);
                const float rstd = 1.0f / std::sqrt(float(sq / double(d)) + eps);
                for (int64_t i = 0; i < d; ++i) {
                    float v = round_as<T>((load(xr, i) - m) * rstd);
                    if (sp) v = v * sp[(row / r.per_batch) * d + i];
                    if (hp) v = round_as<T>(v) + hp[(row / r.per_batch) * d + i];
                    store(yp, row * d + i, v);
                }
            }
        });
    });
    return y;
}

}  // namespace qdit::cpu

namespace qdit::cpu {

Tensor channel_rms_norm(const Tensor& x, const Tensor& gamma, float eps, bool silu) {
    check_activation(x, "channel_rms_norm");
    const int64_t C = x.dim() >= 1 ? x.size(x.dim() - 1) : 0;
    QDIT_CHECK(C > 0 && gamma.defined() && gamma.dtype() == DType::F32 && gamma.numel() == C,
               "channel_rms_norm: x {} with gamma {} (need x [..., C], gamma F32 [C])", shape_str(x.shape()),
               gamma.defined() ? shape_str(gamma.shape()) : "none");
    Tensor y = Tensor::empty(x.shape(), x.dtype());
    const int64_t n = x.numel() / C;
    const float scale = float(std::sqrt(double(C)));
    const float* g = gamma.data<float>();
    dispatch_float(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const T* xp = x.data<T>();
        T* yp = y.data<T>();
        parallel_for(n, row_grain(C), [&](int64_t b, int64_t e) {
            for (int64_t r = b; r < e; ++r) {
                const T* xr = xp + r * C;
                T* yr = yp + r * C;
                double ss = 0;
                for (int64_t c = 0; c < C; ++c) {
                    const float v = load(xr, c);
                    ss += double(v * v);
                }
                const float denom = std::max(std::sqrt(float(ss)), eps);
                for (int64_t c = 0; c < C; ++c) {
                    float v = round_as<T>(load(xr, c) / denom);
                    v = round_as<T>(v * scale);
                    v = round_as<T>(v * g[c]);
                    if (silu) v = v / (1.0f + std::exp(-v));
                    store(yr, c, v);
                }
            }
        });
    });
    return y;
}

}  // namespace qdit::cpu
