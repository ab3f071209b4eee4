#include "backend/cpu/int8_weight_only.h"

#include <vector>

#include "backend/cpu/elementwise.h"
#include "core/threads.h"

namespace qdit::cpu {

void int8_weight_only_gemm(const void* x, DType dt, int64_t m, int64_t k, const int8_t* q, const float* s,
                           const float* bias, void* y, int64_t n) {
    // The activations in f32 once (m is small: these layers read a conditioning vector per item).
    std::vector<float> xf(size_t(m * k));
    dispatch_float(dt, [&](auto tag) {
        using T = decltype(tag);
        for (int64_t i = 0; i < m * k; ++i) xf[size_t(i)] = load(static_cast<const T*>(x), i);
    });
    dispatch_float(dt, [&](auto tag) {
        using T = decltype(tag);
        T* yp = static_cast<T*>(y);
        // Each task streams a run of weight rows once for every activation row.
        parallel_for(n, 16, [&](int64_t b, int64_t e) {
            for (int64_t j = b; j < e; ++j) {
                const int8_t* qr = q + j * k;
                for (int64_t i = 0; i < m; ++i) {
                    const float* xr = xf.data() + i * k;
                    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // eight partial sums: vectorizable
                    int64_t c = 0;
                    for (; c + 8 <= k; c += 8)
                        for (int u = 0; u < 8; ++u) acc[u] += xr[c + u] * float(qr[c + u]);
                    for (; c < k; ++c) acc[0] += xr[c] * float(qr[c]);
                    const float sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
                    store(yp, i * n + j, sum * s[j] + (bias ? bias[j] : 0.f));
                }
            }
        });
    });
}

}  // namespace qdit::cpu
