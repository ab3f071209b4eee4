// The Qwen3 text encoder's config, parameter spec, quantization plan, checkpoint and input checks,
// and the CPU's causal grouped-query attention. Its outputs against transformers' on the committed
// fixtures (tests/data/qwen3/), on every device: tests/models/qwen3_encoder.cpp.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <random>

#include "io/files.h"
#include "io/safetensors.h"
#include "models/text/qwen3.h"
#include "backend/cpu/attention.h"
#include "models/loader.h"
#include "tests/expect_error.h"
#include "tests/qwen3_fixture.h"

namespace fs = std::filesystem;
using namespace qdit;
using nlohmann::json;

namespace {

using testutil::error_of;
using testutil::qwen3_encoder_dir;

}  // namespace

// ignored_layers work on the checkpoint's module names ("model." prefix
// included), and the text encoder's int8 is off unless asked for.
TEST(Qwen3Encoder, QuantPlanUsesCheckpointNames) {
    PreparedModel m = prepare_model(qwen3_encoder_dir("causal_lm"),
                                    QuantConfig{QuantMethod::Int8, {"mlp", "layers.2"}, "dynamic"});
    int high = 0;
    for (const LayerPlan& l : m.plan.layers) {
        EXPECT_EQ(l.spec.name.rfind("model.layers.", 0), 0u) << l.spec.name;
        const bool kept = l.spec.name.find(".mlp.") != std::string::npos ||
                          l.spec.name.rfind("model.layers.2.", 0) == 0;
        EXPECT_EQ(l.precision == Precision::High, kept) << l.spec.name;
        high += kept;
    }
    EXPECT_EQ(high, 3 * 3 + 4);  // 3 layers' MLPs + layer 2's attention
    EXPECT_EQ(prepare_model(qwen3_encoder_dir("causal_lm"), QuantConfig{}).plan.quantized_count(), 0);
}

// The spec of the real Z-Image text encoder (its config as transformers
// writes it) has transformers' parameter count; the transformers 4 layout of
// the same config (rope_theta at the top level) reads the same.
TEST(Qwen3Encoder, PublishedSpec) {
    const fs::path dir = fs::path(QDIT_TEST_DATA) / "qwen3" / "published";
    json cfg = read_json_file((dir / "config.json").string());
    json counts = read_json_file((dir / "params.json").string());
    ModelSpec s = model_spec_from_config(cfg, "config.json");
    EXPECT_EQ(s.class_name, "Qwen3ForCausalLM");
    EXPECT_EQ(s.parameter_count(), counts["parameters"].get<int64_t>());
    EXPECT_EQ(int64_t(s.params.size()), counts["tensors"].get<int64_t>());
    EXPECT_EQ(s.linears.size(), 36u * 7);
    EXPECT_EQ(s.params[0].name, "model.embed_tokens.weight");

    json v4 = cfg;
    v4.erase("rope_parameters");
    v4.erase("layer_types");
    v4["rope_theta"] = 1000000;
    v4["rope_scaling"] = nullptr;
    text::Qwen3Config c = text::Qwen3Config::from_json(v4, "v4.json");
    EXPECT_EQ(c.rope_theta, 1e6);
    EXPECT_EQ(c.head_dim, 128);
    EXPECT_EQ(c.num_key_value_heads, 8);
    EXPECT_EQ(model_spec_from_config(v4, "v4.json").parameter_count(), s.parameter_count());
}

TEST(Qwen3Encoder, BadConfigFieldsAreNamed) {
    json base = read_json_file((fs::path(qwen3_encoder_dir("causal_lm")) / "config.json").string());
    auto err = [&](const char* field, json value) {
        json c = base;
        c[field] = value;
        return error_of([&] { model_spec_from_config(c, "te/config.json"); });
    };
    std::string e = err("hidden_act", "gelu");
    EXPECT_NE(e.find("hidden_act"), std::string::npos) << e;
    e = err("num_key_value_heads", 3);
    EXPECT_NE(e.find("num_key_value_heads"), std::string::npos) << e;
    e = err("num_hidden_layers", "three");
    EXPECT_NE(e.find("'num_hidden_layers'"), std::string::npos) << e;
    e = err("use_sliding_window", true);
    EXPECT_NE(e.find("use_sliding_window"), std::string::npos) << e;
    e = err("rope_parameters", json{{"rope_type", "yarn"}, {"rope_theta", 1e6}, {"factor", 4.0}});
    EXPECT_NE(e.find("yarn"), std::string::npos) << e;
    e = err("architectures", json::array({"Qwen2ForCausalLM"}));
    EXPECT_NE(e.find("Qwen2ForCausalLM"), std::string::npos) << e;
    EXPECT_NE(e.find("te/config.json"), std::string::npos) << e;
}

