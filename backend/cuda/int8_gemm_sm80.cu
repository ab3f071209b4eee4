// Ampere / Ada int8 GEMM (CUTLASS 2.x, mma.sync s8·s8 → s32, cp.async multistage) with the same fused
// epilogue as the Hopper kernels: y = bf16_rn(fma(float(acc) * s_x[m], s_w[n], bias[n])).
// Compiled for QDIT_INT8_SM80_ARCHS (default: the 8.x entries of CMAKE_CUDA_ARCHITECTURES, 80-real and
// 89-real); with 80-virtual (PTX) it also runs on later GPUs, which is how it is tested on a Hopper.
// clang-format off (CUTLASS 2.x visitor headers need this include order)
#include <cutlass/cutlass.h>
#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>
#include <cutlass/numeric_conversion.h>
#include <cutlass/gemm/gemm.h>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/gemm/threadblock/threadblock_swizzle.h>
#include <cutlass/epilogue/threadblock/fusion/visitors.hpp>
#include <cutlass/gemm/kernel/default_gemm_universal_with_visitor.h>
// clang-format on

#include "backend/cuda/int8_gemm.h"

namespace qdit::cuda::detail {

namespace {

template <class TileShape, class WarpShape, int Stages>
struct Sm80Int8Gemm {
    using ElementAB = int8_t;
    using ElementD = cutlass::bfloat16_t;
    using InstructionShape = cutlass::gemm::GemmShape<16, 8, 32>;
    using ThreadMap = cutlass::epilogue::threadblock::OutputTileThreadLayout<TileShape, WarpShape, float, 4, 1>;

    using Accum = cutlass::epilogue::threadblock::VisitorAccFetch;
    using ScaleX = cutlass::epilogue::threadblock::VisitorColBroadcast<ThreadMap, float,
                                                                       cute::Stride<cute::_1, cute::_0, cute::_0>>;
    using ScaleW = cutlass::epilogue::threadblock::VisitorRowBroadcast<ThreadMap, float,
                                                                       cute::Stride<cute::_0, cute::_1, cute::_0>>;
    using Bias = ScaleW;
    using Mul = cutlass::epilogue::threadblock::VisitorCompute<cutlass::multiplies, float, float,
                                                               cutlass::FloatRoundStyle::round_to_nearest>;
    using EvtT = cutlass::epilogue::threadblock::Sm80EVT<Mul, Accum, ScaleX>;
    using Fma = cutlass::epilogue::threadblock::VisitorCompute<cutlass::multiply_add, float, float,
                                                               cutlass::FloatRoundStyle::round_to_nearest>;
    using EvtY = cutlass::epilogue::threadblock::Sm80EVT<Fma, EvtT, ScaleW, Bias>;
    using StoreD = cutlass::epilogue::threadblock::VisitorAuxStore<ThreadMap, ElementD,
                                                                   cutlass::FloatRoundStyle::round_to_nearest,
                                                                   cute::Stride<int64_t, cute::_1, cute::_0>>;
    using EvtD = cutlass::epilogue::threadblock::Sm80EVT<StoreD, EvtY>;

    using Kernel = typename cutlass::gemm::kernel::DefaultGemmWithVisitor<
        ElementAB, cutlass::layout::RowMajor, cutlass::ComplexTransform::kNone, 16,    // A [M, K]
        ElementAB, cutlass::layout::ColumnMajor, cutlass::ComplexTransform::kNone, 16, // B = wᵀ
        float, cutlass::layout::RowMajor, 4, int32_t, float, cutlass::arch::OpClassTensorOp, cutlass::arch::Sm80,
        TileShape, WarpShape, InstructionShape, EvtD, cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<8>,
        Stages, cutlass::arch::OpMultiplyAddSaturate, 1>::GemmKernel;
    using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

    static const char* run(const Int8GemmArgs& p) {
        typename EvtD::Arguments epi{
            {
                {{}, {p.a_scale, 0.f, {}}, {}},  // t = float(acc) * s_x
                {p.w_scale, 0.f, {}},
                {p.bias, 0.f, {}},
                {},
            },
            {static_cast<ElementD*>(p.y), {p.ldy, {}, {}}},
        };
        typename Gemm::Arguments args{cutlass::gemm::GemmUniversalMode::kGemm,
                                      cutlass::gemm::GemmCoord{p.m, p.n, p.k},
                                      1,
                                      epi,
                                      p.a,
                                      p.w,
                                      nullptr,
                                      nullptr,
                                      0,
                                      0,
                                      0,
                                      0,
                                      p.lda,
                                      p.ldw,
                                      p.ldy,
                                      p.ldy};
        Gemm gemm;
        if (gemm.can_implement(args) != cutlass::Status::kSuccess) return "CUTLASS sm80 kernel cannot implement";
        if (Gemm::get_workspace_size(args) != 0) return "CUTLASS sm80 kernel unexpectedly needs a workspace";
        if (gemm.initialize(args, nullptr, p.stream) != cutlass::Status::kSuccess)
            return "CUTLASS sm80 initialize failed";
        if (gemm.run(p.stream) != cutlass::Status::kSuccess) return "CUTLASS sm80 launch failed";
        return nullptr;
    }
};

}  // namespace

const char* run_int8_gemm_sm80_128x128(const Int8GemmArgs& p) {
    using G = Sm80Int8Gemm<cutlass::gemm::GemmShape<128, 128, 64>, cutlass::gemm::GemmShape<64, 64, 64>, 5>;
    return G::run(p);
}

}  // namespace qdit::cuda::detail
