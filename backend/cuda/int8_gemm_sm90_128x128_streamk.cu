// Hopper int8 GEMM, 128x128x128 tile, cluster 1x2x1, cooperative consumers, stream-K scheduler
// (compiled for sm_90a only): for shapes whose tile count leaves the last wave mostly idle.
#include "backend/cuda/int8_gemm_sm90.cuh"

namespace qdit::cuda::detail {

const char* run_int8_gemm_sm90_128x128_streamk(const Int8GemmArgs& p) {
    using G = Sm90Int8Gemm<cute::Shape<cute::_128, cute::_128, cute::_128>, cute::Shape<cute::_1, cute::_2, cute::_1>,
                           cutlass::gemm::KernelTmaWarpSpecializedCooperative,
                           cutlass::epilogue::TmaWarpSpecializedCooperative, cutlass::gemm::StreamKScheduler>;
    return G::run(p);
}

}  // namespace qdit::cuda::detail
