// The Z-Image pipeline with its models on the GPU (PipelineOptions::device CUDA, bf16) against
// diffusers' fp32 ZImagePipeline outputs on the committed tiny pipeline (tests/data/pipeline), run
// with diffusers' initial noise. The CPU pipeline in bf16 is the yardstick: bf16 rounding puts both
// at a distance from the fp32 reference, and the GPU's kernels round at other points than the
// CPU's (cuDNN attention, cuBLASLt / CUTLASS accumulation order, fused norms), so we require the
// GPU's distance to be at most 2x the CPU bf16 pipeline's (plus half an 8-bit level for the image).
// A wrong component (a missed scale, a swapped RoPE layout, a bad mask) lands far outside that.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>

#include "backend/cuda/quantize.h"
#include "io/files.h"
#include "io/safetensors.h"
#include "models/zimage/transformer.h"
#include "ops/context.h"
#include "pipeline/zimage_pipeline.h"

#include "tests/pipeline_reference.h"

#ifndef QDIT_TEST_DATA
#define QDIT_TEST_DATA "tests/data"
#endif

using namespace qdit;

namespace {

const std::string kPipe = std::string(QDIT_TEST_DATA) + "/pipeline";

// ‖a − ref‖ / ‖ref‖ over all elements.
double rel_l2(const Tensor& a, const Tensor& ref) {
    EXPECT_EQ(a.shape(), ref.shape());
    Tensor x = a.to(DType::F32), y = ref.to(DType::F32);
    double e2 = 0, r2 = 0;
    for (int64_t i = 0; i < y.numel(); ++i) {
        const double d = double(x.data<float>()[i]) - y.data<float>()[i];
        e2 += d * d;
        r2 += double(y.data<float>()[i]) * y.data<float>()[i];
    }
    return std::sqrt(e2 / r2);
}

// Mean |a − ref| in 8-bit levels.
double mean_levels(const Tensor& a, const Tensor& ref) {
    EXPECT_EQ(a.shape(), ref.shape());
    double s = 0;
    for (int64_t i = 0; i < ref.numel(); ++i)
        s += std::abs(int(a.data<uint8_t>()[i]) - int(ref.data<uint8_t>()[i]));
    return s / double(ref.numel());
}

}  // namespace

TEST(CudaPipeline, Bf16TracksDiffusersAsTheCpuBf16PipelineDoes) {
    if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
    SafetensorsFile ref(kPipe + "/reference.safetensors");
    nlohmann::json meta = read_json_file(kPipe + "/reference.json");
    PipelineOptions cpu_opt{DType::BF16, {}, {}}, gpu_opt = cpu_opt;
    gpu_opt.device = Device{DeviceType::CUDA, 0};
    ZImagePipeline cpu(kPipe, cpu_opt), gpu(kPipe, gpu_opt);
    for (const auto& c : meta["cases"]) {
        const std::string name = c["name"];
        SCOPED_TRACE(name);
        const GenerateOptions o = testutil::reference_case(meta, c, ref);

        const Tensor want = ref.get(name + ".prompt_embeds");
        const double emb_cpu = rel_l2(cpu.encode_prompt(o.prompt, o.max_sequence_length), want),
                     emb_gpu = rel_l2(gpu.encode_prompt(o.prompt, o.max_sequence_length), want);
        const GenerateResult rc = cpu.generate(o), rg = gpu.generate(o);
        const Tensor lat_ref = ref.get(name + ".final_latents"), img_ref = ref.get(name + ".image");
        const double lat_cpu = rel_l2(rc.latents, lat_ref), lat_gpu = rel_l2(rg.latents, lat_ref);
        ASSERT_EQ(rg.image.shape(), img_ref.shape());
        const double img_cpu = mean_levels(rc.image, img_ref), img_gpu = mean_levels(rg.image, img_ref);
        std::printf("[ %-6s ] rel L2 to diffusers fp32, gpu / cpu bf16: embeddings %.2e / %.2e, final latents "
                    "%.2e / %.2e; image mean |diff| %.3f / %.3f levels; gpu peak %.1f MiB\n",
                    name.c_str(), emb_gpu, emb_cpu, lat_gpu, lat_cpu, img_gpu, img_cpu,
                    double(rg.device_peak_bytes) / (1 << 20));
        EXPECT_LE(emb_gpu, 2 * emb_cpu);
        EXPECT_LE(lat_gpu, 2 * lat_cpu);
        EXPECT_LE(img_gpu, 2 * img_cpu + 0.5);
        EXPECT_GT(rg.device_peak_bytes, 0u);
    }
}

