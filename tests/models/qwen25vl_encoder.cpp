// Qwen-Image's text encoder (the language model of Qwen2.5-VL, models/text/qwen25vl.h) on every
// device this build and machine have (tests/devices.h) against transformers' own outputs on the
// committed fixtures (tests/data/qwen25vl/, made by scripts/fixtures/make_qwen25vl_fixtures.py)
// and, off the CPU, against the CPU model. nested_fp32 pads on the right, flat_bf16 on the left
// (its valid tokens keep positions past 0). The ops it runs beyond Qwen3's (q/k/v biases in the
// Linear group, RoPE without q/k norm) are in the ops harness (tests/ops/test_ops.cpp); the
// checkpoint layouts and config checks in tests/test_qwen25vl.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <optional>

#include "models/loader.h"
#include "models/text/qwen25vl.h"
#include "tests/devices.h"
#include "tests/decoder_lm_checks.h"
#include "tests/qwen25vl_fixture.h"

using namespace qdit;
using namespace qdit::testutil;

namespace {

class Qwen25VLEncoder : public DeviceTest {};

}  // namespace

// fp32 (the CPU): every hidden state transformers returns (embeddings, each layer's raw output, the
// final norm's output), padded rows included, and each prompt's valid rows of hidden_states[-1].
// Only f32 rounding-order differences remain (GEMM sums, exp, cos / sin), far below 1e-4 of the
// output range. The RoPE is the shared 1-D rotate-half table: the fixture script checks that
// transformers' mrope gives exactly that table for text-only input. A GPU runs the text encoder in
// bf16 only and refuses F32 by name.
TEST_P(Qwen25VLEncoder, Fp32MatchesTransformers) {
    if (on_gpu()) {
        const PreparedModel m = prepare_model(qwen25vl_encoder_dir("nested_fp32"), QuantConfig{});
        expect_error_mentioning([&] { text::Qwen25VLTextModel f32(m, DType::F32, ctx()); }, "BF16");
        return;
    }
    for (const char* name : kQwen25VLFixtures) {
        SCOPED_TRACE(name);
        Qwen3Inputs in = qwen25vl_inputs(name);
        PreparedModel m = prepare_model(qwen25vl_encoder_dir(name), QuantConfig{});
        EXPECT_EQ(m.plan.quantized_count(), 0);
        text::Qwen25VLTextModel model(m, DType::F32, ctx());
        const int64_t N = model.config().num_hidden_layers;
        EXPECT_EQ(model.int8_layers(), 0);
        EXPECT_EQ(model.linear_layers(), int(7 * N));
        for (int k = 1; k <= N + 1; ++k) {
            SCOPED_TRACE(k);
            Err e = compare(model.hidden_states(in.ids, in.mask, in.batch, k),
                            qwen25vl_reference(name, fmt::format("fp32.hidden_states.{}", N + 1 - k)));
            EXPECT_LE(e.max_abs, 1e-4 * e.max_ref);
        }
        Err e = compare_pipeline_states(model, N, 1, in, [&](const std::string& key) { return qwen25vl_reference(name, key); },
                                        "fp32");
        EXPECT_LE(e.max_abs, 1e-4 * e.max_ref);
        std::printf("[ %-12s ] fp32 hidden_states[-1] + embeds: max|err| %.3g (%.3g of max|ref|)\n", name,
                    e.max_abs, e.max_abs / e.max_ref);
    }
}

