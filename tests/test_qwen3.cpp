// The Qwen3 text encoder against transformers' own outputs on the committed
// fixtures (tests/data/qwen3/, made by scripts/fixtures/make_qwen3_fixtures.py).
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
using testutil::kQwen3Fixtures;
using testutil::qwen3_encoder_dir;
using testutil::qwen3_inputs;
using testutil::Qwen3Inputs;
using testutil::qwen3_reference;

// Error statistics of `test` against `ref`.
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

QuantConfig int8() { return QuantConfig{QuantMethod::Int8, {}, "dynamic"}; }

// hidden_states[-2] of the whole batch plus every item's encode(), against
// the `tag` references (`<tag>.hidden_states.<N-1>`, `<tag>.embeds.<b>`).
Err compare_pipeline_states(const text::Qwen3TextModel& model, const std::string& name,
                            const std::string& tag, const Qwen3Inputs& in) {
    const int64_t N = model.config().num_hidden_layers;
    Err e = compare(model.hidden_states(in.ids, in.mask, in.batch, 2),
                    qwen3_reference(name, fmt::format("{}.hidden_states.{}", tag, N - 1)));
    for (int64_t b = 0; b < in.batch; ++b)
        e.add(compare(model.encode(in.ids_of(b), in.mask_of(b)),
                      qwen3_reference(name, fmt::format("{}.embeds.{}", tag, b))));
    return e;
}

}  // namespace

// Every hidden state transformers returns (embeddings, each layer's raw
// output, the final norm's output), padded rows included, and the
// per-prompt embeddings of ZImagePipeline._encode_prompt. fp32 weights and
// activations: only f32 rounding-order differences remain (GEMM sums, exp,
// pow / cos / sin implementations), far below 1e-4 of the output range.
TEST(Qwen3Encoder, Fp32MatchesTransformers) {
    for (const char* name : kQwen3Fixtures) {
        SCOPED_TRACE(name);
        Qwen3Inputs in = qwen3_inputs(name);
        PreparedModel m = prepare_model(qwen3_encoder_dir(name), QuantConfig{});
        EXPECT_EQ(m.plan.quantized_count(), 0);
        text::Qwen3TextModel model(m, DType::F32);
        const int64_t N = model.config().num_hidden_layers;
        for (int k = 1; k <= N + 1; ++k) {
            SCOPED_TRACE(k);
            Err e = compare(model.hidden_states(in.ids, in.mask, in.batch, k),
                            qwen3_reference(name, fmt::format("fp32.hidden_states.{}", N + 1 - k)));
            EXPECT_LE(e.max_abs, 1e-4 * e.max_ref);
        }
        for (int64_t b = 0; b < in.batch; ++b) {
            Err e = compare(model.encode(in.ids_of(b), in.mask_of(b)),
                            qwen3_reference(name, fmt::format("fp32.embeds.{}", b)));
            EXPECT_LE(e.max_abs, 1e-4 * e.max_ref) << "item " << b;
        }
        Err e = compare_pipeline_states(model, name, "fp32", in);
        std::printf("[ %-15s ] fp32: max|err| %.3g (%.3g of max|ref|)\n", name, e.max_abs,
                    e.max_abs / e.max_ref);
    }
}

// bf16: weights, embeddings and activations rounded wherever torch rounds them
// (Linear outputs, RMSNorm's two roundings, rope's cos/sin and its three ops,
// SDPA's probabilities and output, SiLU, the gate product, residual adds).
// Equal rounding points do not give equal bits: an f32 value that lands
// within an f32 ulp of a bf16 rounding boundary (after a different GEMM
// summation order or exp implementation) rounds the other way, a 2^-8
// relative step, and each such step then propagates like any bf16 error.
// So the bound is relative to bf16's own error, the reference's distance from
// fp32 (40-44 dB here, fixture.json stats):
//   - vs the bf16 reference ≤ 0.8 × that distance. Only rounding the output of
//     an f32 model would score ≈ 1.0 and independent bf16 rounding ≈ 1.4;
//   - vs fp32 no further than the reference is, up to 0.5 dB.
TEST(Qwen3Encoder, Bf16MatchesTransformers) {
    for (const char* name : kQwen3Fixtures) {
        SCOPED_TRACE(name);
        Qwen3Inputs in = qwen3_inputs(name);
        text::Qwen3TextModel model(prepare_model(qwen3_encoder_dir(name), QuantConfig{}), DType::BF16);
        const int64_t N = model.config().num_hidden_layers;
        for (int k : {1, 2}) {
            SCOPED_TRACE(k);
            Tensor out = model.hidden_states(in.ids, in.mask, in.batch, k);
            EXPECT_EQ(out.dtype(), DType::BF16);
            Tensor r16 = qwen3_reference(name, fmt::format("bf16.hidden_states.{}", N + 1 - k)),
                   r32 = qwen3_reference(name, fmt::format("fp32.hidden_states.{}", N + 1 - k));
            Err vs16 = compare(out, r16), vs32 = compare(out, r32), ref_vs32 = compare(r16, r32);
            std::printf("[ %-15s ] bf16 hidden_states[-%d]: rel L2 vs bf16 ref %.4f; vs fp32 "
                        "%.4f (%.2f dB), ref bf16 vs fp32 %.4f (%.2f dB)\n",
                        name, k, vs16.rel_l2(), vs32.rel_l2(), vs32.sqnr_db(), ref_vs32.rel_l2(),
                        ref_vs32.sqnr_db());
            EXPECT_LE(vs16.rel_l2(), 0.8 * ref_vs32.rel_l2());
            EXPECT_GE(vs32.sqnr_db(), ref_vs32.sqnr_db() - 0.5);
        }
        Err vs16 = compare_pipeline_states(model, name, "bf16", in),
            ref_vs32 = compare(qwen3_reference(name, fmt::format("bf16.hidden_states.{}", N - 1)),
                               qwen3_reference(name, fmt::format("fp32.hidden_states.{}", N - 1)));
        EXPECT_LE(vs16.rel_l2(), 0.8 * ref_vs32.rel_l2());
    }
}

