// Random tensors made on the GPU (benchmarks at the real size): a counter-based hash of (seed,
// index), so the values depend only on the seed and the element's index.
#pragma once
#include <cstdint>

#include <cuda_runtime.h>

namespace qdit::cuda {

// p[i] (bf16, device) ← N(mean, std) for i < n, by Box-Muller from two hashed uniforms. Asynchronous.
void fill_normal_bf16(void* p, int64_t n, uint64_t seed, float mean, float std, cudaStream_t stream);

}  // namespace qdit::cuda
