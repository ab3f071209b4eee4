// The Qwen-Image transformer's CUDA graph on a GPU, on the committed fixtures (its outputs against
// diffusers' on every device: tests/models/qwen_image_transformer.cpp), and the pipeline's denoising
// loop on the GPU against the host loop.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include <cuda_runtime.h>

#include "backend/cuda/allocator.h"
#include "tests/env_var.h"
#include "tests/qwen_image_fixture.h"
#include "tests/qwen_image_pipeline_reference.h"

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

// The text stream runs beside the image stream (ops::Fork, two streams; two branches of the CUDA
// graph): the same kernels on the same inputs, so the bits of the run on one stream (QDIT_FORK=0),
// for bf16 and int8, with and without a mask, eager and as a graph.
TEST(CudaQwenImage, TextStreamBesideTheImageStreamKeepsTheBits) {
    if (ops::cuda_devices() == 0) GTEST_SKIP() << "no CUDA device";
    const ops::OwnedStream stream(Device{DeviceType::CUDA, 0});
    const ops::Context ctx{{DeviceType::CUDA, 0}, stream.get()};
    for (const char* name : {"h3_b1", "h2_b2_mask"})
        for (bool int8 : {false, true}) {
            SCOPED_TRACE(std::string(name) + (int8 ? " int8" : " bf16"));
            const QwenImageInputs in = qwen_image_inputs(name);
            const QuantConfig q = int8 ? QuantConfig{QuantMethod::Int8, {}, "dynamic"} : QuantConfig{};
            qwen_image::QwenImageTransformer model(prepare_model(qwen_image_transformer(name), q), DType::BF16, ctx);
            auto run = [&](bool graph) {
                model.set_cuda_graph(graph);
                return model.forward(in.hidden_states, in.encoder_hidden_states, in.mask, in.timestep, in.grid);
            };
            Tensor one, one_graph, two, two_graph, replayed;
            {
                const EnvVar fork_off("QDIT_FORK", "0");
                one = run(false);
                one_graph = run(true);
            }
            {
                const EnvVar fork_on("QDIT_FORK", nullptr);
                two = run(false);
                two_graph = run(true);
                replayed = run(true);
            }
            EXPECT_EQ(std::memcmp(one.raw(), one_graph.raw(), one.nbytes()), 0) << "one stream, graph";
            EXPECT_EQ(std::memcmp(one.raw(), two.raw(), one.nbytes()), 0) << "two streams";
            EXPECT_EQ(std::memcmp(one.raw(), two_graph.raw(), one.nbytes()), 0) << "two streams, graph";
            EXPECT_EQ(std::memcmp(one.raw(), replayed.raw(), one.nbytes()), 0) << "two streams, graph replayed";
        }
}

// The GPU pipeline keeps the latents on the GPU and runs true CFG and the scheduler's step there
// (ops::true_cfg_euler_step); it must give the latents of the loop that brought the velocity to the
// host every step and stepped there (qwen_image_host_loop_latents, with a transformer on the GPU as
// the pipeline's: bf16 or int8, blocks as CUDA graphs), bit for bit, with and without true CFG.
TEST(CudaQwenImage, PipelineDeviceLoopKeepsTheHostLoopsBits) {
    if (ops::cuda_devices() == 0) GTEST_SKIP() << "no CUDA device";
    const std::string dir = std::string(QDIT_TEST_DATA) + "/qwen_image_pipeline";
    SafetensorsFile ref(dir + "/reference.safetensors");
    const nlohmann::json meta = read_json_file(dir + "/reference.json");
    const ops::OwnedStream stream(Device{DeviceType::CUDA, 0});
    for (bool int8 : {false, true}) {
        const QuantConfig q = int8 ? QuantConfig{QuantMethod::Int8, {}, "dynamic"} : QuantConfig{};
        PipelineOptions opt;
        opt.dtype = DType::BF16;
        opt.device = Device{DeviceType::CUDA, 0};
        opt.transformer_quant = q;
        QwenImagePipeline pipe(dir, opt);
        qwen_image::QwenImageTransformer model(prepare_model(dir + "/transformer", q), DType::BF16,
                                               ops::Context{{DeviceType::CUDA, 0}, stream.get()});
        model.set_cuda_graph(true);
        for (const auto& c : meta["cases"]) {
            SCOPED_TRACE(c["name"].get<std::string>() + (int8 ? " int8" : " bf16"));
            const QwenImageGenerateOptions o = qwen_image_reference_case(meta, c, ref);
            const Tensor got = pipe.generate(o).latents, want = qwen_image_host_loop_latents(pipe, dir, o, model);
            ASSERT_EQ(got.shape(), want.shape());
            int64_t differ = 0;
            for (int64_t i = 0; i < got.numel(); ++i)
                differ += std::memcmp(got.data<float>() + i, want.data<float>() + i, sizeof(float)) != 0;
            EXPECT_EQ(differ, 0) << "of " << got.numel() << " latent values";
        }
    }
}

