#ifdef QDIT_WITH_CUDA  // a CUDA build: this file is empty without the CUDA backend
#include "nn/row_split_cuda.h"

#include <cuda_bf16.h>

#include "backend/cuda/device_tensor.h"
#include "backend/cuda/split_linear.h"

namespace qdit::nn::gpu {

using cuda::DTensor;

void run_row_split(const nn::gpu::Group& g, const nn::gpu::Input& in, int64_t m, void* y, int64_t ldy,
                   parallel::Communicator& comm, cudaStream_t s) {
    if (!in.x.defined() || in.x.dtype() != DType::BF16 || in.ldx < g.k)
        raise<ShapeError>("row-split Linear (rank {}): needs the bf16 input [{}, {}]", comm.rank(), m, g.k);
    if (m == 0) return;
    // The int8 parts share one quantized input: the whole token's absmax, then this rank's columns.
    DTensor q, qs;
    if (g.needs_int8()) {
        DTensor absmax = DTensor::empty({m}, DType::F32);
        cuda::row_absmax_bf16(in.x.raw(), in.ldx, m, g.k, absmax.data<float>(), s);
        comm.all_reduce(absmax.raw(), absmax.raw(), m, DType::F32, parallel::ReduceOp::Max, s);
        q = DTensor::empty({m, g.kp}, DType::I8);
        qs = DTensor::empty({m}, DType::F32);
        cuda::quantize_rows_with_absmax_bf16(in.x.raw(), in.ldx, m, g.k, absmax.data<float>(), q.data<int8_t>(), g.kp,
                                             qs.data<float>(), s);
    }
    for (const nn::gpu::Part& p : g.parts) {
        void* yp = static_cast<__nv_bfloat16*>(y) + p.col;
        if (p.weight_only)
            raise<UsageError>("row-split Linear (rank {}): weight-only int8 layers are not split by rows", comm.rank());
        if (p.int8) {
            DTensor acc = DTensor::empty({m, p.n}, DType::I32);
            cuda::int8_gemm_i32(q.data<int8_t>(), g.kp, p.q.data<int8_t>(), g.kp, acc.data<int32_t>(), p.n, m, p.n,
                                g.kp, s);
            comm.all_reduce(acc.raw(), acc.raw(), m * p.n, DType::I32, parallel::ReduceOp::Sum, s);
            cuda::dequantize_i32_bf16(acc.data<int32_t>(), p.n, m, p.n, qs.data<float>(), p.wscale.data<float>(),
                                      p.bias.defined() ? p.bias.data<float>() : nullptr, yp, ldy, s);
        } else {
            DTensor acc = DTensor::empty({m, p.n}, DType::F32);
            cuda::bf16_gemm_f32(in.x.raw(), in.ldx, p.w.raw(), g.k, acc.data<float>(), p.n, m, p.n, g.k, s);
            comm.all_reduce(acc.raw(), acc.raw(), m * p.n, DType::F32, parallel::ReduceOp::Sum, s);
            cuda::bias_f32_to_bf16(acc.data<float>(), p.n, m, p.n, p.bias.defined() ? p.bias.raw() : nullptr, yp, ldy,
                                   s);
        }
    }
}

}  // namespace qdit::nn::gpu

#endif  // QDIT_WITH_CUDA
