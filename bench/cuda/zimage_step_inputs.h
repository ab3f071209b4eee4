// The inputs of one full-size Z-Image DiT step in the CUDA benchmarks: 1024x1024 (a 64x64 grid of
// 2x2 patches) and `cap` caption tokens (512 unless asked), deterministic pseudo-random bf16 values
// in [-1, 1) on the host (the first rows of the 512-token caption for fewer).
#pragma once
#include <cstdint>

#include "core/dtype.h"
#include "core/tensor.h"
#include "models/zimage/transformer.h"

namespace qdit::bench {

struct ZImageStepInputs {
    Tensor patches;  // bf16 [4096, 2·2·in_channels]
    Tensor caption;  // bf16 [cap, cap_feat_dim]
};

inline ZImageStepInputs zimage_step_inputs(const zimage::Config& cfg, int64_t cap = 512) {
    const int64_t tokens = 64 * 64, pdim = 2 * 2 * cfg.in_channels;
    ZImageStepInputs in{Tensor::empty({tokens, pdim}, DType::BF16), Tensor::empty({cap, cfg.cap_feat_dim}, DType::BF16)};
    uint32_t st = 1;
    auto rnd = [&] {
        st = st * 1664525u + 1013904223u;
        return f32_to_bf16(float(int32_t(st >> 8) - (1 << 23)) / float(1 << 23));
    };
    for (Tensor* t : {&in.patches, &in.caption})
        for (int64_t i = 0; i < t->numel(); ++i) t->data<uint16_t>()[i] = rnd();
    return in;
}

}  // namespace qdit::bench
