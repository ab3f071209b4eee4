// Hopper int8 GEMM, 128x256x128 tile, cluster 2x1x1, cooperative consumer warpgroups, stream-K
// tile scheduler (compiled for sm_90a only).
#include "backend/cuda/int8_gemm_sm90.cuh"

namespace qdit::cuda::detail {

const char* run_int8_gemm_sm90_128x256_streamk(const Int8GemmArgs& p) {
    using G = Sm90Int8Gemm<cute::Shape<cute::_128, cute::_256, cute::_128>, cute::Shape<cute::_2, cute::_1, cute::_1>,
                           cutlass::gemm::KernelTmaWarpSpecializedCooperative,
                           cutlass::epilogue::TmaWarpSpecializedCooperative, cutlass::gemm::StreamKScheduler>;
    return G::run(p);
}

}  // namespace qdit::cuda::detail
