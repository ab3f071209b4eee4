// Qwen-Image's text encoder (the language model of Qwen2.5-VL, models/text/qwen25vl.h) against
// transformers' own outputs on the committed fixtures (tests/data/qwen25vl/, made by
// scripts/fixtures/make_qwen25vl_fixtures.py), and the checkpoint layouts it accepts.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstdio>
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
using testutil::qwen25vl_reference;

struct Err {
    double max_abs = 0, max_ref = 0, sum_ref2 = 0, sum_err2 = 0;
    double rel_l2() const { return std::sqrt(sum_err2 / sum_ref2); }
    double sqnr_db() const { return 10.0 * std::log10(sum_ref2 / sum_err2); }
    void add(const Err& o) {
        max_abs = std::max(max_abs, o.max_abs);
        max_ref = std::max(max_ref, o.max_ref);
        sum_ref2 += o.sum_ref2;
        sum_err2 += o.sum_err2;
    }
};

Err compare(const Tensor& test_in, const Tensor& ref_in) {
    Tensor test = test_in.to(DType::F32), ref = ref_in.to(DType::F32);
    Err e;
    EXPECT_EQ(test.shape(), ref.shape());
    if (test.shape() != ref.shape()) return e;
    const float *a = test.data<float>(), *r = ref.data<float>();
    for (int64_t k = 0; k < ref.numel(); ++k) {
        const double d = double(a[k]) - double(r[k]);
        EXPECT_TRUE(std::isfinite(a[k])) << "element " << k;
        e.max_abs = std::max(e.max_abs, std::abs(d));
        e.max_ref = std::max(e.max_ref, std::abs(double(r[k])));
        e.sum_ref2 += double(r[k]) * r[k];
        e.sum_err2 += d * d;
    }
    return e;
}

bool bits_equal(const Tensor& a, const Tensor& b) {
    return a.dtype() == b.dtype() && a.shape() == b.shape() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// hidden_states[-1] of the whole batch plus every item's encode(), against the `tag` references.
Err compare_pipeline_states(const text::Qwen25VLTextModel& model, const std::string& name, const std::string& tag,
                            const Qwen3Inputs& in) {
    const int64_t N = model.config().num_hidden_layers;
    Err e = compare(model.hidden_states(in.ids, in.mask, in.batch),
                    qwen25vl_reference(name, fmt::format("{}.hidden_states.{}", tag, N)));
    for (int64_t b = 0; b < in.batch; ++b)
        e.add(compare(model.encode(in.ids_of(b), in.mask_of(b)),
                      qwen25vl_reference(name, fmt::format("{}.embeds.{}", tag, b))));
    return e;
}

json fixture_config(const std::string& name) {
    return read_json_file((fs::path(qwen25vl_encoder_dir(name)) / "config.json").string());
}

}  // namespace

// Every hidden state transformers returns (embeddings, each layer's raw output, the final norm's
// output), padded rows included (right padding in nested_fp32, left in flat_bf16), and each
// prompt's valid rows of hidden_states[-1]. fp32 weights and activations: only f32 rounding-order
// differences remain (GEMM sums, exp, cos / sin), far below 1e-4 of the output range. The RoPE is
// the shared 1-D rotate-half table: the fixture script checks that transformers' mrope gives
// exactly that table for text-only input.
TEST(Qwen25VLEncoder, Fp32MatchesTransformers) {
    for (const char* name : kQwen25VLFixtures) {
        SCOPED_TRACE(name);
        Qwen3Inputs in = qwen25vl_inputs(name);
        PreparedModel m = prepare_model(qwen25vl_encoder_dir(name), QuantConfig{});
        EXPECT_EQ(m.plan.quantized_count(), 0);
        text::Qwen25VLTextModel model(m, DType::F32);
        const int64_t N = model.config().num_hidden_layers;
        EXPECT_EQ(model.int8_layers(), 0);
        EXPECT_EQ(model.linear_layers(), int(7 * N));
        for (int k = 1; k <= N + 1; ++k) {
            SCOPED_TRACE(k);
            Err e = compare(model.hidden_states(in.ids, in.mask, in.batch, k),
                            qwen25vl_reference(name, fmt::format("fp32.hidden_states.{}", N + 1 - k)));
            EXPECT_LE(e.max_abs, 1e-4 * e.max_ref);
        }
        Err e = compare_pipeline_states(model, name, "fp32", in);
        EXPECT_LE(e.max_abs, 1e-4 * e.max_ref);
        std::printf("[ %-12s ] fp32 hidden_states[-1] + embeds: max|err| %.3g (%.3g of max|ref|)\n", name,
                    e.max_abs, e.max_abs / e.max_ref);
    }
}

