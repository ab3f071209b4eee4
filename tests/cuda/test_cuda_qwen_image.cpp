// The Qwen-Image transformer's CUDA graph on a GPU, on the committed fixtures. Its outputs against
// diffusers' on every device: tests/models/qwen_image_transformer.cpp.
#include <gtest/gtest.h>

#include <cstring>

#include <cuda_runtime.h>

#include "tests/qwen_image_fixture.h"

using namespace qdit;
using namespace qdit::testutil;

// The blocks as a CUDA graph (captured on the first call of a shape and mask, replayed after):
// the same kernels in the same order, so the same bits as without the graph, for the int8 plan and
// for a batch with text masks; a second mask pattern gets its own graph.
TEST(CudaQwenImage, CudaGraphReplayIsBitExact) {
    if (ops::cuda_devices() == 0) GTEST_SKIP() << "no CUDA device";
    cudaStream_t s;
    ASSERT_EQ(cudaStreamCreate(&s), cudaSuccess);
    const ops::Context ctx{{DeviceType::CUDA, 0}, s};
    for (const char* name : {"h3_b1", "h2_b2_mask"}) {
        SCOPED_TRACE(name);
        const QwenImageInputs in = qwen_image_inputs(name);
        const PreparedModel m = prepare_model(qwen_image_transformer(name), QuantConfig{QuantMethod::Int8, {}, "dynamic"});
        qwen_image::QwenImageTransformer model(m, DType::BF16, ctx);
        auto run = [&](const Tensor& mask) {
            return model.forward(in.hidden_states, in.encoder_hidden_states, mask, in.timestep, in.grid);
        };
        const Tensor eager = run(in.mask);
        model.set_cuda_graph(true);
        const Tensor captured = run(in.mask), replayed = run(in.mask);
        EXPECT_EQ(std::memcmp(eager.raw(), captured.raw(), eager.nbytes()), 0) << "captured run";
        EXPECT_EQ(std::memcmp(eager.raw(), replayed.raw(), eager.nbytes()), 0) << "replayed run";
        if (in.mask.defined()) {
            // Another pattern: item 0 loses its last real token.
            Tensor m2 = in.mask.to(DType::F32);
            const int64_t T = m2.size(1);
            for (int64_t k = T - 1; k >= 0; --k)
                if (m2.data<float>()[k] != 0.f) {
                    m2.data<float>()[k] = 0.f;
                    break;
                }
            const Tensor graph2 = run(m2);
            model.set_cuda_graph(false);
            const Tensor eager2 = run(m2);
            EXPECT_EQ(std::memcmp(eager2.raw(), graph2.raw(), eager2.nbytes()), 0) << "second mask";
            EXPECT_NE(std::memcmp(eager2.raw(), eager.raw(), eager.nbytes()), 0) << "the mask changes nothing";
        }
    }
    cudaStreamDestroy(s);
}
