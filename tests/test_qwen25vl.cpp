// Qwen-Image's text encoder (the language model of Qwen2.5-VL, models/text/qwen25vl.h): the
// checkpoint layouts it accepts, its parameter spec and config checks. Its outputs against
// transformers' on the committed fixtures (tests/data/qwen25vl/), on every device:
// tests/models/qwen25vl_encoder.cpp.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstring>
#include <filesystem>

#include "io/files.h"
#include "io/safetensors.h"
#include "models/loader.h"
#include "models/text/qwen25vl.h"
#include "tests/expect_error.h"
#include "tests/qwen25vl_fixture.h"

namespace fs = std::filesystem;
using namespace qdit;
using nlohmann::json;

namespace {

using testutil::error_of;
using testutil::kQwen25VLFixtures;
using testutil::Qwen3Inputs;
using testutil::qwen25vl_dir;
using testutil::qwen25vl_encoder_dir;
using testutil::qwen25vl_inputs;

bool bits_equal(const Tensor& a, const Tensor& b) {
    return a.dtype() == b.dtype() && a.shape() == b.shape() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

json fixture_config(const std::string& name) {
    return read_json_file((fs::path(qwen25vl_encoder_dir(name)) / "config.json").string());
}

}  // namespace

// The in-memory key layout (model.language_model.*, model.visual.*) loads the same weights to the
// same outputs, bit for bit, as the saved layout it was converted from; module names (what
// ignored_layers matches) are the checkpoint's.
TEST(Qwen25VLEncoder, LanguageModelKeyLayout) {
    PreparedModel saved = prepare_model(qwen25vl_encoder_dir("nested_fp32"), QuantConfig{});
    PreparedModel lm = prepare_model(qwen25vl_encoder_dir("lm_keys"), QuantConfig{});
    EXPECT_EQ(saved.spec.params[0].name, "model.embed_tokens.weight");
    EXPECT_EQ(lm.spec.params[0].name, "model.language_model.embed_tokens.weight");
    EXPECT_EQ(lm.spec.ignored_prefixes, std::vector<std::string>{"model.visual."});
    EXPECT_EQ(saved.spec.ignored_prefixes, std::vector<std::string>{"visual."});
    EXPECT_EQ(lm.spec.parameter_count(), saved.spec.parameter_count());
    for (const LayerPlan& l : lm.plan.layers)
        EXPECT_EQ(l.spec.name.rfind("model.language_model.layers.", 0), 0u) << l.spec.name;
    Qwen3Inputs in = qwen25vl_inputs("nested_fp32");
    text::Qwen25VLTextModel a(saved, DType::F32), b(lm, DType::F32);
    EXPECT_EQ(b.lm_config().prefix, "model.language_model.");
    EXPECT_TRUE(bits_equal(a.hidden_states(in.ids, in.mask, in.batch), b.hidden_states(in.ids, in.mask, in.batch)));

    PreparedModel q = prepare_model(qwen25vl_encoder_dir("lm_keys"),
                                    QuantConfig{QuantMethod::Int8, {"language_model.layers.1", "mlp"}, "dynamic"});
    int high = 0;
    for (const LayerPlan& l : q.plan.layers) high += l.precision == Precision::High;
    EXPECT_EQ(high, 3 * 3 + 4);  // 3 layers' MLPs + layer 1's attention
}

// The real text encoder's config.json (flat, as Qwen/Qwen-Image holds it) and the nested form
// transformers 5.24 writes from it give the same spec, with transformers' parameter count of the
// language model (lm_head optional beside it), and none of the vision tower.
TEST(Qwen25VLEncoder, PublishedSpec) {
    const fs::path dir = qwen25vl_dir("published");
    json counts = read_json_file((dir / "params.json").string());
    const int64_t params = counts["language_model_parameters"].get<int64_t>(),
                  tensors = counts["language_model_tensors"].get<int64_t>() + 1;
    for (const char* file : {"config.json", "nested/config.json"}) {
        SCOPED_TRACE(file);
        json cfg = read_json_file((dir / file).string());
        ModelSpec s = model_spec_from_config(cfg, file);
        EXPECT_EQ(s.class_name, "Qwen2_5_VLForConditionalGeneration");
        EXPECT_EQ(s.parameter_count(), params);
        EXPECT_EQ(int64_t(s.params.size() + s.optional_params.size()), tensors);
        EXPECT_EQ(s.linears.size(), 28u * 7);
        EXPECT_EQ(s.params[0].name, "model.embed_tokens.weight");
        EXPECT_EQ(s.params.back().name, "model.norm.weight");
        ASSERT_EQ(s.optional_params.size(), 1u);  // never read: an export without it loads
        EXPECT_EQ(s.optional_params[0].name, "lm_head.weight");
        EXPECT_EQ(shape_numel(s.optional_params[0].shape), counts["lm_head_parameters"].get<int64_t>());
        EXPECT_EQ(s.ignored_prefixes, std::vector<std::string>{"visual."});
        text::Qwen25VLConfig c = text::Qwen25VLConfig::from_json(cfg, file);
        EXPECT_EQ(c.nested, std::string(file) != "config.json");
        EXPECT_EQ(c.hidden_size, 3584);
        EXPECT_EQ(c.head_dim, 128);
        EXPECT_EQ(c.num_key_value_heads, 4);
        EXPECT_EQ(c.intermediate_size, 18944);
        EXPECT_EQ(c.vocab_size, 152064);
        EXPECT_EQ(c.rope_theta, 1e6);
        EXPECT_EQ(c.rms_norm_eps, 1e-6);
        EXPECT_EQ(c.mrope_section, (std::vector<int64_t>{16, 24, 24}));
        const text::DecoderLmConfig& lm = c;
        EXPECT_TRUE(lm.qkv_bias);
        EXPECT_FALSE(lm.o_bias);
        EXPECT_FALSE(lm.qk_norm);
    }
}

TEST(Qwen25VLEncoder, BadConfigFieldsAreNamed) {
    for (const char* name : kQwen25VLFixtures) {
        SCOPED_TRACE(name);
        const json base = fixture_config(name);
        const bool nested = base.contains("text_config");
        auto err = [&](const char* field, json value) {
            json c = base;
            (nested ? c["text_config"] : c)[field] = value;
            return error_of([&] { model_spec_from_config(c, "te/config.json"); });
        };
        auto expect_in = [&](const std::string& e, const std::string& what) {
            EXPECT_NE(e.find(what), std::string::npos) << e;
            EXPECT_NE(e.find("te/config.json"), std::string::npos) << e;
            if (nested) EXPECT_NE(e.find("text_config"), std::string::npos) << e;
        };
        expect_in(err("hidden_act", "gelu"), "hidden_act");
        expect_in(err("num_key_value_heads", 3), "num_key_value_heads");
        expect_in(err("num_attention_heads", 5), "num_attention_heads");
        expect_in(err("head_dim", 128), "head_dim");
        expect_in(err("num_hidden_layers", "three"), "'num_hidden_layers'");
        expect_in(err("use_sliding_window", true), "use_sliding_window");
        expect_in(err("layer_types", json::array({"full_attention", "sliding_attention"})), "sliding_attention");
        const char* rope = nested ? "rope_parameters" : "rope_scaling";
        expect_in(err(rope, json{{"rope_type", "yarn"}, {"factor", 4.0}}), "yarn");
        expect_in(err(rope, json{{"type", "mrope"}, {"mrope_section", json::array({16, 24, 24})}}), "mrope_section");
        expect_in(err(rope, json{{"type", "mrope"}, {"mrope_section", json::array()}}), "mrope_section");
    }
    json c = fixture_config("flat_bf16");
    c["architectures"] = json::array({"Qwen2VLForConditionalGeneration"});
    std::string e = error_of([&] { model_spec_from_config(c, "te/config.json"); });
    EXPECT_NE(e.find("Qwen2VLForConditionalGeneration"), std::string::npos) << e;
    c = fixture_config("flat_bf16");
    c["model_type"] = "qwen2_vl";
    e = error_of([&] { model_spec_from_config(c, "te/config.json"); });
    EXPECT_NE(e.find("model_type"), std::string::npos) << e;
}

namespace {

// A copy of a fixture's text encoder whose tensors pass through `edit` (name → keep?, renamed).
fs::path edited_copy(const std::string& name, const std::function<std::string(const std::string&)>& rename) {
    const fs::path src = qwen25vl_encoder_dir(name);
    const fs::path dir = fs::temp_directory_path() / fmt::format("qdit_qwen25vl_{}_{}", name, ::getpid());
    fs::remove_all(dir);
    fs::create_directories(dir);
    fs::copy(src / "config.json", dir / "config.json");
    Checkpoint ck(src.string());
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (const std::string& k : ck.keys()) {
        std::string to = rename(k);
        if (!to.empty()) tensors.emplace_back(to, ck.get(k));
    }
    write_safetensors((dir / "model.safetensors").string(), tensors);
    return dir;
}

}  // namespace

// The vision tower's tensors are accepted under the layout's prefix without being part of the spec
// (a checkpoint without them loads too), and so is a checkpoint without lm_head.weight. A tensor of
// a module the model does not have (a vision tensor under the other layout's prefix) is skipped
// unread, as transformers does; a missing language-model tensor, or an extra one of a module the
// model has, is refused before any weight is read, naming the key.
TEST(Qwen25VLEncoder, VisionTowerSkippedAndKeysChecked) {
    PreparedModel m = prepare_model(qwen25vl_encoder_dir("flat_bf16"), QuantConfig{});
    size_t visual = 0;
    for (const std::string& k : m.checkpoint->keys()) visual += k.rfind("visual.", 0) == 0;
    EXPECT_GT(visual, 10u);
    for (const ParamSpec& p : m.spec.params) EXPECT_EQ(p.name.find("visual"), std::string::npos) << p.name;
    EXPECT_EQ(m.checkpoint->keys().size(), m.spec.params.size() + m.spec.optional_params.size() + visual);
    EXPECT_TRUE(m.unused_keys.empty());

    struct Case {
        std::function<std::string(const std::string&)> rename;
        std::string error;   // empty: loads
        std::string unused;  // the key it loads without reading
    };
    const std::vector<Case> cases = {
        {[](const std::string& k) { return k.rfind("visual.", 0) == 0 ? "" : k; }, "", ""},
        {[](const std::string& k) { return k == "model.layers.1.self_attn.k_proj.bias" ? "" : k; },
         "1 missing key(s): model.layers.1.self_attn.k_proj.bias", ""},
        {[](const std::string& k) { return k == "lm_head.weight" ? "" : k; }, "", ""},
        {[](const std::string& k) { return k == "visual.merger.ln_q.weight" ? "model.visual.merger.ln_q.weight" : k; },
         "", "model.visual.merger.ln_q.weight"},
        {[](const std::string& k) { return k == "model.norm.weight" ? "model.final_norm.weight" : k; },
         "1 missing key(s): model.norm.weight", ""},
        {[](const std::string& k) {
             return k == "model.layers.1.mlp.up_proj.weight" ? "model.layers.1.mlp.down_proj.bias" : k;
         },
         "1 unexpected key(s): model.layers.1.mlp.down_proj.bias", ""},
    };
    for (const Case& c : cases) {
        const fs::path dir = edited_copy("flat_bf16", c.rename);
        if (c.error.empty()) {
            PreparedModel p = prepare_model(dir.string(), QuantConfig{});
            EXPECT_EQ(p.unused_keys, c.unused.empty() ? std::vector<std::string>{}
                                                      : std::vector<std::string>{c.unused});
            Qwen3Inputs in = qwen25vl_inputs("flat_bf16");
            text::Qwen25VLTextModel a(p, DType::F32), b(m, DType::F32);
            EXPECT_TRUE(bits_equal(a.encode(in.ids_of(0), in.mask_of(0)), b.encode(in.ids_of(0), in.mask_of(0))));
        } else {
            std::string e = error_of([&] { prepare_model(dir.string(), QuantConfig{}); });
            EXPECT_NE(e.find(c.error), std::string::npos) << e;
        }
        fs::remove_all(dir);
    }
}
