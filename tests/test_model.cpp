#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <random>

#include "io/files.h"
#include "models/zimage/transformer.h"
#include "backend/cpu/quantize.h"
#include "quant/int8.h"
#include "models/loader.h"
#include "tests/expect_error.h"
#include "tiny_model.h"

namespace fs = std::filesystem;
using namespace qdit;
using nlohmann::json;
using namespace qdit::testutil;

namespace {

using testutil::error_of;

const json kPublishedZImage = json::parse(R"({
  "_class_name": "ZImageTransformer2DModel", "_diffusers_version": "0.36.0.dev0",
  "all_f_patch_size": [1], "all_patch_size": [2], "axes_dims": [32, 48, 48],
  "axes_lens": [1536, 512, 512], "cap_feat_dim": 2560, "dim": 3840, "in_channels": 16,
  "n_heads": 30, "n_kv_heads": 30, "n_layers": 30, "n_refiner_layers": 2, "norm_eps": 1e-05,
  "qk_norm": true, "rope_theta": 256.0, "t_scale": 1000.0})");

}  // namespace

TEST(ZImageSpec, PublishedConfigHasTheRealParameterCount) {
    ModelSpec s = model_spec_from_config(kPublishedZImage, "published");
    EXPECT_EQ(s.parameter_count(), 6154908736);
    EXPECT_EQ(s.params.size(), 521u);
    int64_t linear = 0;
    for (const LinearSpec& l : s.linears)
        linear += l.out_features * l.in_features + (l.bias ? l.out_features : 0);
    EXPECT_EQ(linear, 6154367552);
    // 34 blocks x 7 projections, 32 adaLN, embedders, t-MLP, final layer.
    EXPECT_EQ(s.linears.size(), 34u * 7 + 32 + 1 + 2 + 2 + 1);
}

TEST(ZImageSpec, PublishedSizeDefaultInt8PlanHalvesTheLinearWeights) {
    ModelSpec s = model_spec_from_config(kPublishedZImage, "published");
    std::vector<DType> bf16(s.linears.size(), DType::BF16);
    QuantPlan p = make_quant_plan(s, QuantConfig{QuantMethod::Int8, {}, "dynamic"}, bf16,
                                  std::vector<bool>(s.linears.size(), false));
    EXPECT_EQ(p.quantized_count(), 34 * 7);
    EXPECT_EQ(p.bytes_before(), size_t(6154367552) * 2);
    // int8 weights + F32 scales + the default high-precision layers (docs/quantization.md).
    EXPECT_EQ(p.bytes_after(), size_t(6297926784));
}

TEST(ZImageSpec, ConfigErrorsNameTheField) {
    json c = kPublishedZImage;
    c["axes_dims"] = {32, 48, 40};
    EXPECT_NE(error_of([&] { model_spec_from_config(c, "cfg.json"); }).find("axes_dims"),
              std::string::npos);
    c = kPublishedZImage;
    c["dim"] = "big";
    EXPECT_NE(error_of([&] { model_spec_from_config(c, "cfg.json"); }).find("'dim'"),
              std::string::npos);
    c = kPublishedZImage;
    c["_class_name"] = "FluxTransformer2DModel";
    std::string e = error_of([&] { model_spec_from_config(c, "cfg.json"); });
    EXPECT_NE(e.find("FluxTransformer2DModel"), std::string::npos) << e;
    EXPECT_NE(e.find("ZImageTransformer2DModel"), std::string::npos) << e;
}

TEST(PreparedModel, DefaultPlanAndIgnoredLayers) {
    fs::path d = write_tiny("plan");
    PreparedModel m = prepare_model(d.string(), QuantConfig{QuantMethod::Int8, {}, "dynamic"});
    int ffn = 0;
    for (const LayerPlan& l : m.plan.layers) {
        bool dflt = false;
        for (const char* p : {"t_embedder", "cap_embedder", "all_x_embedder", "all_final_layer",
                              "adaLN_modulation"})
            dflt = dflt || layer_matches(p, l.spec.name);
        EXPECT_EQ(l.precision == Precision::High, dflt) << l.spec.name;
        ffn += layer_matches("feed_forward", l.spec.name);
    }
    EXPECT_EQ(ffn, 4 * 3);  // (2 layers + 2 refiners) x w1, w2, w3

    QuantConfig c{QuantMethod::Int8, {"feed_forward"}, "dynamic"};
    m = prepare_model(d.string(), c);
    EXPECT_EQ(m.plan.pattern_hits.at("feed_forward"), ffn);
    for (const LayerPlan& l : m.plan.layers)
        if (layer_matches("feed_forward", l.spec.name))
            EXPECT_EQ(l.kept_by, "ignored_layers: feed_forward");
}

TEST(PreparedModel, MissingUnexpectedAndMisshapedKeys) {
    // A key of a module the model has (here a bias the config does not declare) is unexpected.
    std::string e = error_of([&] {
        prepare_model(
            write_tiny("missing", "layers.1.feed_forward.w2.weight", "layers.1.feed_forward.w2.bias").string(),
            QuantConfig{});
    });
    EXPECT_NE(e.find("1 missing key(s): layers.1.feed_forward.w2.weight"), std::string::npos) << e;
    EXPECT_NE(e.find("1 unexpected key(s): layers.1.feed_forward.w2.bias"), std::string::npos) << e;

    // A key of no module of the model is skipped unread, with a warning, as diffusers does.
    testing::internal::CaptureStderr();
    PreparedModel stray = prepare_model(write_tiny("stray", "", "stray.weight").string(), QuantConfig{});
    const std::string warning = testing::internal::GetCapturedStderr();
    EXPECT_EQ(stray.unused_keys, std::vector<std::string>{"stray.weight"});
    EXPECT_NE(warning.find("1 key(s) of no module of ZImageTransformer2DModel are skipped, never read: stray.weight"),
              std::string::npos)
        << warning;

    fs::path d = write_tiny("shape");
    json cfg = tiny_config();
    cfg["cap_feat_dim"] = 48;
    write_file_atomic((d / "config.json").string(), cfg.dump());
    e = error_of([&] { prepare_model(d.string(), QuantConfig{}); });
    EXPECT_NE(e.find("cap_embedder"), std::string::npos) << e;

    EXPECT_NE(error_of([&] { prepare_model("/no/such/model", QuantConfig{}); }).find("/no/such/model"),
              std::string::npos);
}

