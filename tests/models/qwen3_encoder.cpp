// The Qwen3 text encoder (models/text/qwen3.h) on every device this build and machine have
// (tests/devices.h) against transformers' own outputs on the committed fixtures (tests/data/qwen3/,
// made by scripts/fixtures/make_qwen3_fixtures.py) and, off the CPU, against the CPU model. Both
// fixtures use grouped-query attention (4 heads over 2 kv heads, head_dim 16; 6 over 2, head_dim 8),
// and their batches carry right (causal_lm) and left (model_bias_bf16) padding, so encode()'s masked
// rows are covered on both sides. The config, checkpoint and CPU-kernel checks are in
// tests/test_qwen3.cpp, the CUDA kernels' in tests/cuda/test_cuda_qwen3.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <optional>

#include "models/loader.h"
#include "models/text/qwen3.h"
#include "tests/devices.h"
#include "tests/decoder_lm_checks.h"
#include "tests/qwen3_fixture.h"

using namespace qdit;
using namespace qdit::testutil;

namespace {

class Qwen3Encoder : public DeviceTest {};

QuantConfig int8() { return QuantConfig{QuantMethod::Int8, {}, "dynamic"}; }

}  // namespace

// fp32 (the CPU): every hidden state transformers returns (embeddings, each layer's raw output, the
// final norm's output), padded rows included, and the per-prompt embeddings of
// ZImagePipeline._encode_prompt. Only f32 rounding-order differences remain (GEMM sums, exp,
// pow / cos / sin implementations), far below 1e-4 of the output range. A GPU runs the text encoder
// in bf16 only and refuses F32 by name.
TEST_P(Qwen3Encoder, Fp32MatchesTransformers) {
    if (on_gpu()) {
        expect_error_mentioning(
            [&] { text::Qwen3TextModel m(prepare_model(qwen3_encoder_dir("causal_lm"), QuantConfig{}), DType::F32, ctx()); },
            "BF16");
        return;
    }
    for (const char* name : kQwen3Fixtures) {
        SCOPED_TRACE(name);
        Qwen3Inputs in = qwen3_inputs(name);
        PreparedModel m = prepare_model(qwen3_encoder_dir(name), QuantConfig{});
        EXPECT_EQ(m.plan.quantized_count(), 0);
        text::Qwen3TextModel model(m, DType::F32, ctx());
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
        Err e = compare_pipeline_states(model, N, 2, in, [&](const std::string& key) { return qwen3_reference(name, key); },
                                        "fp32");
        std::printf("[ %-15s ] fp32: max|err| %.3g (%.3g of max|ref|)\n", name, e.max_abs, e.max_abs / e.max_ref);
    }
}

