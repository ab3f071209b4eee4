// 2-D convolution (stride 1, symmetric zero padding, one group) on
// channels-last activations [B, H, W, C], through oneDNN. F32 or BF16 in and
// out; oneDNN accumulates in f32 and rounds once when it stores.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "core/tensor.h"

namespace qdit::cpu {

class Conv2d {
public:
    Conv2d() = default;
    // weight [O, I, kh, kw] as torch stores it (any float dtype); bias [O] (any
    // float dtype, kept as F32) or undefined.
    Conv2d(std::string name, const Tensor& weight, const Tensor& bias, int64_t padding);

    const std::string& name() const { return name_; }
    int64_t in_channels() const { return in_; }
    int64_t out_channels() const { return out_; }

    // x [B, H, W, I] → [B, H + 2p − kh + 1, W + 2p − kw + 1, O], x's dtype.
    Tensor forward(const Tensor& x) const;
    // acc ← acc + conv(x) with oneDNN's sum post-op, which saves a separate
    // residual pass; acc has the output's shape and x's dtype.
    void forward_add(const Tensor& x, Tensor& acc) const;

    struct Impl;

private:
    Shape output_shape(const Tensor& x) const;  // validates x
    void run(const Tensor& x, Tensor& y, bool accumulate) const;

    std::string name_;
    int64_t in_ = 0, out_ = 0, kh_ = 0, kw_ = 0, pad_ = 0;
    std::shared_ptr<Impl> impl_;
};

}  // namespace qdit::cpu
