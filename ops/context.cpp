#include "ops/context.h"

#include "ops/dispatch.h"
#ifdef QDIT_WITH_CUDA
#include "backend/cuda/quantize.h"  // device_count
#endif

namespace qdit::ops {

using detail::no_cuda;

#ifdef QDIT_WITH_CUDA
namespace {
cuda::MemKind mem_kind(Memory kind) { return kind == Memory::Weight ? cuda::MemKind::Weight : cuda::MemKind::Activation; }
}  // namespace
#endif

int cuda_devices() {
#ifdef QDIT_WITH_CUDA
    return cuda::device_count();
#else
    return 0;
#endif
}

Tensor to_device(const Tensor& host, const Context& ctx, Memory kind) {
    QDIT_CHECK(host.device().type == DeviceType::CPU, "to_device takes a host tensor, not one on {}",
               host.device().str());
    if (!ctx.cuda()) return host;
#ifdef QDIT_WITH_CUDA
    return cuda::DTensor::upload(host, mem_kind(kind), detail::stream(ctx)).as_tensor();
#else
    (void)kind;
    no_cuda("to_device");
#endif
}

Tensor to_host(const Tensor& t, const Context& ctx) {
    if (t.device().type == DeviceType::CPU) return t;
#ifdef QDIT_WITH_CUDA
    return cuda::DTensor::of(t).download(detail::stream(ctx));
#else
    (void)ctx;
    no_cuda("to_host");
#endif
}

Tensor empty(Shape shape, DType dtype, const Context& ctx, Memory kind) {
    if (!ctx.cuda()) return Tensor::empty(std::move(shape), dtype);
#ifdef QDIT_WITH_CUDA
    return cuda::DTensor::empty(std::move(shape), dtype, mem_kind(kind)).as_tensor();
#else
    (void)kind;
    no_cuda("empty");
#endif
}

}  // namespace qdit::ops