// bf16: weights, embeddings and activations rounded wherever torch rounds them (Linear outputs,
// RMSNorm's two roundings, rope's cos/sin and its three ops, SDPA's probabilities and output, SiLU,
// the gate product, residual adds). Equal rounding points do not give equal bits: an f32 value that
// lands within an f32 ulp of a bf16 rounding boundary (after a different GEMM summation order or exp
// implementation) rounds the other way, a 2^-8 relative step, and each such step then propagates
// like any bf16 error. So the bound is relative to bf16's own error, the reference's distance from
// fp32, d_ref (40-44 dB here, fixture.json stats), the same on every device:
//   - vs the bf16 reference ≤ 0.8 · d_ref. Only rounding the output of an f32 model would score
//     ≈ 1.0 and independent bf16 rounding ≈ 1.4; a wrong rope layout or a missing rounding point
//     far more;
//   - vs fp32 no further than the reference is, up to 0.5 dB;
//   - hidden_states[-(N+1)] (the embeddings) is a gather: bit for bit torch's.
// Checked on the padded batch (hidden_states[-1], [-2], padded rows included, and ZImagePipeline's
// states; the CPU only, see padded_batch_runs) and on each item alone (encode() for -1, -2, -N,
// -(N+1), with each attention kernel of the device). Off the CPU, also against the CPU model in bf16
// (the same rounding points everywhere, other GEMM / attention summation orders): rel L2 ≤ 0.5 · the
// CPU model's own distance from fp32, and the embeddings bit for bit. Only boundary flips can
// separate the two (measured on H100: none, the outputs are bit-identical for every state of both
// fixtures, bf16 and int8, against bounds of 2.1e-3 .. 8.0e-3), while a missing or misplaced
// rounding point moves the result by about a whole bf16 error (≈ 1 ·) and a wrong RoPE pairing or
// mask by far more.
TEST_P(Qwen3Encoder, Bf16MatchesTransformers) {
    for (const char* name : kQwen3Fixtures) {
        SCOPED_TRACE(name);
        const Qwen3Inputs in = qwen3_inputs(name);
        const PreparedModel m = prepare_model(qwen3_encoder_dir(name), QuantConfig{});
        text::Qwen3TextModel model(m, DType::BF16, ctx());
        const text::Qwen3Config& c = model.config();
        const int64_t N = c.num_hidden_layers;
        EXPECT_EQ(model.int8_layers(), 0);
        EXPECT_EQ(model.linear_layers(), int(7 * N));
        ASSERT_GE(c.num_attention_heads, 2 * c.num_key_value_heads) << "the fixture should exercise GQA";

        const Reference ref = [&](const std::string& key) { return qwen3_reference(name, key); };
        if (padded_batch_runs(model, in)) {
            expect_batch_matches_bf16(model, N, 2, in, ref, name);
        }

        std::optional<text::Qwen3TextModel> cpu;
        if (on_gpu()) cpu.emplace(m, DType::BF16);
        std::vector<int> ks = {1, 2, int(N), int(N + 1)};
        ks.erase(std::unique(ks.begin(), ks.end()), ks.end());  // N = 2: -2 once
        expect_items_match_bf16(model, cpu ? &*cpu : nullptr, N, in, ref, ks, attention_impls(), name);
    }
}

// Every Linear in int8 (the text encoder keeps none in high precision by default).
//
// With f32 activations (the CPU), against the simulated W8A8 reference: per-output-channel weight
// scales, per-token activation scales, absmax/127, round half to even, clamp ±127. As for the
// transformer (test_zimage_forward.cpp), an activation that lies within ~1e-6 of a rounding midpoint
// may round the other way after any f32 reordering upstream, so the check is how much of the
// reference's quantization noise is reproduced, not elementwise:
//   - distance to the W8A8 reference ≤ 0.25 × its own distance to fp32;
//   - SQNR vs fp32 within 0.25 dB of the reference's, and above 30 dB (a broken scale or
//     granularity lands far below).
// With bf16 activations (every device): the W8A8 reference (f32 activations) and the bf16 reference
// err independently from fp32, so the expected SQNR of the embeddings vs fp32 is
// 10·log10(|ref|² / (e_w8a8² + e_bf16²)) (as in test_cuda_zimage_forward.cpp); ours within 1 dB of it
// and above 30 dB (the CPU also on the padded batch's hidden_states[-2]); off the CPU, against the
// CPU model with the same plan in bf16 as in the bf16 test (≤ 0.5 · that model's distance from fp32).
TEST_P(Qwen3Encoder, Int8MatchesW8A8Reference) {
    for (const char* name : kQwen3Fixtures) {
        SCOPED_TRACE(name);
        const Qwen3Inputs in = qwen3_inputs(name);
        const Reference ref = [&](const std::string& key) { return qwen3_reference(name, key); };
        const PreparedModel m = prepare_model(qwen3_encoder_dir(name), int8());
        text::Qwen3TextModel model16(m, DType::BF16, ctx());
        const int64_t N = model16.config().num_hidden_layers;
        ASSERT_EQ(m.plan.quantized_count(), 7 * N);  // q, k, v, o, gate, up, down per layer
        ASSERT_EQ(model16.int8_layers(), int(7 * N));
        const Tensor r32 = qwen3_reference(name, fmt::format("fp32.hidden_states.{}", N - 1));
        if (!on_gpu()) {
            text::Qwen3TextModel model(m, DType::F32, ctx());
            EXPECT_EQ(model.int8_layers(), int(7 * N));
            expect_reproduces_w8a8(model, N, 2, in, ref, name);
        }

        if (padded_batch_runs(model16, in)) {
            Err e16 = compare(model16.hidden_states(in.ids, in.mask, in.batch, 2), r32);
            std::printf("[ %-15s ] int8 + bf16 hidden_states[-2]: SQNR vs fp32 %.2f dB\n", name, e16.sqnr_db());
            EXPECT_GT(e16.sqnr_db(), 30.0);
        }
        std::optional<text::Qwen3TextModel> cpu;
        if (on_gpu()) cpu.emplace(m, DType::BF16);
        expect_int8_bf16_embeds(model16, cpu ? &*cpu : nullptr, 2, in, ref, name);
    }
}

