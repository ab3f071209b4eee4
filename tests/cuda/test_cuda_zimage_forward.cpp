// The Z-Image transformer's CUDA graph (set_cuda_graph, ops/graph.h) on the fixtures. The fixture
// checks on every device are in tests/models/zimage_transformer.cpp.
#include <gtest/gtest.h>

#include <cstring>

#include "backend/cuda/quantize.h"
#include "tests/zimage_fixture.h"

using namespace qdit;
using namespace qdit::testutil;

// The captured call and a replay give the eager forward's output bit for bit, also for a batch whose
// items alternate two sequence shapes (h5_b2: captions of 7 and 40 tokens), which keeps one graph per
// shape; and eager again after it is turned off.
TEST(CudaZImageForward, CudaGraphMatchesEagerBitForBit) {
    if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
    cudaStream_t s;
    ASSERT_EQ(cudaStreamCreate(&s), cudaSuccess);
    for (const char* name : {"h3_b1", "h5_b2"}) {
        SCOPED_TRACE(name);
        const ZImageInputs f = zimage_inputs(name);
        zimage::ZImageTransformer model(prepare_model(zimage_transformer(name), QuantConfig{QuantMethod::Int8, {}, "dynamic"}),
                                        DType::BF16, ops::Context{{DeviceType::CUDA, 0}, s});
        const std::vector<Tensor> eager = model.forward(f.x, f.t, f.cap);
        model.set_cuda_graph(true);
        const std::vector<Tensor> captured = model.forward(f.x, f.t, f.cap);
        const std::vector<Tensor> replayed = model.forward(f.x, f.t, f.cap);
        model.set_cuda_graph(false);
        const std::vector<Tensor> again = model.forward(f.x, f.t, f.cap);
        for (size_t i = 0; i < eager.size(); ++i)
            for (const std::vector<Tensor>* o : {&captured, &replayed, &again}) {
                ASSERT_EQ(eager[i].nbytes(), (*o)[i].nbytes());
                EXPECT_EQ(std::memcmp(eager[i].raw(), (*o)[i].raw(), eager[i].nbytes()), 0) << "item " << i;
            }
    }
    cudaStreamDestroy(s);
}
