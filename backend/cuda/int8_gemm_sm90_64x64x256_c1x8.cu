// Hopper int8 GEMM, 64x64x256 tile, cluster 1x8x1, one consumer warpgroup (compiled for sm_90a only).
// For few rows (int8_gemm.cpp, pick_sm90): the weights dominate, and a 64-row tile wastes less
// of the MMA and gives N / 64 CTAs.
#include "backend/cuda/int8_gemm_sm90.cuh"

namespace qdit::cuda::detail {

const char* run_int8_gemm_sm90_64x64x256_c1x8(const Int8GemmArgs& p) {
    using G = Sm90Int8Gemm<cute::Shape<cute::_64, cute::_64, cute::_256>, cute::Shape<cute::_1, cute::_8, cute::_1>,
                           cutlass::gemm::KernelTmaWarpSpecialized, cutlass::epilogue::TmaWarpSpecialized>;
    return G::run(p);
}

}  // namespace qdit::cuda::detail