// encode_device() is encode() left on the model's device; padding on the right changes nothing (the
// kept tokens keep their positions); weight_bytes() counts every tensor but lm_head in the compute
// dtype (on a GPU the embedding table, left in host memory, too); bad inputs are refused by name, before any work. The CPU runs F32, a GPU BF16.
TEST_P(Qwen3Encoder, DeviceResultPaddingWeightsAndErrors) {
    const DType dt = on_gpu() ? DType::BF16 : DType::F32;
    PreparedModel m = prepare_model(qwen3_encoder_dir("causal_lm"), QuantConfig{});
    const ops::OwnedStream stream(GetParam());  // a GPU model on a stream of its own
    text::Qwen3TextModel model(m, dt, ops::Context{GetParam(), stream.get()});
    const text::Qwen3Config& c = model.config();
    const int64_t D = c.hidden_size;
    const std::vector<int32_t> ids = {5, 77, 1000, 3, 42, 9};
    const Tensor host = model.encode(ids, std::vector<uint8_t>(ids.size(), 1));
    const Tensor dev = model.encode_device(ids, std::vector<uint8_t>(ids.size(), 1));
    ASSERT_EQ(dev.dtype(), dt);
    ASSERT_EQ(dev.shape(), (Shape{int64_t(ids.size()), D}));
    EXPECT_EQ(dev.device(), GetParam());
    EXPECT_TRUE(bits_equal(ops::to_host(dev, model.context()), host));
    std::vector<int32_t> padded = ids;
    padded.insert(padded.end(), {0, 11, 0});
    std::vector<uint8_t> mask(ids.size(), 1);
    mask.insert(mask.end(), {0, 0, 0});
    EXPECT_TRUE(bits_equal(model.encode(padded, mask), host));

    size_t params = 0;
    for (const ParamSpec& p : m.spec.params)
        if (!on_gpu() || p.name != c.prefix + "embed_tokens.weight") params += size_t(shape_numel(p.shape));
    // The fixture's intermediate size is a multiple of 16: no padding rows.
    ASSERT_EQ(c.intermediate_size % 16, 0);
    EXPECT_EQ(model.weight_bytes(), dtype_size(dt) * params);

    std::string e = error_of([&] { model.encode({1, int32_t(c.vocab_size), 2}, {1, 1, 1}); });
    EXPECT_NE(e.find(std::to_string(c.vocab_size)), std::string::npos) << e;
    e = error_of([&] { model.encode({1, 2, 3}, {1, 1, 1}, int(c.num_hidden_layers) + 2); });
    EXPECT_NE(e.find(fmt::format("-{}", c.num_hidden_layers + 2)), std::string::npos) << e;
    e = error_of([&] { model.encode({1, 2, 3}, {1, 1, 1}, 0); });
    EXPECT_NE(e.find("-0"), std::string::npos) << e;
    e = error_of([&] { model.encode({1, 2, 3}, {0, 0, 0}); });
    EXPECT_NE(e.find("no token"), std::string::npos) << e;
    e = error_of([&] { model.encode({1, 2, 3}, {1, 1}); });
    EXPECT_NE(e.find("mask"), std::string::npos) << e;
    e = error_of([&] { model.hidden_states({1, 2, 3}, {1, 1, 1}, 2); });
    EXPECT_NE(e.find("batch of 2"), std::string::npos) << e;
    // An id under a zero mask value is never read.
    EXPECT_NO_THROW(model.encode({1, -7, 2}, {1, 0, 1}));
}

QDIT_INSTANTIATE_ON_DEVICES(Qwen3Encoder);