// bf16: weights, embeddings and activations rounded wherever torch rounds them (Linear outputs with
// their bias, RMSNorm's two roundings, rope's cos/sin and its three ops, SDPA, SiLU, the gate
// product, residual adds). As for Qwen3 (tests/models/qwen3_encoder.cpp, which argues the bounds),
// equal rounding points do not give equal bits, so the bound is relative to bf16's own error, the
// reference's distance from fp32, d_ref (40-48 dB here, fixture.json stats), on every device:
//   - vs the bf16 reference ≤ 0.8 · d_ref (rounding only the output of an f32 model would score
//     ≈ 1.0, independent bf16 rounding ≈ 1.4);
//   - vs fp32 no further than the reference is, up to 0.5 dB;
//   - the embeddings (a gather of the bf16 table) bit for bit torch's.
// Checked on the padded batch (hidden_states[-1], [-2], the embeddings and the pipeline's states;
// the CPU only) and on each item alone (encode() for -1, -2, -(N+1), with each attention kernel of
// the device). Off the CPU, also against the CPU model in bf16 (same rounding points, other
// summation orders): rel L2 ≤ 0.5 · the CPU model's own distance from fp32, the embeddings bit for
// bit.
TEST_P(Qwen25VLEncoder, Bf16MatchesTransformers) {
    for (const char* name : kQwen25VLFixtures) {
        SCOPED_TRACE(name);
        const Qwen3Inputs in = qwen25vl_inputs(name);
        const PreparedModel m = prepare_model(qwen25vl_encoder_dir(name), QuantConfig{});
        text::Qwen25VLTextModel model(m, DType::BF16, ctx());
        const text::Qwen25VLConfig& c = model.config();
        const int64_t N = c.num_hidden_layers;
        EXPECT_EQ(model.int8_layers(), 0);
        EXPECT_EQ(model.linear_layers(), int(7 * N));
        ASSERT_GE(c.num_attention_heads, 2 * c.num_key_value_heads) << "the fixture should exercise GQA";

        const Reference ref = [&](const std::string& key) { return qwen25vl_reference(name, key); };
        if (padded_batch_runs(model, in)) {
            expect_batch_matches_bf16(model, N, 1, in, ref, name);
            // The embeddings are a gather of the bf16 table: bit for bit torch's.
            Tensor emb = model.hidden_states(in.ids, in.mask, in.batch, int(N + 1));
            EXPECT_TRUE(bits_equal(emb, qwen25vl_reference(name, "bf16.hidden_states.0").to(DType::BF16)));
        }

        std::optional<text::Qwen25VLTextModel> cpu;
        if (on_gpu()) cpu.emplace(m, DType::BF16);
        expect_items_match_bf16(model, cpu ? &*cpu : nullptr, N, in, ref, {1, 2, int(N + 1)}, attention_impls(), name);
    }
}

// Every Linear in int8 (the bias added in f32).
//
// With f32 activations (the CPU), against the simulated W8A8 reference (per-output-channel weight
// scales, per-token activation scales, absmax/127, round half to even, clamp ±127). Bounds and their
// argument as for Qwen3: distance to the W8A8 reference ≤ 0.25 × its own distance to fp32; SQNR vs
// fp32 within 0.25 dB of the reference's and above 30 dB.
// With bf16 activations (every device): expected SQNR of the embeddings vs fp32 from the W8A8 and
// bf16 references' independent errors, 10·log10(|ref|² / (e_w8a8² + e_bf16²)); ours within 1 dB of
// it and above 30 dB; off the CPU, against the CPU model with the same plan in bf16 as in the bf16
// test.
TEST_P(Qwen25VLEncoder, Int8MatchesW8A8Reference) {
    for (const char* name : kQwen25VLFixtures) {
        SCOPED_TRACE(name);
        const Qwen3Inputs in = qwen25vl_inputs(name);
        const Reference ref = [&](const std::string& key) { return qwen25vl_reference(name, key); };
        const PreparedModel m = prepare_model(qwen25vl_encoder_dir(name), QuantConfig{QuantMethod::Int8, {}, "dynamic"});
        text::Qwen25VLTextModel model16(m, DType::BF16, ctx());
        const int64_t N = model16.config().num_hidden_layers;
        ASSERT_EQ(m.plan.quantized_count(), 7 * N);
        ASSERT_EQ(model16.int8_layers(), int(7 * N));
        if (!on_gpu()) {
            text::Qwen25VLTextModel model(m, DType::F32, ctx());
            EXPECT_EQ(model.int8_layers(), int(7 * N));
            expect_reproduces_w8a8(model, N, 1, in, ref, name);
        }

        std::optional<text::Qwen25VLTextModel> cpu;
        if (on_gpu()) cpu.emplace(m, DType::BF16);
        expect_int8_bf16_embeds(model16, cpu ? &*cpu : nullptr, 1, in, ref, name);
    }
}

