// The Qwen-Image transformer: the published config, the int8 plans' layer sets against the simulated
// W8A8 references of the committed fixtures (tests/data/qwen_image/, made by
// scripts/fixtures/make_qwen_image_fixtures.py) and the pre-quantized round trip, on the CPU. Its
// outputs in fp32, bf16 and the default int8 plan on every device: tests/models/qwen_image_transformer.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include <unistd.h>

#include <fmt/format.h>

#include "io/files.h"
#include "io/safetensors.h"
#include "models/model_spec.h"
#include "tests/qwen_image_fixture.h"

namespace fs = std::filesystem;
using namespace qdit;

namespace {

using namespace testutil;

QuantConfig int8(std::vector<std::string> ignored = {}) { return QuantConfig{QuantMethod::Int8, std::move(ignored), "dynamic"}; }

}  // namespace

// The published config: 60 blocks of width 3072, 20,430,401,088 parameters (counted from the
// spec, nothing allocated), 1,933 tensors; its default int8 plan keeps the embedders, the
// conditioning path, norm_out / proj_out and (for now) the modulation Linears in bf16.
TEST(QwenImageForward, PublishedConfigSkeleton) {
    const ModelSpec s = load_model_spec((fs::path(QDIT_TEST_DATA) / "qwen_image" / "published").string());
    EXPECT_EQ(s.class_name, "QwenImageTransformer2DModel");
    EXPECT_EQ(s.parameter_count(), 20430401088);
    EXPECT_EQ(s.params.size(), 1933u);
    int64_t linear = 0;
    for (const LinearSpec& l : s.linears) linear += l.out_features * l.in_features + (l.bias ? l.out_features : 0);
    EXPECT_EQ(linear, 20430366784);
}

// out_channels as diffusers reads it (`out_channels or in_channels`, the argument defaulting to 16):
// absent means 16, the published value; null means in_channels.
TEST(QwenImageForward, OutChannelsDefaultsAsInDiffusers) {
    const std::string path = (fs::path(QDIT_TEST_DATA) / "qwen_image" / "published" / "config.json").string();
    nlohmann::json j = read_json_file(path);
    EXPECT_EQ(qwen_image::Config::from_json(j, path).out_channels, 16);
    j.erase("out_channels");
    EXPECT_EQ(qwen_image::Config::from_json(j, path).out_channels, 16);
    j["out_channels"] = nullptr;
    EXPECT_EQ(qwen_image::Config::from_json(j, path).out_channels, 64);
    j["in_channels"] = 16;
    EXPECT_EQ(qwen_image::Config::from_json(j, path).out_features(), 4 * 16);
}

// The cost of weight-only modulation: ignored_layers img_mod / txt_mod gives `w8a8_mod_fp32`,
// img_mlp gives `w8a8_keep_img_mlp`.
TEST(QwenImageForward, Int8WithKeptLayersMatchesReferences) {
    for (const char* name : kQwenImageFixtures) {
        SCOPED_TRACE(name);
        const QwenImageInputs in = qwen_image_inputs(name);
        expect_reproduces_w8a8(run_qwen_image(prepare_model(qwen_image_transformer(name), int8({"img_mod", "txt_mod"})),
                                         DType::F32, in),
                          name, "w8a8_mod_fp32");
        expect_reproduces_w8a8(run_qwen_image(prepare_model(qwen_image_transformer(name), int8({"img_mlp"})), DType::F32, in),
                          name, "w8a8_keep_img_mlp");
    }
}

// ignored_layers ["img_mlp"] keeps exactly transformer_blocks.N.img_mlp.net.0.proj and .net.2 of
// every block, and the result moves towards fp32.
TEST(QwenImageForward, IgnoringImgMlpKeepsExactlyItsLinears) {
    const char* name = "h3_b1";
    const QwenImageInputs in = qwen_image_inputs(name);
    const PreparedModel all = prepare_model(qwen_image_transformer(name), int8()),
                        kept = prepare_model(qwen_image_transformer(name), int8({"img_mlp"}));
    ASSERT_EQ(all.plan.layers.size(), kept.plan.layers.size());
    int changed = 0;
    for (size_t i = 0; i < kept.plan.layers.size(); ++i) {
        const LayerPlan &a = all.plan.layers[i], &k = kept.plan.layers[i];
        const bool img_mlp = k.spec.name.find(".img_mlp.net.0.proj") != std::string::npos ||
                             k.spec.name.find(".img_mlp.net.2") != std::string::npos;
        if (img_mlp) {
            EXPECT_NE(k.precision, Precision::Int8) << k.spec.name;
            ++changed;
        } else {
            EXPECT_EQ(k.precision, a.precision) << k.spec.name;
        }
    }
    EXPECT_EQ(changed, 2 * 2);  // two Linears in each of the fixture's two blocks
    const Tensor ref32 = qwen_image_reference(name, "fp32");
    const double with = compare(run_qwen_image(all, DType::F32, in), ref32).sqnr_db(),
                 without = compare(run_qwen_image(kept, DType::F32, in), ref32).sqnr_db();
    std::printf("[ %-10s ] int8 SQNR vs fp32 %.2f dB; img_mlp kept %.2f dB\n", name, with, without);
    EXPECT_GT(without, with);
}