// bf16: weights, embeddings and activations rounded wherever torch rounds them (Linear outputs with
// their bias, RMSNorm's two roundings, rope's cos/sin and its three ops, SDPA, SiLU, the gate
// product, residual adds). As for Qwen3 (tests/test_qwen3.cpp), equal rounding points do not give
// equal bits (a value within an f32 ulp of a bf16 boundary after another summation order flips by
// 2^-8 and propagates), so the bound is relative to bf16's own error, the reference's distance from
// fp32 (40-48 dB here, fixture.json stats):
//   - vs the bf16 reference ≤ 0.8 × that distance (rounding only the output of an f32 model would
//     score ≈ 1.0, independent bf16 rounding ≈ 1.4);
//   - vs fp32 no further than the reference is, up to 0.5 dB.
TEST(Qwen25VLEncoder, Bf16MatchesTransformers) {
    for (const char* name : kQwen25VLFixtures) {
        SCOPED_TRACE(name);
        Qwen3Inputs in = qwen25vl_inputs(name);
        text::Qwen25VLTextModel model(prepare_model(qwen25vl_encoder_dir(name), QuantConfig{}), DType::BF16);
        const int64_t N = model.config().num_hidden_layers;
        for (int k : {1, 2}) {
            SCOPED_TRACE(k);
            Tensor out = model.hidden_states(in.ids, in.mask, in.batch, k);
            EXPECT_EQ(out.dtype(), DType::BF16);
            Tensor r16 = qwen25vl_reference(name, fmt::format("bf16.hidden_states.{}", N + 1 - k)),
                   r32 = qwen25vl_reference(name, fmt::format("fp32.hidden_states.{}", N + 1 - k));
            Err vs16 = compare(out, r16), vs32 = compare(out, r32), ref_vs32 = compare(r16, r32);
            std::printf("[ %-12s ] bf16 hidden_states[-%d]: rel L2 vs bf16 ref %.4f; vs fp32 %.4f (%.2f dB), "
                        "ref bf16 vs fp32 %.4f (%.2f dB)\n",
                        name, k, vs16.rel_l2(), vs32.rel_l2(), vs32.sqnr_db(), ref_vs32.rel_l2(),
                        ref_vs32.sqnr_db());
            EXPECT_LE(vs16.rel_l2(), 0.8 * ref_vs32.rel_l2());
            EXPECT_GE(vs32.sqnr_db(), ref_vs32.sqnr_db() - 0.5);
        }
        // The embeddings are a gather of the bf16 table: bit for bit torch's.
        Tensor emb = model.hidden_states(in.ids, in.mask, in.batch, int(N + 1));
        EXPECT_TRUE(bits_equal(emb, qwen25vl_reference(name, "bf16.hidden_states.0").to(DType::BF16)));
        Err vs16 = compare_pipeline_states(model, name, "bf16", in),
            ref_vs32 = compare(qwen25vl_reference(name, fmt::format("bf16.hidden_states.{}", N)),
                               qwen25vl_reference(name, fmt::format("fp32.hidden_states.{}", N)));
        EXPECT_LE(vs16.rel_l2(), 0.8 * ref_vs32.rel_l2());
    }
}