// Every Linear in int8 (the text encoder keeps none in high precision by
// default) against the simulated W8A8 reference: per-output-channel weight
// scales, per-token activation scales, absmax/127, round half to even, clamp
// ±127. As for the transformer (test_zimage_forward.cpp), an activation that
// lies within ~1e-6 of a rounding midpoint may round the other way after any
// f32 reordering upstream, so the check is how much of the reference's
// quantization noise is reproduced, not elementwise:
//   - distance to the W8A8 reference ≤ 0.25 × its own distance to fp32;
//   - SQNR vs fp32 within 0.25 dB of the reference's, and above 30 dB (a
//     broken scale or granularity lands far below).
TEST(Qwen3Encoder, Int8MatchesW8A8Reference) {
    for (const char* name : kQwen3Fixtures) {
        SCOPED_TRACE(name);
        Qwen3Inputs in = qwen3_inputs(name);
        PreparedModel m = prepare_model(qwen3_encoder_dir(name), int8());
        text::Qwen3TextModel model(m, DType::F32);
        const int64_t N = model.config().num_hidden_layers;
        ASSERT_EQ(m.plan.quantized_count(), 7 * N);  // q, k, v, o, gate, up, down per layer
        Tensor r8 = qwen3_reference(name, fmt::format("w8a8.hidden_states.{}", N - 1)),
               r32 = qwen3_reference(name, fmt::format("fp32.hidden_states.{}", N - 1));
        Tensor out = model.hidden_states(in.ids, in.mask, in.batch, 2);
        Err e = compare(out, r8), vs32 = compare(out, r32), ref_vs32 = compare(r8, r32);
        std::printf("[ %-15s ] int8 hidden_states[-2]: rel L2 vs W8A8 ref %.3g (%.3f of the "
                    "quantization noise); SQNR vs fp32 %.2f dB, reference %.2f dB\n",
                    name, e.rel_l2(), e.rel_l2() / ref_vs32.rel_l2(), vs32.sqnr_db(),
                    ref_vs32.sqnr_db());
        EXPECT_LE(e.rel_l2(), 0.25 * ref_vs32.rel_l2());
        EXPECT_NEAR(vs32.sqnr_db(), ref_vs32.sqnr_db(), 0.25);
        EXPECT_GT(vs32.sqnr_db(), 30.0);
        Err pe = compare_pipeline_states(model, name, "w8a8", in);
        EXPECT_LE(pe.rel_l2(), 0.25 * ref_vs32.rel_l2());

        // int8 with bf16 activations: both error sources together, so only
        // bounded by the sanity floor.
        text::Qwen3TextModel model16(m, DType::BF16);
        Err e16 = compare(model16.hidden_states(in.ids, in.mask, in.batch, 2), r32);
        std::printf("[ %-15s ] int8 + bf16 hidden_states[-2]: SQNR vs fp32 %.2f dB\n", name,
                    e16.sqnr_db());
        EXPECT_GT(e16.sqnr_db(), 30.0);
    }
}

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

TEST(Qwen3Encoder, BadInputsAreRefused) {
    text::Qwen3TextModel model(prepare_model(qwen3_encoder_dir("causal_lm"), QuantConfig{}), DType::F32);
    const int64_t vocab = model.config().vocab_size;
    std::string e = error_of([&] { model.encode({1, int32_t(vocab), 2}, {1, 1, 1}); });
    EXPECT_NE(e.find(std::to_string(vocab)), std::string::npos) << e;
    e = error_of([&] { model.encode({1, 2, 3}, {1, 1, 1}, 5); });  // 3 layers: 4 hidden states
    EXPECT_NE(e.find("-5"), std::string::npos) << e;
    e = error_of([&] { model.encode({1, 2, 3}, {0, 0, 0}); });
    EXPECT_NE(e.find("no token"), std::string::npos) << e;
    e = error_of([&] { model.hidden_states({1, 2, 3}, {1, 1, 1}, 2); });
    EXPECT_NE(e.find("batch of 2"), std::string::npos) << e;
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