// qwen_image::Placement::modulation_on_host: img_mod / txt_mod leave the device as they are loaded
// (the allocator's weights drop by at least their bytes) and are uploaded when read; the outputs keep
// the bits of the resident model's, for timesteps set_timesteps kept (eager and as a graph) and for
// others (computed before the blocks), with and without a mask.
TEST(CudaQwenImage, ModulationOnTheHostKeepsTheBits) {
    if (ops::cuda_devices() == 0) GTEST_SKIP() << "no CUDA device";
    const ops::OwnedStream stream(Device{DeviceType::CUDA, 0});
    const ops::Context ctx{{DeviceType::CUDA, 0}, stream.get()};
    for (const char* name : {"h3_b1", "h2_b2_mask"}) {
        SCOPED_TRACE(name);
        const QwenImageInputs in = qwen_image_inputs(name);
        const PreparedModel m = prepare_model(qwen_image_transformer(name), QuantConfig{QuantMethod::Int8, {}, "dynamic"});
        auto weights_in_use = [] { return cuda::Allocator::instance().stats().weight; };
        const size_t w0 = weights_in_use();
        qwen_image::QwenImageTransformer resident(m, DType::BF16, ctx);
        const size_t w1 = weights_in_use();
        qwen_image::QwenImageTransformer hosted(m, DType::BF16, ctx, qwen_image::Placement{true});
        const size_t w2 = weights_in_use();
        // Each modulation Linear: int8 [6·dim, dim rounded up to 16], f32 scales and biases [6·dim].
        const qwen_image::Config& c = resident.config();
        const size_t n = size_t(6 * c.dim()), kp = size_t(round_up(c.dim(), 16));
        const size_t mod_bytes = size_t(c.num_layers) * 2 * (n * kp + 8 * n);
        EXPECT_EQ(resident.host_weight_bytes(), 0u);
        EXPECT_GE(hosted.host_weight_bytes(), mod_bytes);
        EXPECT_EQ(resident.weight_bytes() - hosted.weight_bytes(), mod_bytes);
        EXPECT_GE((w1 - w0) - (w2 - w1), mod_bytes) << "device weights: resident " << (w1 - w0) << ", hosted " << (w2 - w1);

        // Every item at one timestep: set_timesteps keeps its rows.
        Tensor t = in.timestep.to(DType::F32);  // a copy
        for (int64_t b = 1; b < t.numel(); ++b) t.data<float>()[b] = t.data<float>()[0];
        const std::vector<float> schedule = {1.0f, t.data<float>()[0], 0.25f};
        auto run = [&](qwen_image::QwenImageTransformer& model, bool kept, bool graph) {
            model.set_timesteps(kept ? schedule : std::vector<float>{});
            model.set_cuda_graph(graph);
            return model.forward(in.hidden_states, in.encoder_hidden_states, in.mask, kept ? t : in.timestep, in.grid);
        };
        for (bool kept : {false, true})
            for (bool graph : {false, true}) {
                const Tensor want = run(resident, kept, graph), got = run(hosted, kept, graph);
                const Tensor want2 = run(resident, kept, graph), got2 = run(hosted, kept, graph);
                double worst = 0;
                for (int64_t i = 0; i < want.numel(); ++i)
                    worst = std::max(worst, double(std::abs(want.item_f32(i) - got.item_f32(i))));
                const std::string what = std::string(kept ? "kept" : "not kept") + (graph ? ", graph" : ", eager");
                EXPECT_EQ(std::memcmp(want.raw(), got.raw(), want.nbytes()), 0) << what << ": max |diff| " << worst;
                EXPECT_EQ(std::memcmp(want.raw(), want2.raw(), want.nbytes()), 0) << what << ": resident, again";
                EXPECT_EQ(std::memcmp(got.raw(), got2.raw(), got.nbytes()), 0) << what << ": hosted, again";
            }
    }
}
