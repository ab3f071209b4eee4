// Where a layer's quantization plan is executed: the one place that decides, per Linear layer,
// between a pre-quantized weight taken as stored, a high-precision weight quantized now, and a
// weight kept in high precision. The CPU's Linear (and the GPU's split models) start from
// host_weights; on one GPU, nn::WeightLoader runs the same decisions on the device instead
// (nn/load_cuda.h), giving the same bytes.
#pragma once
#include <cstddef>

#include "core/tensor.h"
#include "io/safetensors.h"
#include "nn/linear.h"
#include "quant/plan.h"

namespace qdit::nn {

// One Linear layer's weights on the host, as its plan says: `weight` I8 [out, in] with `scale`
// F32 [out] (stored or quantized here by quant/int8.h's rule), or `weight` in `dense` dtype
// without scale; `bias` F32 for int8 layers, `dense` otherwise, undefined without bias.
struct HostWeights {
    Tensor weight, scale, bias;
};
HostWeights host_weights(const Checkpoint& ck, const LayerPlan& layer, DType dense);

// quant/int8.h's weight rule for a float [N, K] tensor: q I8 [N, K], scale F32 [N].
void quantize_weight_int8(const Tensor& w, Tensor* q, Tensor* scale);

// Where a GPU model load spent its time (nn/load_cuda.h), summed over the loads of this process:
// reading the files into the staging buffers, waiting for a staging buffer to come free (the
// copies to the GPU), GPU time converting / quantizing, and the load's wall time.
struct LoadStats {
    double read_s = 0, wait_s = 0, convert_s = 0, wall_s = 0;
    size_t bytes = 0;          // read from the files
    size_t staging_bytes = 0;  // the most pinned host memory one load used
};
LoadStats load_stats();
void add_load_stats(const LoadStats& s);
// Threads reading the files in a GPU load: QDIT_LOAD_THREADS (1 to 64) when set, else 4.
// UsageError naming the variable for another value.
int load_threads();

// The CPU Linear of `layer`, activations (and dense weights) in `compute` (F32 or BF16).
Linear load_linear(const Checkpoint& ck, const LayerPlan& layer, DType compute);

}  // namespace qdit::nn
