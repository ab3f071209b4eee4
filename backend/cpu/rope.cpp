#include "backend/cpu/rope.h"

#include <cmath>
#include <numeric>

#include "core/threads.h"
#include "backend/cpu/elementwise.h"

namespace qdit::cpu {

RopeEmbedder::RopeEmbedder(double theta, std::vector<int64_t> axes_dims,
                           std::vector<int64_t> axes_lens)
    : dims_(std::move(axes_dims)), lens_(std::move(axes_lens)) {
    if (dims_.size() != lens_.size() || dims_.empty())
        raise<ShapeError>("rope: axes_dims and axes_lens must be non-empty and of equal length");
    head_dim_ = std::accumulate(dims_.begin(), dims_.end(), int64_t(0));
    for (size_t a = 0; a < dims_.size(); ++a) {
        const int64_t d = dims_[a], half = d / 2;
        if (d <= 0 || d % 2 != 0 || lens_[a] <= 0)
            raise<ShapeError>("rope: axis {} has dim {} (must be even and positive) and length {}",
                              a, d, lens_[a]);
        std::vector<float> t(size_t(lens_[a] * half * 2));
        for (int64_t k = 0; k < half; ++k) {
            const double omega = 1.0 / std::pow(theta, double(2 * k) / double(d));
            for (int64_t p = 0; p < lens_[a]; ++p) {
                const float angle = float(double(p) * omega);
                t[size_t((p * half + k) * 2)] = std::cos(angle);
                t[size_t((p * half + k) * 2 + 1)] = std::sin(angle);
            }
        }
        table_.push_back(std::move(t));
    }
}

Tensor RopeEmbedder::freqs(const std::vector<int64_t>& pos) const {
    const int64_t na = axes();
    if (na == 0 || int64_t(pos.size()) % na != 0)
        raise<ShapeError>("rope: {} positions is not a multiple of {} axes", pos.size(), na);
    const int64_t n = int64_t(pos.size()) / na, half = head_dim_ / 2;
    Tensor out = Tensor::empty({n, half, 2}, DType::F32);
    float* o = out.data<float>();
    for (int64_t i = 0; i < n; ++i) {
        float* dst = o + i * half * 2;
        for (int64_t a = 0; a < na; ++a) {
            const int64_t p = pos[size_t(i * na + a)], h = dims_[size_t(a)] / 2;
            if (p < 0 || p >= lens_[size_t(a)])
                raise<ShapeError>("rope: position {} on axis {} is outside [0, {}) (axes_lens)", p,
                                  a, lens_[size_t(a)]);
            const float* src = table_[size_t(a)].data() + p * h * 2;
            std::copy(src, src + h * 2, dst);
            dst += h * 2;
        }
    }
    return out;
}

void check_rope_args(const Tensor& x, const Tensor& freqs, const char* op) {
    check_activation(x, op);
    if (x.dim() != 4 || freqs.dtype() != DType::F32 || freqs.dim() != 4 ||
        freqs.size(0) != x.size(0) || freqs.size(1) != x.size(1) ||
        freqs.size(2) * 2 != x.size(3) || freqs.size(3) != 2)
        raise<ShapeError>("{}: x must be [B, L, H, D] and freqs F32 [B, L, D/2, 2], got {} and {}",
                          op, shape_str(x.shape()), shape_str(freqs.shape()));
}

void apply_rope(Tensor& x, const Tensor& freqs) {
    for_each_rope_head(x, freqs, "apply_rope", [](auto* v, const float* cs, int64_t half) {
        for (int64_t k = 0; k < half; ++k) {
            const float a = load(v, 2 * k), bi = load(v, 2 * k + 1);
            const float c = cs[2 * k], s = cs[2 * k + 1];
            store(v, 2 * k, a * c - bi * s);
            store(v, 2 * k + 1, a * s + bi * c);
        }
    });
}

}  // namespace qdit::cpu
