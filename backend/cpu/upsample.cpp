#include "backend/cpu/upsample.h"

#include <cstring>

#include "core/threads.h"

namespace qdit::cpu {

Tensor upsample_nearest_2x(const Tensor& x) {
    if (!x.defined() || x.device().type != DeviceType::CPU || x.dim() != 4)
        raise<ShapeError>("upsample_nearest_2x: expects a CPU tensor [B, H, W, C], got {}",
                          x.defined() ? shape_str(x.shape()) : "none");
    const int64_t B = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
    Tensor y = Tensor::empty({B, 2 * H, 2 * W, C}, x.dtype());
    const size_t px = size_t(C) * dtype_size(x.dtype());  // bytes per position
    const uint8_t* src = static_cast<const uint8_t*>(x.raw());
    uint8_t* dst = static_cast<uint8_t*>(y.raw());
    parallel_for(B * 2 * H, 1, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
            const uint8_t* in = src + size_t((r / (2 * H)) * H + (r % (2 * H)) / 2) * W * px;
            uint8_t* out = dst + size_t(r) * 2 * W * px;
            for (int64_t j = 0; j < W; ++j) {
                std::memcpy(out + size_t(2 * j) * px, in + size_t(j) * px, px);
                std::memcpy(out + size_t(2 * j + 1) * px, in + size_t(j) * px, px);
            }
        }
    });
    return y;
}

}  // namespace qdit::cpu