// A pre-quantized copy (qdit quantize) loads with the same plan, weight-only layers included, and
// gives the online int8 model's output bit for bit.
TEST(QwenImageForward, PrequantizedRoundTrip) {
    const char* name = "h2_sharded";
    const QwenImageInputs in = qwen_image_inputs(name);
    const PreparedModel online = prepare_model(qwen_image_transformer(name), int8());
    const fs::path out = fs::temp_directory_path() / fmt::format("qdit_qwen_image_q8_{}", ::getpid());
    fs::remove_all(out);
    write_quantized(online, out.string());
    const PreparedModel stored = prepare_model(out.string(), QuantConfig{});
    ASSERT_EQ(stored.plan.layers.size(), online.plan.layers.size());
    for (size_t i = 0; i < stored.plan.layers.size(); ++i) {
        EXPECT_EQ(int(stored.plan.layers[i].precision), int(online.plan.layers[i].precision))
            << stored.plan.layers[i].spec.name;
        EXPECT_EQ(stored.plan.layers[i].prequantized, int8_weights(online.plan.layers[i].precision))
            << stored.plan.layers[i].spec.name;
    }
    const Tensor a = run_qwen_image(online, DType::F32, in), b = run_qwen_image(stored, DType::F32, in);
    EXPECT_EQ(compare(b, a).max_abs, 0.0);
    fs::remove_all(out);
}

// A text mask may leave an item without any text token (its image tokens then attend to each other
// only), or every item: the text stream is empty for such an item, its output does not depend on
// encoder_hidden_states, and the other item's output is the one it has with its own mask.
TEST(QwenImageForward, ItemsWithoutTextTokens) {
    const QwenImageInputs in = qwen_image_inputs("h2_b2_mask");
    qwen_image::QwenImageTransformer model(prepare_model(qwen_image_transformer("h2_b2_mask"), QuantConfig{}),
                                           DType::F32, ops::Context{});
    const Tensor mask = in.mask.to(DType::F32);
    const int64_t B = mask.size(0), T = mask.size(1);
    ASSERT_EQ(B, 2);
    Tensor other = in.encoder_hidden_states.to(DType::F32);  // other text: changed values
    for (int64_t i = 0; i < other.numel(); ++i) other.data<float>()[i] = 2.f * other.data<float>()[i] + 1.f;
    auto run = [&](const Tensor& enc, const Tensor& m) {
        return model.forward(in.hidden_states, enc, m, in.timestep, in.grid).to(DType::F32);
    };
    auto item = [&](const Tensor& out, int64_t b) { return out.view({B, out.numel() / B}).slice_rows(b, b + 1); };
    auto same = [](const Tensor& a, const Tensor& b) { return std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0; };
    Tensor first_empty = mask.to(DType::F32);
    for (int64_t k = 0; k < T; ++k) first_empty.data<float>()[k] = 0.f;
    const Tensor a = run(in.encoder_hidden_states, first_empty), b = run(other, first_empty),
                 full = run(in.encoder_hidden_states, mask);
    EXPECT_TRUE(same(item(a, 0), item(b, 0))) << "item 0 has no text token, yet the text changed its output";
    EXPECT_FALSE(same(item(a, 1), item(b, 1))) << "item 1's text should matter";
    const Err e = compare(item(a, 1), item(full, 1));
    EXPECT_LE(e.max_abs, 1e-5 * e.max_ref) << "item 1 with and without item 0's text";
    const Tensor none = Tensor::zeros({B, T}, DType::F32);
    const Tensor c = run(in.encoder_hidden_states, none), d = run(other, none);
    EXPECT_TRUE(same(c, d)) << "no text token anywhere, yet the text changed the output";
    EXPECT_TRUE(same(item(c, 0), item(a, 0))) << "item 0 alone without text";
}

// set_timesteps keeps the modulation Linears' outputs for a schedule's timesteps: a forward at one
// of them reads the kept rows and gives what the forward that computes them gives (f32 and the
// default int8 plan, whose modulation is weight-only int8: the same bits on the CPU), for a batch of
// 2 with different text masks; a timestep not in the list is computed as before.
TEST(QwenImageForward, KeptModulationGivesTheComputedOnes) {
    const QwenImageInputs in = qwen_image_inputs("h2_b2_mask");
    const int64_t B = in.hidden_states.size(0);
    auto at = [&](float t) {
        Tensor ts = Tensor::empty({B}, DType::F32);
        std::fill_n(ts.data<float>(), B, t);
        return ts;
    };
    for (const QuantConfig& q : {QuantConfig{}, int8()}) {
        SCOPED_TRACE(q.method == QuantMethod::Int8 ? "int8" : "f32");
        qwen_image::QwenImageTransformer model(prepare_model(qwen_image_transformer("h2_b2_mask"), q), DType::F32,
                                               ops::Context{});
        auto run = [&](float t) {
            return model.forward(in.hidden_states, in.encoder_hidden_states, in.mask, at(t), in.grid).to(DType::F32);
        };
        const Tensor a = run(0.625f), b = run(0.25f);
        model.set_timesteps({0.875f, 0.625f, 0.25f});
        const Tensor ka = run(0.625f), kb = run(0.25f), other = run(0.5f);
        EXPECT_EQ(compare(ka, a).max_abs, 0.0) << "kept modulation, step 1";
        EXPECT_EQ(compare(kb, b).max_abs, 0.0) << "kept modulation, step 2";
        EXPECT_GT(compare(ka, kb).max_abs, 0.0) << "the two timesteps should differ";
        model.set_timesteps({});
        EXPECT_EQ(compare(run(0.5f), other).max_abs, 0.0) << "a timestep outside the list";
    }
}
