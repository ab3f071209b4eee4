#include "backend/cpu/rope_half.h"

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "core/threads.h"
#include "backend/cpu/elementwise.h"

namespace qdit::cpu {

RotaryHalf::RotaryHalf(double theta, int64_t head_dim) : head_dim_(head_dim) {
    if (head_dim <= 0 || head_dim % 2 != 0 || !(theta > 0))
        raise<ShapeError>("rope: head_dim {} must be even and positive, theta {} positive",
                          head_dim, theta);
    for (int64_t k = 0; k < head_dim / 2; ++k) {
        const float e = float(2 * k) / float(head_dim);
        inv_freq_.push_back(1.0f / std::pow(float(theta), e));
    }
}

Tensor RotaryHalf::freqs(const std::vector<int64_t>& pos) const {
    const int64_t n = int64_t(pos.size()), half = head_dim_ / 2;
    Tensor out = Tensor::empty({n, half, 2}, DType::F32);
    float* o = out.data<float>();
    for (int64_t i = 0; i < n; ++i)
        for (int64_t k = 0; k < half; ++k) {
            const float angle = float(pos[size_t(i)]) * inv_freq_[size_t(k)];
            o[(i * half + k) * 2] = std::cos(angle);
            o[(i * half + k) * 2 + 1] = std::sin(angle);
        }
    return out;
}

void apply_rope_half(Tensor& x, const Tensor& freqs) {
    for_each_rope_head(x, freqs, "apply_rope_half", [](auto* v, const float* cs, int64_t half) {
        using T = std::remove_pointer_t<decltype(v)>;
        for (int64_t k = 0; k < half; ++k) {
            const float c = round_as<T>(cs[2 * k]), s = round_as<T>(cs[2 * k + 1]);
            const float x1 = load(v, k), x2 = load(v, k + half);
            store(v, k, round_as<T>(x1 * c) + round_as<T>(-x2 * s));
            store(v, k + half, round_as<T>(x2 * c) + round_as<T>(x1 * s));
        }
    });
}

}  // namespace qdit::cpu
