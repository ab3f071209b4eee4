// Weight quantization on the CPU (quant/int8.h's rule, on this CPU's fastest row quantizer).
#pragma once
#include "core/tensor.h"

namespace qdit::cpu {

// Per-output-channel quantization of a [N, K] weight of any float dtype.
// Returns q (I8 [N, K]) and scale (F32 [N]).
void quantize_weight_int8(const Tensor& w, Tensor* q, Tensor* scale);

}  // namespace qdit::cpu
