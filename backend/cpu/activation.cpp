#include "backend/cpu/activation.h"

#include <cmath>

#include "core/threads.h"
#include "backend/cpu/elementwise.h"

namespace qdit::cpu {

namespace {

constexpr int64_t kGrain = 1 << 14;

inline float silu_f32(float v) { return v / (1.0f + std::exp(-v)); }

}  // namespace

Tensor silu(const Tensor& x) {
    check_activation(x, "silu");
    Tensor y = Tensor::empty(x.shape(), x.dtype());
    dispatch_float(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const T* xp = x.data<T>();
        T* yp = y.data<T>();
        parallel_for(x.numel(), kGrain, [&](int64_t b, int64_t e) {
            for (int64_t i = b; i < e; ++i) store(yp, i, silu_f32(load(xp, i)));
        });
    });
    return y;
}

Tensor gelu_tanh(const Tensor& x) {
    check_activation(x, "gelu_tanh");
    Tensor y = Tensor::empty(x.shape(), x.dtype());
    // torch's constants: sqrt(2)·(2/sqrt(π))·0.5 = sqrt(2/π), and κ = 0.044715.
    const float beta = float(M_SQRT2 * M_2_SQRTPI * 0.5), kappa = 0.044715f;
    dispatch_float(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const T* xp = x.data<T>();
        T* yp = y.data<T>();
        parallel_for(x.numel(), kGrain, [&](int64_t b, int64_t e) {
            for (int64_t i = b; i < e; ++i) {
                const float v = load(xp, i), inner = beta * (v + kappa * v * v * v);
                store(yp, i, 0.5f * v * (1.0f + std::tanh(inner)));
            }
        });
    });
    return y;
}

Tensor silu_mul(const Tensor& a, const Tensor& b) {
    check_activation(a, "silu_mul");
    check_activation(b, "silu_mul");
    if (a.shape() != b.shape() || a.dtype() != b.dtype())
        raise<ShapeError>("silu_mul: operands differ: {} {} vs {} {}", dtype_name(a.dtype()),
                          shape_str(a.shape()), dtype_name(b.dtype()), shape_str(b.shape()));
    Tensor y = Tensor::empty(a.shape(), a.dtype());
    dispatch_float(a.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const T *ap = a.data<T>(), *bp = b.data<T>();
        T* yp = y.data<T>();
        parallel_for(a.numel(), kGrain, [&](int64_t s, int64_t e) {
            for (int64_t i = s; i < e; ++i)
                store(yp, i, round_as<T>(silu_f32(load(ap, i))) * load(bp, i));
        });
    });
    return y;
}

Tensor timestep_embedding(const Tensor& t, int64_t dim, double max_period) {
    if (t.dtype() != DType::F32 || t.dim() != 1 || dim <= 0 || dim % 2 != 0)
        raise<ShapeError>("timestep_embedding: expects t F32 [B] and an even dim, got {} {} and {}",
                          dtype_name(t.dtype()), shape_str(t.shape()), dim);
    const int64_t n = t.size(0), half = dim / 2;
    // torch: exp(float(−ln(max_period)) · k / half), each step an f32 op.
    const float neg_log = float(-std::log(max_period));
    Tensor out = Tensor::empty({n, dim}, DType::F32);
    float* o = out.data<float>();
    for (int64_t b = 0; b < n; ++b) {
        const float tb = t.data<float>()[b];
        for (int64_t k = 0; k < half; ++k) {
            const float f = std::exp(neg_log * float(k) / float(half));
            const float arg = tb * f;
            o[b * dim + k] = std::cos(arg);
            o[b * dim + half + k] = std::sin(arg);
        }
    }
    return out;
}

}  // namespace qdit::cpu
