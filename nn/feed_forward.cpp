#include "nn/feed_forward.h"

#include "nn/activation.h"

namespace qdit::nn {

Tensor FeedForward::forward(const Tensor& x) const {
    return w2.forward(silu_mul(w1.forward(x), w3.forward(x)));
}

}  // namespace qdit::nn
