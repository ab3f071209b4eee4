#include "backend/cpu/quantize.h"

#include <algorithm>
#include <vector>

#include "backend/cpu/int8_gemm.h"
#include "core/threads.h"

namespace qdit::cpu {

void quantize_weight_int8(const Tensor& w, Tensor* q, Tensor* scale) {
    QDIT_CHECK(w.dim() == 2 && is_float(w.dtype()),
               "weight quantization needs a float [N, K] tensor, got {} {}", dtype_name(w.dtype()),
               shape_str(w.shape()));
    const int64_t n = w.size(0), k = w.size(1);
    *q = Tensor::empty({n, k}, DType::I8);
    *scale = Tensor::empty({n}, DType::F32);
    int8_t* qd = q->data<int8_t>();
    float* sd = scale->data<float>();
    if (n == 0 || k == 0) {
        std::fill(sd, sd + n, 1.f);
        return;
    }
    // Same rule as the activations, so the vectorized row quantizer does the work;
    // other dtypes go through f32 (exact for F16, BF16 and F8).
    if (w.dtype() == DType::F32 || w.dtype() == DType::BF16) {
        quantize_rows_int8(w.raw(), w.dtype(), n, k, k, qd, sd);
        return;
    }
    const size_t es = dtype_size(w.dtype());
    const int64_t rows = std::max<int64_t>(1, (int64_t(1) << 16) / k);
    parallel_for(n, rows, [&](int64_t b, int64_t e) {
        std::vector<float> buf(size_t(rows * k));
        for (int64_t r = b; r < e; r += rows) {
            const int64_t cnt = std::min(rows, e - r);
            convert_to_f32(static_cast<const uint8_t*>(w.raw()) + size_t(r * k) * es, w.dtype(),
                           buf.data(), cnt * k);
            quantize_rows_int8(buf.data(), DType::F32, cnt, k, k, qd + r * k, sd + r);
        }
    });
}

}  // namespace qdit::cpu
