// Hopper (sm_90a) int8 GEMM: CUTLASS 3.x TMA warp-specialized mainloop (wgmma s8·s8 → s32) and an
// epilogue visitor tree that computes, per element,
//   y = bf16_rn( fma( float(acc) * s_x[m], s_w[n], bias[n] ) )
// i.e. the float order of the CPU kernel (backend/cpu/int8_gemm_internal.h: dequant()).
// Included only by the int8_gemm_sm90_*.cu files, which are compiled for sm_90a alone.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/epilogue/fusion/sm90_visitor_tma_warpspecialized.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/gemm/kernel/gemm_universal.hpp>
#include <cutlass/gemm/kernel/tile_scheduler.hpp>

#include "backend/cuda/device_tensor.h"
#include "backend/cuda/int8_gemm.h"

namespace qdit::cuda::detail {

// Scheduler: cutlass::gemm::PersistentScheduler (whole output tiles per CTA) or StreamKScheduler
// (CUTLASS's heuristic may split tiles' K ranges over CTAs so that the SMs share the work evenly;
// the partial int32 sums meet in a workspace, and integer sums do not depend on their order, so the
// result is the same bit for bit).
template <class TileShape, class ClusterShape, class KernelSchedule, class EpilogueSchedule,
          class Scheduler = cutlass::gemm::PersistentScheduler>
struct Sm90Int8Gemm {
    using ElementA = int8_t;
    using ElementB = int8_t;
    using ElementAcc = int32_t;
    using ElementD = cutlass::bfloat16_t;
    using LayoutA = cutlass::layout::RowMajor;     // a [M, K], K contiguous
    using LayoutB = cutlass::layout::ColumnMajor;  // B = wᵀ [K, N] column-major == w [N, K] row-major
    using LayoutD = cutlass::layout::RowMajor;
    static constexpr int kAlignAB = 16;  // elements: 16 bytes
    static constexpr int kAlignD = 8;

    // ---- epilogue visitor tree -----------------------------------------------------------------
    using Accum = cutlass::epilogue::fusion::Sm90AccFetch;
    using ScaleX = cutlass::epilogue::fusion::Sm90ColBroadcast<0, TileShape, float, float,
                                                               cute::Stride<cute::_1, cute::_0, cute::_0>>;
    using ScaleW = cutlass::epilogue::fusion::Sm90RowBroadcast<0, TileShape, float, float,
                                                               cute::Stride<cute::_0, cute::_1, cute::_0>>;
    using Bias = cutlass::epilogue::fusion::Sm90RowBroadcast<0, TileShape, float, float,
                                                             cute::Stride<cute::_0, cute::_1, cute::_0>>;
    // t = float(acc) * s_x   (the int32 → f32 conversion rounds to nearest, like float(acc) on the CPU)
    using Mul = cutlass::epilogue::fusion::Sm90Compute<cutlass::multiplies, float, float,
                                                       cutlass::FloatRoundStyle::round_to_nearest>;
    using EvtT = cutlass::epilogue::fusion::Sm90EVT<Mul, Accum, ScaleX>;
    // y = bf16(t * s_w + bias): a*b+c contracts to one FFMA (nvcc's default --fmad=true), as fmaf.
    using Fma = cutlass::epilogue::fusion::Sm90Compute<cutlass::multiply_add, ElementD, float,
                                                       cutlass::FloatRoundStyle::round_to_nearest>;
    using EvtY = cutlass::epilogue::fusion::Sm90EVT<Fma, EvtT, ScaleW, Bias>;

    using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
        cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
        cutlass::epilogue::collective::EpilogueTileAuto, ElementAcc, float,
        void, LayoutD, kAlignD,  // no C operand
        ElementD, LayoutD, kAlignD, EpilogueSchedule, EvtY>::CollectiveOp;

    using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
        cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, ElementA, LayoutA, kAlignAB, ElementB, LayoutB,
        kAlignAB, ElementAcc, TileShape, ClusterShape,
        cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
            sizeof(typename CollectiveEpilogue::SharedStorage))>,
        KernelSchedule>::CollectiveOp;

    using GemmKernel = cutlass::gemm::kernel::GemmUniversal<cute::Shape<int, int, int, int>, CollectiveMainloop,
                                                            CollectiveEpilogue, Scheduler>;
    using Gemm = cutlass::gemm::device::GemmUniversalAdapter<GemmKernel>;

    static const char* run(const Int8GemmArgs& p) {
        using StrideA = typename GemmKernel::StrideA;
        using StrideB = typename GemmKernel::StrideB;
        using StrideC = typename GemmKernel::StrideC;
        using StrideD = typename GemmKernel::StrideD;
        StrideA sa{};
        cute::get<0>(sa) = p.lda;
        StrideB sb{};
        cute::get<0>(sb) = p.ldw;
        StrideD sd{};
        cute::get<0>(sd) = p.ldy;
        StrideC sc = sd;

        typename Gemm::Arguments args{};
        args.mode = cutlass::gemm::GemmUniversalMode::kGemm;
        args.problem_shape = {p.m, p.n, p.k, 1};
        args.mainloop = {p.a, sa, p.w, sb};
        args.epilogue.ptr_C = nullptr;
        args.epilogue.dC = sc;
        args.epilogue.ptr_D = static_cast<ElementD*>(p.y);
        args.epilogue.dD = sd;
        auto& t = args.epilogue.thread;  // {EvtT args, ScaleW, Bias, Fma}
        t = {
            {{}, {p.a_scale, 0.f, {}}, {}},  // {Accum, ScaleX, Mul}
            {p.w_scale, 0.f, {}},
            {p.bias, 0.f, {}},  // null bias reads as 0
            {},
        };
        using Raster = typename GemmKernel::TileScheduler::RasterOrderOptions;
        if (p.tuning.swizzle > 0) args.scheduler.max_swizzle_size = p.tuning.swizzle;
        if (p.tuning.raster == 1) args.scheduler.raster_order = Raster::AlongM;
        if (p.tuning.raster == 2) args.scheduler.raster_order = Raster::AlongN;
        args.hw_info.device_id = p.device;
        args.hw_info.sm_count = p.sm_count;

        Gemm gemm;
        if (gemm.can_implement(args) != cutlass::Status::kSuccess) return "CUTLASS sm90 kernel cannot implement";
        // Stream-K's partial sums and flags: from the caching allocator, released after the launch
        // (reuse is ordered by the stream, allocator.h).
        const size_t ws_bytes = Gemm::get_workspace_size(args);
        DTensor ws;
        if (ws_bytes > 0) ws = DTensor::empty({int64_t(ws_bytes)}, DType::U8);
        cutlass::Status st = gemm.initialize(args, ws.defined() ? ws.raw() : nullptr, p.stream);
        if (st != cutlass::Status::kSuccess) return "CUTLASS sm90 initialize failed";
        st = gemm.run(p.stream);
        if (st != cutlass::Status::kSuccess) return "CUTLASS sm90 launch failed";
        return nullptr;
    }
};

}  // namespace qdit::cuda::detail
