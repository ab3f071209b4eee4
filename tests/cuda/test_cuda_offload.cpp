// PipelineOptions::offload_text_encoder on the GPU, for both pipelines on their committed tiny
// folders: after generate the text encoder's weights are no longer on the GPU (the allocator's
// weights in use drop by at least the encoder's size), the peak is lower than with every model
// resident (the transformer is loaded only after the encoder is freed), and the image is the same;
// Qwen-Image's modulation weights stay in host memory by default.
#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <type_traits>

#include "backend/cuda/allocator.h"
#include "backend/cuda/quantize.h"
#include "models/loader.h"
#include "models/text/qwen25vl.h"
#include "models/text/qwen3.h"
#include "pipeline/qwen_image_pipeline.h"
#include "pipeline/zimage_pipeline.h"

#ifndef QDIT_TEST_DATA
#define QDIT_TEST_DATA "tests/data"
#endif

using namespace qdit;

namespace {

PipelineOptions gpu(bool offload) {
    PipelineOptions po;
    po.device = Device{DeviceType::CUDA, 0};
    po.offload_text_encoder = offload;
    return po;
}

// The text encoder's bytes on the device (bf16, no quantization), as the model loads them (the
// checkpoint's lm_head and a vision tower are not loaded).
template <class TextModel>
uint64_t text_encoder_bytes(const std::string& dir) {
    return TextModel(prepare_model(dir + "/text_encoder", QuantConfig{}), DType::BF16,
                     ops::Context{{DeviceType::CUDA, 0}})
        .weight_bytes();
}

template <class Pipeline, class TextModel, class Options>
void check_offload(const std::string& dir, const Options& o) {
    auto run = [&](bool offload) {
        cuda::Allocator::instance().empty_cache();
        cuda::Allocator::instance().reset_peak();
        Pipeline pipe(dir, gpu(offload));
        GenerateResult r = pipe.generate(o);
        r.device_peak_bytes = cuda::Allocator::instance().stats().peak;  // since the reset
        return r;
    };
    const GenerateResult off = run(true), on = run(false);
    const uint64_t text = text_encoder_bytes<TextModel>(dir);
    ASSERT_GT(text, 0u);
    EXPECT_GE(on.device_weight_bytes, off.device_weight_bytes + text)
        << "weights with the encoder resident " << on.device_weight_bytes << ", offloaded " << off.device_weight_bytes;
    EXPECT_LT(off.device_peak_bytes, on.device_peak_bytes);
    EXPECT_GT(off.load_seconds, 0.0);
    EXPECT_EQ(on.image.shape(), off.image.shape());
    int worst = 0;
    for (int64_t i = 0; i < on.image.numel(); ++i)
        worst = std::max(worst, std::abs(int(on.image.data<uint8_t>()[i]) - int(off.image.data<uint8_t>()[i])));
    EXPECT_EQ(worst, 0);
}

// A two-step true-CFG request on the tiny Qwen-Image pipeline.
QwenImageGenerateOptions qwen_options() {
    QwenImageGenerateOptions o;
    o.prompt = "a red fox";
    o.negative_prompt = " ";
    o.steps = 2;
    o.width = o.height = 64;
    return o;
}

}  // namespace

TEST(CudaOffload, ZImageTextEncoderLeavesTheGpu) {
    if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
    GenerateOptions o;
    o.prompt = "a red fox";
    o.steps = 2;
    o.width = o.height = 64;
    check_offload<ZImagePipeline, text::Qwen3TextModel>(std::string(QDIT_TEST_DATA) + "/pipeline", o);
}

TEST(CudaOffload, QwenImageTextEncoderLeavesTheGpu) {
    if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
    const QwenImageGenerateOptions o = qwen_options();
    check_offload<QwenImagePipeline, text::Qwen25VLTextModel>(std::string(QDIT_TEST_DATA) + "/qwen_image_pipeline", o);
}

// The text encoders' embedding tables stay in host memory on a GPU too (DecoderLM): the device's
// weights grow by the layers' and the final norm's bytes (bf16; the arena's 256-byte rounding per
// tensor and the MLP's padding to 16 columns allowed), not by the table's.
TEST(CudaOffload, TextEncoderEmbeddingTableStaysOnTheHost) {
    if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
    auto check = [](const std::string& dir, auto* tag) {
        using TextModel = std::remove_pointer_t<decltype(tag)>;
        SCOPED_TRACE(dir);
        const PreparedModel m = prepare_model(dir + "/text_encoder", QuantConfig{});
        const size_t w0 = cuda::Allocator::instance().stats().weight;
        const TextModel model(m, DType::BF16, ops::Context{{DeviceType::CUDA, 0}});
        const uint64_t on_device = cuda::Allocator::instance().stats().weight - w0;
        const text::DecoderLmConfig& c = model.lm_config();
        uint64_t layers = 0, slack = 0;
        for (const std::string& k : m.checkpoint->keys())
            if (k.rfind(c.prefix + "layers.", 0) == 0 || k == c.prefix + "norm.weight") {
                layers += uint64_t(shape_numel(m.checkpoint->info(k).shape)) * 2;
                slack += 256;
            }
        slack += uint64_t(c.num_hidden_layers) * 3 * uint64_t(round_up(c.intermediate_size, 16) - c.intermediate_size) *
                 uint64_t(c.hidden_size) * 2;
        const uint64_t table = uint64_t(shape_numel(m.checkpoint->info(c.prefix + "embed_tokens.weight").shape)) * 2;
        ASSERT_LT(slack, table) << "the allowance would hide the table";
        EXPECT_GE(on_device, layers);
        EXPECT_LE(on_device, layers + slack) << "the table's " << table << " bytes";
        EXPECT_LE(model.weight_bytes(), on_device);
    };
    check(std::string(QDIT_TEST_DATA) + "/pipeline", static_cast<text::Qwen3TextModel*>(nullptr));
    check(std::string(QDIT_TEST_DATA) + "/qwen_image_pipeline", static_cast<text::Qwen25VLTextModel*>(nullptr));
}

// Qwen-Image's modulation weights (img_mod, txt_mod) stay in pinned host memory unless asked
// otherwise (PipelineOptions::offload_modulation unset or true): fewer weights on the device than
// with them resident (false), the same image.
TEST(CudaOffload, QwenImageModulationStaysOnTheHostByDefault) {
    if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
    const QwenImageGenerateOptions o = qwen_options();
    auto run = [&](std::optional<bool> hosted) {
        PipelineOptions po = gpu(false);
        po.offload_modulation = hosted;
        QwenImagePipeline pipe(std::string(QDIT_TEST_DATA) + "/qwen_image_pipeline", po);
        return pipe.generate(o);
    };
    const GenerateResult by_default = run(std::nullopt), hosted = run(true), resident = run(false);
    EXPECT_EQ(by_default.device_weight_bytes, hosted.device_weight_bytes);
    EXPECT_LT(by_default.device_weight_bytes, resident.device_weight_bytes);
    ASSERT_EQ(by_default.image.shape(), resident.image.shape());
    for (int64_t i = 0; i < resident.image.numel(); ++i)
        ASSERT_EQ(by_default.image.data<uint8_t>()[i], resident.image.data<uint8_t>()[i]) << "value " << i;
}