// Every Linear in int8 against the simulated W8A8 reference (per-output-channel weight scales,
// per-token activation scales, absmax/127, round half to even, clamp ±127; the bias added in f32).
// Bounds and their argument as for Qwen3: distance to the W8A8 reference ≤ 0.25 × its own distance
// to fp32; SQNR vs fp32 within 0.25 dB of the reference's and above 30 dB.
TEST(Qwen25VLEncoder, Int8MatchesW8A8Reference) {
    for (const char* name : kQwen25VLFixtures) {
        SCOPED_TRACE(name);
        Qwen3Inputs in = qwen25vl_inputs(name);
        PreparedModel m = prepare_model(qwen25vl_encoder_dir(name), QuantConfig{QuantMethod::Int8, {}, "dynamic"});
        text::Qwen25VLTextModel model(m, DType::F32);
        const int64_t N = model.config().num_hidden_layers;
        ASSERT_EQ(m.plan.quantized_count(), 7 * N);
        EXPECT_EQ(model.int8_layers(), int(7 * N));
        Tensor r8 = qwen25vl_reference(name, fmt::format("w8a8.hidden_states.{}", N)),
               r32 = qwen25vl_reference(name, fmt::format("fp32.hidden_states.{}", N));
        Tensor out = model.hidden_states(in.ids, in.mask, in.batch);
        Err e = compare(out, r8), vs32 = compare(out, r32), ref_vs32 = compare(r8, r32);
        std::printf("[ %-12s ] int8 hidden_states[-1]: rel L2 vs W8A8 ref %.3g (%.3f of the quantization noise); "
                    "SQNR vs fp32 %.2f dB, reference %.2f dB\n",
                    name, e.rel_l2(), e.rel_l2() / ref_vs32.rel_l2(), vs32.sqnr_db(), ref_vs32.sqnr_db());
        EXPECT_LE(e.rel_l2(), 0.25 * ref_vs32.rel_l2());
        EXPECT_NEAR(vs32.sqnr_db(), ref_vs32.sqnr_db(), 0.25);
        EXPECT_GT(vs32.sqnr_db(), 30.0);
        Err pe = compare_pipeline_states(model, name, "w8a8", in);
        EXPECT_LE(pe.rel_l2(), 0.25 * ref_vs32.rel_l2());
    }
}

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
// language model plus lm_head, and none of the vision tower.
TEST(Qwen25VLEncoder, PublishedSpec) {
    const fs::path dir = qwen25vl_dir("published");
    json counts = read_json_file((dir / "params.json").string());
    const int64_t params = counts["language_model_parameters"].get<int64_t>() +
                           counts["lm_head_parameters"].get<int64_t>(),
                  tensors = counts["language_model_tensors"].get<int64_t>() + 1;
    for (const char* file : {"config.json", "nested/config.json"}) {
        SCOPED_TRACE(file);
        json cfg = read_json_file((dir / file).string());
        ModelSpec s = model_spec_from_config(cfg, file);
        EXPECT_EQ(s.class_name, "Qwen2_5_VLForConditionalGeneration");
        EXPECT_EQ(s.parameter_count(), params);
        EXPECT_EQ(int64_t(s.params.size()), tensors);
        EXPECT_EQ(s.linears.size(), 28u * 7);
        EXPECT_EQ(s.params[0].name, "model.embed_tokens.weight");
        EXPECT_EQ(s.params.back().name, "lm_head.weight");
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
        EXPECT_FALSE(c.tie_word_embeddings);
        const text::DecoderLmConfig lm = c.lm();
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
    // The tie flag of a pre-5 text_config is honoured: lm_head.weight becomes optional.
    c = fixture_config("nested_fp32");
    c["text_config"]["tie_word_embeddings"] = true;
    ModelSpec s = model_spec_from_config(c, "te/config.json");
    EXPECT_EQ(s.params.back().name, "model.norm.weight");
    ASSERT_EQ(s.optional_params.size(), 1u);
    EXPECT_EQ(s.optional_params[0].name, "lm_head.weight");
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
// (a checkpoint without them loads too); a tensor the model does not know, a vision tensor under
// the other layout's prefix and a missing language-model tensor are refused before any weight is
// read, naming the key.
TEST(Qwen25VLEncoder, VisionTowerSkippedAndKeysChecked) {
    PreparedModel m = prepare_model(qwen25vl_encoder_dir("flat_bf16"), QuantConfig{});
    size_t visual = 0;
    for (const std::string& k : m.checkpoint->keys()) visual += k.rfind("visual.", 0) == 0;
    EXPECT_GT(visual, 10u);
    for (const ParamSpec& p : m.spec.params) EXPECT_EQ(p.name.find("visual"), std::string::npos) << p.name;
    EXPECT_EQ(m.checkpoint->keys().size(), m.spec.params.size() + visual);

    struct Case {
        std::function<std::string(const std::string&)> rename;
        std::string error;  // empty: loads
    };
    const std::vector<Case> cases = {
        {[](const std::string& k) { return k.rfind("visual.", 0) == 0 ? "" : k; }, ""},
        {[](const std::string& k) { return k == "model.layers.1.self_attn.k_proj.bias" ? "" : k; },
         "model.layers.1.self_attn.k_proj.bias"},
        {[](const std::string& k) { return k == "lm_head.weight" ? "" : k; }, "lm_head.weight"},
        {[](const std::string& k) { return k == "visual.merger.ln_q.weight" ? "model.visual.merger.ln_q.weight" : k; },
         "model.visual.merger.ln_q.weight"},
        {[](const std::string& k) { return k == "model.norm.weight" ? "model.final_norm.weight" : k; },
         "model.final_norm.weight"},
    };
    for (const Case& c : cases) {
        const fs::path dir = edited_copy("flat_bf16", c.rename);
        if (c.error.empty()) {
            PreparedModel p = prepare_model(dir.string(), QuantConfig{});
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

TEST(Qwen25VLEncoder, BadInputsAreRefused) {
    text::Qwen25VLTextModel model(prepare_model(qwen25vl_encoder_dir("flat_bf16"), QuantConfig{}), DType::F32);
    const int64_t vocab = model.config().vocab_size;
    std::string e = error_of([&] { model.encode({1, int32_t(vocab), 2}, {1, 1, 1}); });
    EXPECT_NE(e.find(std::to_string(vocab)), std::string::npos) << e;
    e = error_of([&] { model.encode({1, 2, 3}, {1, 1, 1}, 4); });  // 2 layers: 3 hidden states
    EXPECT_NE(e.find("-4"), std::string::npos) << e;
    EXPECT_NE(e.find("Qwen2.5-VL"), std::string::npos) << e;
    e = error_of([&] { model.encode({1, 2, 3}, {0, 0, 0}); });
    EXPECT_NE(e.find("no token"), std::string::npos) << e;
    e = error_of([&] { model.hidden_states({1, 2, 3}, {1, 1, 1}, 2); });
    EXPECT_NE(e.find("batch of 2"), std::string::npos) << e;
    e = error_of([&] {
        text::Qwen25VLTextModel f16(prepare_model(qwen25vl_encoder_dir("flat_bf16"), QuantConfig{}), DType::F16);
    });
    EXPECT_NE(e.find("Qwen2.5-VL"), std::string::npos) << e;
}