// encode_device() is encode() left on the model's device; the in-memory key layout (lm_keys) gives
// the saved layout's result bit for bit; weight_bytes() counts the language model in the compute
// dtype on a GPU (the gate/up rows padded to a multiple of 16; lm_head and the vision tower are
// never loaded); bad inputs are refused by name (the family named), before any work. The CPU runs F32, a
// GPU BF16; F16 is refused everywhere.
TEST_P(Qwen25VLEncoder, DeviceResultLayoutsWeightsAndErrors) {
    const DType dt = on_gpu() ? DType::BF16 : DType::F32;
    const PreparedModel m = prepare_model(qwen25vl_encoder_dir("nested_fp32"), QuantConfig{});
    text::Qwen25VLTextModel model(m, dt, ctx());
    const text::Qwen25VLConfig& c = model.config();
    const std::vector<int32_t> ids = {1001, 77, 1000, 3, 42, 1002, 9};
    const std::vector<uint8_t> ones(ids.size(), 1);
    const Tensor host = model.encode(ids, ones);
    const Tensor dev = model.encode_device(ids, ones);
    ASSERT_EQ(dev.dtype(), dt);
    ASSERT_EQ(dev.shape(), (Shape{int64_t(ids.size()), c.hidden_size}));
    EXPECT_EQ(dev.device(), GetParam());
    EXPECT_TRUE(bits_equal(ops::to_host(dev, model.context()), host));
    text::Qwen25VLTextModel lm(prepare_model(qwen25vl_encoder_dir("lm_keys"), QuantConfig{}), dt, ctx());
    EXPECT_TRUE(bits_equal(lm.encode(ids, ones), host));

    // On a GPU only: the CPU's Linear layers leave their biases out of weight_bytes().
    if (on_gpu()) {
        for (const char* name : kQwen25VLFixtures) {
            const PreparedModel p = prepare_model(qwen25vl_encoder_dir(name), QuantConfig{});
            text::Qwen25VLTextModel g(p, dt, ctx());
            const text::Qwen25VLConfig& gc = g.config();
            // The embedding table stays in host memory: not in a GPU model's weight_bytes().
            size_t params = 0;
            for (const ParamSpec& ps : p.spec.params)
                if (ps.name != gc.prefix + "embed_tokens.weight") params += size_t(shape_numel(ps.shape));
            const int64_t pad = (gc.intermediate_size + 15) / 16 * 16 - gc.intermediate_size;
            // gate and up gain pad rows, down pad columns: 3 · pad · hidden per layer.
            params += size_t(3 * pad * gc.hidden_size * gc.num_hidden_layers);
            EXPECT_EQ(g.weight_bytes(), dtype_size(dt) * params) << name;
        }
    }

    std::string e = error_of([&] { model.encode({1, int32_t(c.vocab_size), 2}, {1, 1, 1}); });
    EXPECT_NE(e.find(std::to_string(c.vocab_size)), std::string::npos) << e;
    e = error_of([&] { model.encode({1, 2, 3}, {1, 1, 1}, int(c.num_hidden_layers) + 2); });
    EXPECT_NE(e.find(fmt::format("-{}", c.num_hidden_layers + 2)), std::string::npos) << e;
    EXPECT_NE(e.find("Qwen2.5-VL"), std::string::npos) << e;
    e = error_of([&] { model.encode({1, 2, 3}, {0, 0, 0}); });
    EXPECT_NE(e.find("no token"), std::string::npos) << e;
    e = error_of([&] { model.encode({1, 2, 3}, {1, 1}); });
    EXPECT_NE(e.find("mask"), std::string::npos) << e;
    e = error_of([&] { model.hidden_states({1, 2, 3}, {1, 1, 1}, 2); });
    EXPECT_NE(e.find("batch of 2"), std::string::npos) << e;
    e = error_of([&] { text::Qwen25VLTextModel f16(m, DType::F16, ctx()); });
    EXPECT_NE(e.find("Qwen2.5-VL"), std::string::npos) << e;
}

QDIT_INSTANTIATE_ON_DEVICES(Qwen25VLEncoder);