// int8 on the GPU: the planned layers run through the int8 GEMM, the result stays close to the
// bf16 GPU pipeline (the transformer's int8 accuracy itself is tested on the forward fixtures).
TEST(CudaPipeline, Int8RunsAndStaysNearBf16) {
    if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
    PipelineOptions opt{DType::BF16, {}, {}};
    opt.device = Device{DeviceType::CUDA, 0};
    ZImagePipeline bf16(kPipe, opt);
    opt.transformer_quant = QuantConfig{QuantMethod::Int8, {}, "dynamic"};
    ZImagePipeline int8(kPipe, opt);
    EXPECT_GT(int8.transformer_int8_layers(), 0);
    GenerateOptions o;
    o.prompt = "a lighthouse";
    o.steps = 3;
    o.width = 64;
    o.height = 64;
    o.seed = 5;
    const GenerateResult a = bf16.generate(o), b = int8.generate(o), b2 = int8.generate(o);
    const double d = rel_l2(b.latents, a.latents);
    std::printf("[ int8 ] final latents rel L2 to the bf16 GPU pipeline %.2e\n", d);
    EXPECT_GT(d, 0.0);   // int8 really ran
    EXPECT_LE(d, 0.1);   // and stayed close
    EXPECT_EQ(rel_l2(b2.latents, b.latents), 0.0);  // deterministic
}

// The GPU pipeline keeps the latents on the GPU in the transformer's token layout and runs the
// guidance and the Euler step there (ops::euler_step); it must give the latents of the loop that
// brought the velocity to the host every step and stepped there (testutil::host_loop_latents, with
// a transformer on the GPU as the pipeline's: bf16 or int8, blocks as CUDA graphs), bit for bit,
// with and without guidance.
TEST(CudaPipeline, DeviceLoopKeepsTheHostLoopsBits) {
    if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
    SafetensorsFile ref(kPipe + "/reference.safetensors");
    nlohmann::json meta = read_json_file(kPipe + "/reference.json");
    const ops::OwnedStream stream(Device{DeviceType::CUDA, 0});
    for (bool int8 : {false, true}) {
        const QuantConfig q = int8 ? QuantConfig{QuantMethod::Int8, {}, "dynamic"} : QuantConfig{};
        PipelineOptions opt{DType::BF16, {}, {}};
        opt.device = Device{DeviceType::CUDA, 0};
        opt.transformer_quant = q;
        ZImagePipeline pipe(kPipe, opt);
        const PreparedModel m = prepare_model(kPipe + "/transformer", q);
        zimage::ZImageTransformer model(m, DType::BF16, ops::Context{{DeviceType::CUDA, 0}, stream.get()});
        model.set_cuda_graph(true);
        for (const auto& c : meta["cases"]) {
            SCOPED_TRACE(c["name"].get<std::string>() + (int8 ? " int8" : " bf16"));
            const GenerateOptions o = testutil::reference_case(meta, c, ref);
            const Tensor got = pipe.generate(o).latents, want = testutil::host_loop_latents(pipe, kPipe, o, model);
            ASSERT_EQ(got.shape(), want.shape());
            int64_t differ = 0;
            for (int64_t i = 0; i < got.numel(); ++i)
                differ += std::memcmp(got.data<float>() + i, want.data<float>() + i, sizeof(float)) != 0;
            EXPECT_EQ(differ, 0) << "of " << got.numel() << " latent values";
        }
    }
}
