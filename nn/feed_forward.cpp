#include "nn/feed_forward.h"

#include "backend/cpu/activation.h"

namespace qdit::nn {

Tensor FeedForward::forward(const Tensor& x) const {
    return w2.forward(cpu::silu_mul(w1.forward(x), w3.forward(x)));
}

}  // namespace qdit::nn
