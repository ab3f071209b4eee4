// Page-locked host memory as a core Tensor.
#pragma once
#include "core/tensor.h"

namespace qdit::cuda {

// A host tensor in page-locked memory (cudaHostAlloc; contents uninitialised): copies between it
// and the device run asynchronously. Freed with cudaFreeHost when its last view is dropped.
Tensor pinned_host_tensor(Shape shape, DType dtype);

}  // namespace qdit::cuda
