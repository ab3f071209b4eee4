// SwiGLU feed-forward: w2( silu(w1 x) · w3 x ), module names as in the checkpoint
// (<prefix>.w1 / .w2 / .w3).
#pragma once
#include "nn/linear.h"

namespace qdit::nn {

struct FeedForward {
    Linear w1, w2, w3;

    // x [..., dim] F32 or BF16 → [..., dim] of the same dtype.
    Tensor forward(const Tensor& x) const;
};

}  // namespace qdit::nn
