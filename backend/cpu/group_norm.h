// GroupNorm (torch.nn.GroupNorm, affine) on channels-last activations
// [B, ..., C]: each batch item's channels are split into `groups` runs of
// C / groups, and every run is normalised over all its positions together.
#pragma once
#include <cstdint>
#include <string>

#include "core/tensor.h"

namespace qdit::cpu {

class GroupNorm {
public:
    GroupNorm() = default;
    // weight and bias [C] (any float dtype, kept as F32); C % groups == 0.
    GroupNorm(std::string name, const Tensor& weight, const Tensor& bias, int64_t groups,
              float eps);

    const std::string& name() const { return name_; }
    int64_t channels() const { return channels_; }

    // F32 or BF16 in and out. Mean and variance (biased) are taken in double,
    // y = (x − mean) · rsqrt(var + eps) · weight + bias is rounded once.
    Tensor forward(const Tensor& x) const;
    // silu(forward(x)); for BF16 the norm's output is rounded before the SiLU,
    // as torch's two ops do.
    Tensor forward_silu(const Tensor& x) const;

private:
    Tensor run(const Tensor& x, bool silu) const;

    std::string name_;
    Tensor weight_, bias_;  // F32 [C]
    int64_t channels_ = 0, groups_ = 1;
    float eps_ = 1e-5f;
};

}  // namespace qdit::cpu
