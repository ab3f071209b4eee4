#include "backend/cpu/group_norm.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/threads.h"
#include "backend/cpu/elementwise.h"

namespace qdit::cpu {

Tensor group_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t groups, float eps,
                  bool silu) {
    check_activation(x, "group_norm");
    Tensor y = Tensor::empty(x.shape(), x.dtype());
    if (x.numel() == 0) return y;
    const int64_t C = x.size(-1), B = x.size(0), L = x.numel() / (B * C), G = groups, cg = C / G;

    // Statistics: every task sums a run of rows of one batch item per
    // channel (contiguous, so it vectorises); the channels fold into groups
    // afterwards. Doubles keep the one-pass variance exact enough.
    const int64_t chunk_rows = std::max<int64_t>(64, (L + 4 * num_threads() - 1) / (4 * num_threads()));
    const int64_t chunks = (L + chunk_rows - 1) / chunk_rows;
    std::vector<double> sum(size_t(B * chunks * C)), sumsq(sum.size());
    std::vector<float> scale(size_t(B * C)), shift(size_t(B * C));
    dispatch_float(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const T* xp = x.data<T>();
        T* yp = y.data<T>();
        parallel_for(B * chunks, 1, [&](int64_t begin, int64_t end) {
            for (int64_t task = begin; task < end; ++task) {
                const int64_t b = task / chunks, r0 = (task % chunks) * chunk_rows;
                const int64_t r1 = std::min(L, r0 + chunk_rows);
                double* s = &sum[size_t(task * C)];
                double* ss = &sumsq[size_t(task * C)];
                for (int64_t r = r0; r < r1; ++r) {
                    const T* row = xp + (b * L + r) * C;
                    for (int64_t c = 0; c < C; ++c) {
                        const double v = load(row, c);
                        s[c] += v;
                        ss[c] += v * v;
                    }
                }
            }
        });
        const float* w = weight.data<float>();
        const float* bi = bias.data<float>();
        const double n = double(L * cg);
        for (int64_t b = 0; b < B; ++b)
            for (int64_t g = 0; g < G; ++g) {
                double s = 0, ss = 0;
                for (int64_t k = 0; k < chunks; ++k)
                    for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
                        s += sum[size_t((b * chunks + k) * C + c)];
                        ss += sumsq[size_t((b * chunks + k) * C + c)];
                    }
                const double mean = s / n, var = std::max(0.0, ss / n - mean * mean);
                const double rstd = 1.0 / std::sqrt(var + double(eps));
                for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
                    scale[size_t(b * C + c)] = float(rstd * w[c]);
                    shift[size_t(b * C + c)] = float(bi[c] - mean * rstd * w[c]);
                }
            }
        parallel_for(B * L, std::max<int64_t>(1, 16384 / C), [&](int64_t begin, int64_t end) {
            for (int64_t r = begin; r < end; ++r) {
                const float* a = &scale[size_t((r / L) * C)];
                const float* sh = &shift[size_t((r / L) * C)];
                const T* in = xp + r * C;
                T* out = yp + r * C;
                for (int64_t c = 0; c < C; ++c) {
                    float v = load(in, c) * a[c] + sh[c];
                    if (silu) {
                        v = round_as<T>(v);
                        v = v / (1.0f + std::exp(-v));
                    }
                    store(out, c, v);
                }
            }
        });
    });
    return y;
}

}  // namespace qdit::cpu
