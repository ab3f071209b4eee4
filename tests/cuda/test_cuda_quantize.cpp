// Runs only where a CUDA device is present; elsewhere the tests are skipped.
#include <gtest/gtest.h>

#include <random>

#include "backend/cuda/quantize.h"
#include "quant/int8.h"

using namespace qdit;

TEST(CudaQuantize, PerTokenMatchesTheCpuReferenceBitForBit) {
    if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
    const int64_t m = 37, k = 3840 + 5;
    std::mt19937 rng(3);
    std::normal_distribution<float> dist;
    Tensor x = Tensor::empty({m, k}, DType::F32);
    for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = dist(rng);
    for (int64_t j = 0; j < k; ++j) x.data<float>()[5 * k + j] = 0.f;  // an all-zero row
    x.data<float>()[7 * k + 11] = 300.f;                                 // an outlier token
    Tensor xb = x.to(DType::BF16);

    std::vector<int8_t> q_ref(size_t(m * k)), q(size_t(m * k));
    std::vector<float> s_ref(static_cast<size_t>(m)), s(static_cast<size_t>(m));
    quantize_rows_int8_ref(xb.raw(), DType::BF16, m, k, k, q_ref.data(), s_ref.data());

    void* dx = nullptr;
    int8_t* dq = nullptr;
    float* ds = nullptr;
    ASSERT_EQ(cudaMalloc(&dx, xb.nbytes()), cudaSuccess);
    ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&dq), q.size()), cudaSuccess);
    ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&ds), s.size() * 4), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(dx, xb.raw(), xb.nbytes(), cudaMemcpyHostToDevice), cudaSuccess);
    ASSERT_EQ(cuda::quantize_rows_int8_bf16(dx, m, k, k, dq, ds, nullptr), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(q.data(), dq, q.size(), cudaMemcpyDeviceToHost), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(s.data(), ds, s.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
    cudaFree(dx);
    cudaFree(dq);
    cudaFree(ds);
    EXPECT_EQ(q, q_ref);
    EXPECT_EQ(s, s_ref);
}