// A checkpoint without one of its tensors is refused before any weight is
// read, naming the key.
TEST(Qwen3Encoder, MissingKeyIsNamed) {
    const fs::path src = qwen3_encoder_dir("causal_lm");
    const fs::path dir =
        fs::temp_directory_path() / fmt::format("qdit_qwen3_missing_{}", ::getpid());
    fs::remove_all(dir);
    fs::create_directories(dir);
    fs::copy(src / "config.json", dir / "config.json");
    Checkpoint ck(src.string());
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (const std::string& k : ck.keys())
        if (k != "model.layers.1.self_attn.k_norm.weight") tensors.emplace_back(k, ck.get(k));
    write_safetensors((dir / "model.safetensors").string(), tensors);
    std::string e = error_of([&] { prepare_model(dir.string(), QuantConfig{}); });
    EXPECT_NE(e.find("model.layers.1.self_attn.k_norm.weight"), std::string::npos) << e;
    fs::remove_all(dir);
}

// Causal grouped-query attention with a key mask against the plain formula:
// query head h reads key/value head h / (H / Hkv) and keys j <= i that the
// mask keeps; a query with none gets 0.
TEST(Qwen3Encoder, CausalGroupedAttentionMatchesNaive) {
    const int64_t B = 2, L = 7, H = 6, Hkv = 2, D = 8;
    std::mt19937 rng(7);
    std::normal_distribution<float> nd;
    auto randn = [&](Shape s) {
        Tensor t = Tensor::empty(s, DType::F32);
        for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = nd(rng);
        return t;
    };
    Tensor q = randn({B, L, H, D}), k = randn({B, L, Hkv, D}), v = randn({B, L, Hkv, D});
    Tensor mask = Tensor::zeros({B, L}, DType::U8);
    const uint8_t keep[B][L] = {{1, 1, 1, 1, 0, 0, 0}, {0, 0, 1, 1, 1, 1, 1}};
    for (int64_t b = 0; b < B; ++b)
        for (int64_t j = 0; j < L; ++j) mask.data<uint8_t>()[b * L + j] = keep[b][j];
    Tensor o = cpu::scaled_dot_product_attention(q, k, v, mask, /*causal=*/true);
    auto at = [&](const Tensor& t, int64_t b, int64_t j, int64_t h, int64_t d) {
        return double(t.data<float>()[((b * L + j) * t.size(2) + h) * D + d]);
    };
    for (int64_t b = 0; b < B; ++b)
        for (int64_t h = 0; h < H; ++h)
            for (int64_t i = 0; i < L; ++i) {
                const int64_t g = h / (H / Hkv);
                std::vector<double> p(size_t(L), 0.0);
                double mx = -1e300, sum = 0;
                for (int64_t j = 0; j <= i; ++j) {
                    if (!keep[b][j]) continue;
                    for (int64_t d = 0; d < D; ++d)
                        p[size_t(j)] += at(q, b, i, h, d) * at(k, b, j, g, d);
                    p[size_t(j)] /= std::sqrt(double(D));
                    mx = std::max(mx, p[size_t(j)]);
                }
                for (int64_t j = 0; j <= i; ++j)
                    if (keep[b][j]) sum += (p[size_t(j)] = std::exp(p[size_t(j)] - mx));
                for (int64_t d = 0; d < D; ++d) {
                    double want = 0;
                    for (int64_t j = 0; j <= i; ++j)
                        if (keep[b][j]) want += p[size_t(j)] / sum * at(v, b, j, g, d);
                    EXPECT_NEAR(at(o, b, i, h, d), want, 1e-5)
                        << "b " << b << " h " << h << " i " << i << " d " << d;
                }
            }
}
