// The row-split Linear of a tensor-parallel rank on CUDA (parallel/tensor_parallel.h's rule, with
// the collectives of parallel/communicator.h): the rank holds input columns [c0, c0 + k) of every
// weight row (nn::gpu::Member with shard set) and receives the matching columns of the input; the
// ranks' partial products are summed before the one epilogue, so every rank gets the whole layer's
// output, equal to the one-device output:
//   int8 parts: bit for bit (whole-token absmax by all-reduce MAX, exact int32 sums by all-reduce
//               SUM, then the int8 GEMM epilogue's arithmetic);
//   bf16 parts: f32 partial sums all-reduced (SUM) and rounded once with the bias added; only the
//               f32 summation order differs from one device.
#pragma once
#include <cstdint>

#include <cuda_runtime.h>

#include "nn/linear_cuda.h"
#include "parallel/communicator.h"

namespace qdit::nn::gpu {

// y[:, part] (bf16, row stride ldy) for every part of g, from in.x (bf16 [m, g.k], row stride
// in.ldx: this rank's input columns). Collective: every rank of comm calls it with the same m and
// group shape. Scratch buffers come from the device allocator.
void run_row_split(const nn::gpu::Group& g, const nn::gpu::Input& in, int64_t m, void* y, int64_t ldy,
                   parallel::Communicator& comm, cudaStream_t stream);

}  // namespace qdit::nn::gpu
