#include "quant/int8.h"

#include <algorithm>
#include <cmath>
#include <vector>


namespace qdit {

void quantize_rows_int8_ref(const void* x, DType xt, int64_t m, int64_t k, int64_t ldx, int8_t* q,
                            float* scale) {
    QDIT_CHECK(xt == DType::F32 || xt == DType::BF16,
               "activation quantization takes F32 or BF16, not {}", dtype_name(xt));
    std::vector<float> row(static_cast<size_t>(k));
    for (int64_t i = 0; i < m; ++i) {
        convert_to_f32(static_cast<const uint8_t*>(x) + size_t(i * ldx) * dtype_size(xt), xt,
                       row.data(), k);
        float absmax = 0.f;
        for (float v : row) absmax = std::max(absmax, std::fabs(v));
        quantize_row_with_absmax(row.data(), k, absmax, q + i * k, scale + i);
    }
}

void quantize_row_with_absmax(const float* row, int64_t k, float absmax, int8_t* q, float* scale) {
    if (absmax == 0.f) {
        *scale = 1.f;
        std::fill(q, q + k, int8_t(0));
        return;
    }
    const float s = absmax / 127.f;
    *scale = s;
    for (int64_t j = 0; j < k; ++j) {
        // nearbyint rounds half to even in the default rounding mode.
        float r = std::nearbyint(row[j] / s);
        q[j] = int8_t(std::min(127.f, std::max(-127.f, r)));
    }
}

}  // namespace qdit
