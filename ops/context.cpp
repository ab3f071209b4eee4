#include "ops/context.h"

#include <cstring>

#include "ops/dispatch.h"
#ifdef QDIT_WITH_CUDA
#include "backend/cuda/allocator.h"
#include "backend/cuda/pinned.h"
#include "backend/cuda/quantize.h"  // device_count
#include "parallel/communicator.h"
#endif

namespace qdit::ops {

using detail::no_cuda;

#ifdef QDIT_WITH_CUDA
namespace {
cuda::MemKind mem_kind(Memory kind) { return kind == Memory::Weight ? cuda::MemKind::Weight : cuda::MemKind::Activation; }
}  // namespace
#endif

#ifdef QDIT_WITH_CUDA
int Context::world() const { return comm ? comm->world() : 1; }
int Context::rank() const { return comm ? comm->rank() : 0; }
#else
int Context::world() const { return 1; }  // a communicator needs the CUDA backend
int Context::rank() const { return 0; }
#endif

int cuda_devices() {
#ifdef QDIT_WITH_CUDA
    return cuda::device_count();
#else
    return 0;
#endif
}

OwnedStream::OwnedStream(const Device& device) {
    if (device.type != DeviceType::CUDA) return;
#ifdef QDIT_WITH_CUDA
    const int n = cuda::device_count();
    if (n == 0) raise<Error>("no CUDA device is visible (check the driver and CUDA_VISIBLE_DEVICES)");
    if (device.index < 0 || device.index >= n)
        raise<UsageError>("CUDA device {} does not exist ({} visible: 0..{})", device.index, n, n - 1);
    cuda::check(cudaSetDevice(device.index), "selecting the CUDA device");
    cuda::require_code_for_device(device.index);
    cudaStream_t s = nullptr;
    cuda::check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "creating a stream");
    stream_ = s;
#else
    no_cuda("a CUDA stream");
#endif
}

