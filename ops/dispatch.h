// For the ops' own sources: the CUDA side of an op, present only in CUDA builds.
#pragma once
#include "core/error.h"
#include "ops/context.h"

#ifdef QDIT_WITH_CUDA
#include <cuda_runtime.h>

#include "backend/cuda/device_tensor.h"
#endif

namespace qdit::ops::detail {

// The op `op` was asked to run on a GPU by a build without the CUDA backend.
[[noreturn]] inline void no_cuda(const char* op) {
    raise<UsageError>("{}: this build of qdit has no CUDA backend (configure with nvcc present)", op);
}

// Every tensor an op takes must be on the context's device.
inline void check_device(const Tensor& t, const Context& ctx, const char* op, const char* what) {
    if (t.defined() && !(t.device() == ctx.device))
        raise<ShapeError>("{}: {} is on {}, the op runs on {}", op, what, t.device().str(), ctx.device.str());
}

// A GPU op's outputs as `out` asks for m rows: bf16 [m, out.k] and / or int8 [m, out.kp] + F32 [m].
inline Activation allocate(int64_t m, const ActivationSpec& out, const Context& ctx) {
    Activation a;
    if (out.dense) a.x = empty({m, out.k}, DType::BF16, ctx);
    if (out.int8) {
        a.q = empty({m, out.kp}, DType::I8, ctx);
        a.qs = empty({m}, DType::F32, ctx);
    }
    return a;
}

#ifdef QDIT_WITH_CUDA
inline cudaStream_t stream(const Context& ctx) { return static_cast<cudaStream_t>(ctx.stream); }
inline cuda::DTensor dev(const Tensor& t) { return cuda::DTensor::of(t); }
#endif

}  // namespace qdit::ops::detail