TEST(PreparedModel, QuantizeWritesAPreQuantizedCheckpointThatLoadsWithoutConversion) {
    fs::path d = write_tiny("src");
    fs::path out = fresh_dir("out") / "q";
    QuantConfig c{QuantMethod::Int8, {"layers.1"}, "dynamic"};
    PreparedModel src = prepare_model(d.string(), c);
    size_t calls = 0;
    write_quantized(src, out.string(), [&](size_t, size_t) { ++calls; });
    EXPECT_EQ(calls, src.checkpoint->keys().size());
    EXPECT_FALSE(fs::exists(out.string() + ".partial"));

    json cfg = read_json_file((out / "config.json").string());
    ASSERT_TRUE(cfg.contains("quantization_config"));
    EXPECT_EQ(cfg["quantization_config"]["method"], "int8");

    // Loading it: detected as pre-quantized, same plan, no user config needed.
    PreparedModel q = prepare_model(out.string(), QuantConfig{});
    ASSERT_TRUE(q.stored_config.has_value());
    ASSERT_EQ(q.plan.layers.size(), src.plan.layers.size());
    for (size_t i = 0; i < q.plan.layers.size(); ++i) {
        const LayerPlan& a = src.plan.layers[i];
        const LayerPlan& b = q.plan.layers[i];
        EXPECT_EQ(a.precision, b.precision) << a.spec.name;
        EXPECT_EQ(b.prequantized, a.precision == Precision::Int8) << a.spec.name;
        EXPECT_EQ(a.bytes_after, b.bytes_after) << a.spec.name;
        if (a.precision != Precision::Int8) continue;
        // Stored int8 weights and scales equal what online quantization computes.
        Tensor w8 = q.checkpoint->get(a.spec.name + ".weight");
        Tensor ws = q.checkpoint->get(a.spec.name + ".weight_scale");
        EXPECT_EQ(w8.dtype(), DType::I8);
        EXPECT_EQ(ws.shape(), (Shape{a.spec.out_features, 1}));
        Tensor q8, s8;
        cpu::quantize_weight_int8(src.checkpoint->get(a.spec.name + ".weight"), &q8, &s8);
        EXPECT_EQ(std::memcmp(w8.raw(), q8.raw(), q8.nbytes()), 0) << a.spec.name;
        EXPECT_EQ(std::memcmp(ws.raw(), s8.raw(), s8.nbytes()), 0) << a.spec.name;
    }
    // Pre-quantized loads skip conversion: the int8 weight is the checkpoint's own bytes.
    const LayerPlan& first_q = *std::find_if(q.plan.layers.begin(), q.plan.layers.end(),
                                             [](const LayerPlan& l) { return l.prequantized; });
    nn::Linear lin = load_linear(q, first_q, DType::F32);
    EXPECT_TRUE(lin.quantized());
    // Asking for another method, or to keep a stored int8 layer high, is refused.
    EXPECT_THROW(prepare_model(out.string(), QuantConfig{QuantMethod::Fp8, {}, "dynamic"}), ConfigError);
    EXPECT_THROW(prepare_model(out.string(), QuantConfig{QuantMethod::Int8, {"layers.0"}, "dynamic"}),
                 ConfigError);
    // Output folder that exists and is not empty is refused; nothing is written.
    EXPECT_THROW(write_quantized(src, d.string()), IoError);
}

TEST(PreparedModel, OptionalTensorsAreAcceptedAndShapeChecked) {
    // A tied Qwen3ForCausalLM export that still carries lm_head.weight.
    const fs::path src = fs::path(QDIT_TEST_DATA) / "qwen3" / "causal_lm" / "text_encoder";
    json cfg = read_json_file((src / "config.json").string());
    ASSERT_TRUE(cfg.value("tie_word_embeddings", false));
    const int64_t vocab = cfg["vocab_size"], hidden = cfg["hidden_size"];
    auto with_lm_head = [&](const std::string& name, Shape shape) {
        fs::path d = fresh_dir(name);
        fs::copy_file(src / "config.json", d / "config.json");
        Checkpoint ck(src.string());
        std::vector<std::pair<std::string, Tensor>> ts;
        for (const std::string& k : ck.keys()) ts.emplace_back(k, ck.get(k));
        ts.emplace_back("lm_head.weight", Tensor::zeros(shape, DType::F32));
        write_safetensors((d / "model.safetensors").string(), ts);
        return d;
    };
    PreparedModel m = prepare_model(with_lm_head("lm_ok", {vocab, hidden}).string(), QuantConfig{});
    EXPECT_TRUE(m.checkpoint->contains("lm_head.weight"));
    for (const LayerPlan& l : m.plan.layers) EXPECT_NE(l.spec.name, "lm_head");
    std::string e = error_of([&] {
        prepare_model(with_lm_head("lm_bad", {vocab, hidden + 1}).string(), QuantConfig{});
    });
    EXPECT_NE(e.find("lm_head.weight"), std::string::npos) << e;
}
