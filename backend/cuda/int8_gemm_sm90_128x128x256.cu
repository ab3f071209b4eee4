// Hopper int8 GEMM, 128x128x256 tile, cluster 2x1x1, ping-pong consumer warpgroups (compiled for sm_90a only).
#include "backend/cuda/int8_gemm_sm90.cuh"

namespace qdit::cuda::detail {

const char* run_int8_gemm_sm90_128x128x256(const Int8GemmArgs& p) {
    using G = Sm90Int8Gemm<cute::Shape<cute::_128, cute::_128, cute::_256>, cute::Shape<cute::_2, cute::_1, cute::_1>,
                           cutlass::gemm::KernelTmaWarpSpecializedPingpong, cutlass::epilogue::TmaWarpSpecialized>;
    return G::run(p);
}

}  // namespace qdit::cuda::detail