OwnedStream::~OwnedStream() {
#ifdef QDIT_WITH_CUDA
    if (!stream_) return;
    cudaStreamSynchronize(static_cast<cudaStream_t>(stream_));
    cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
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

Tensor pinned_empty(Shape shape, DType dtype, const Context& ctx) {
    if (!ctx.cuda()) return Tensor::empty(std::move(shape), dtype);
#ifdef QDIT_WITH_CUDA
    return cuda::pinned_host_tensor(std::move(shape), dtype);
#else
    no_cuda("pinned_empty");
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

void synchronize(const Context& ctx) {
    if (!ctx.cuda()) return;
#ifdef QDIT_WITH_CUDA
    cuda::check(cudaStreamSynchronize(detail::stream(ctx)), "waiting for the stream");
#else
    no_cuda("synchronize");
#endif
}

Tensor empty(Shape shape, DType dtype, const Context& ctx, Memory kind) {
    if (!ctx.cuda()) return Tensor::empty(std::move(shape), dtype);
#ifdef QDIT_WITH_CUDA
    return cuda::DTensor::empty(std::move(shape), dtype, mem_kind(kind), ctx.stream).as_tensor();
#else
    (void)kind;
    no_cuda("empty");
#endif
}

size_t device_peak_bytes(const Context& ctx) {
    if (!ctx.cuda()) return 0;
#ifdef QDIT_WITH_CUDA
    return cuda::Allocator::instance().stats().peak;
#else
    no_cuda("device_peak_bytes");
#endif
}

DeviceMemory device_memory(const Context& ctx) {
    if (!ctx.cuda()) return {};
#ifdef QDIT_WITH_CUDA
    const cuda::MemStats st = cuda::Allocator::instance().stats();
    return {st.weight, st.peak_activation, st.peak};
#else
    no_cuda("device_memory");
#endif
}

Tensor zeros(Shape shape, DType dtype, const Context& ctx) {
    if (!ctx.cuda()) return Tensor::zeros(std::move(shape), dtype);
#ifdef QDIT_WITH_CUDA
    Tensor t = empty(std::move(shape), dtype, ctx);
    cuda::check(cudaMemsetAsync(t.raw(), 0, t.nbytes(), detail::stream(ctx)), "zeros");
    return t;
#else
    no_cuda("zeros");
#endif
}

void zero_rows(Tensor& t, int64_t row, int64_t n, const Context& ctx) {
    detail::check_device(t, ctx, "zero_rows", "t");
    if (t.dim() < 1 || row < 0 || n < 0 || row + n > t.size(0))
        raise<ShapeError>("zero_rows: rows {}..{} of a {} tensor", row, row + n, shape_str(t.shape()));
    if (n == 0) return;
    const size_t stride = t.nbytes() / size_t(std::max<int64_t>(t.size(0), 1));
    uint8_t* p = static_cast<uint8_t*>(t.raw()) + size_t(row) * stride;
    if (!ctx.cuda()) {
        std::memset(p, 0, size_t(n) * stride);
        return;
    }
#ifdef QDIT_WITH_CUDA
    cuda::check(cudaMemsetAsync(p, 0, size_t(n) * stride, detail::stream(ctx)), "zero_rows");
#else
    no_cuda("zero_rows");
#endif
}

void copy_rows(Tensor& dst, int64_t dst_row, const Tensor& src, int64_t src_row, int64_t n, const Context& ctx,
               int64_t src_step) {
    const bool host_dst = ctx.cuda() && dst.defined() && dst.device().type == DeviceType::CPU,
               host_src = ctx.cuda() && src.defined() && src.device().type == DeviceType::CPU;
    if (host_dst && host_src) raise<ShapeError>("copy_rows: on {}, dst and src are both on the host", ctx.device.str());
    if (!host_dst) detail::check_device(dst, ctx, "copy_rows", "dst");
    if (!host_src) detail::check_device(src, ctx, "copy_rows", "src");
    if (dst.dim() != 2 || src.dim() != 2 || dst.size(1) != src.size(1) || dst.dtype() != src.dtype() || n < 0 ||
        src_step < 1 || dst_row < 0 || src_row < 0 || dst_row + n > dst.size(0) ||
        (n > 0 && src_row + (n - 1) * src_step >= src.size(0)))
        raise<ShapeError>("copy_rows: {} rows every {} from {} {} at {} into {} {} at {}", n, src_step,
                          dtype_name(src.dtype()), shape_str(src.shape()), src_row, dtype_name(dst.dtype()),
                          shape_str(dst.shape()), dst_row);
    const size_t row = size_t(dst.size(1)) * dtype_size(dst.dtype()), pitch = size_t(src_step) * row;
    uint8_t* d = static_cast<uint8_t*>(dst.raw()) + size_t(dst_row) * row;
    const uint8_t* s = static_cast<const uint8_t*>(src.raw()) + size_t(src_row) * row;
    if (n == 0) return;
    if (!ctx.cuda()) {
        for (int64_t i = 0; i < n; ++i) std::memcpy(d + size_t(i) * row, s + size_t(i) * pitch, row);
        return;
    }
#ifdef QDIT_WITH_CUDA
    const cudaMemcpyKind kind = host_dst   ? cudaMemcpyDeviceToHost
                                : host_src ? cudaMemcpyHostToDevice
                                           : cudaMemcpyDeviceToDevice;
    cuda::check(cudaMemcpy2DAsync(d, row, s, pitch, row, size_t(n), kind, detail::stream(ctx)), "copy_rows");
#else
    no_cuda("copy_rows");
#endif
}

Activation empty_rows(const Activation& like, int64_t m, const Context& ctx) {
    auto part = [&](const Tensor& t) {
        if (!t.defined()) return Tensor();
        Shape shape = t.shape();
        shape[0] = m;
        return empty(std::move(shape), t.dtype(), ctx);
    };
    return {part(like.x), part(like.q), part(like.qs)};
}

void copy_rows(Activation& dst, int64_t dst_row, const Activation& src, int64_t src_row, int64_t n, const Context& ctx) {
    for (auto [d, s] : {std::pair{&dst.x, &src.x}, std::pair{&dst.q, &src.q}, std::pair{&dst.qs, &src.qs}}) {
        if (!s->defined()) continue;
        if (!d->defined()) raise<ShapeError>("copy_rows: the destination activation lacks a part the source has");
        // The per-token scales are one column.
        Tensor dv = d->dim() == 1 ? d->view({d->size(0), 1}) : *d;
        const Tensor sv = s->dim() == 1 ? s->view({s->size(0), 1}) : *s;
        copy_rows(dv, dst_row, sv, src_row, n, ctx);
    }
}

void gather_rows(Tensor& x, const Context& ctx) {
    detail::check_device(x, ctx, "gather_rows", "x");
    const int world = ctx.world();
    if (world == 1) return;
    if (x.dim() != 2 || x.size(0) % world)
        raise<ShapeError>("gather_rows: {} over {} ranks (need [world·n, c])", shape_str(x.shape()), world);
#ifdef QDIT_WITH_CUDA
    const int64_t count = x.numel() / world;
    const uint8_t* mine = static_cast<const uint8_t*>(x.raw()) + size_t(ctx.rank() * count) * dtype_size(x.dtype());
    ctx.comm->all_gather(mine, x.raw(), count, x.dtype(), detail::stream(ctx));
#endif
}

}  // namespace qdit::ops
