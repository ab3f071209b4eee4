// Checks shared by the text encoders' device tests (tests/models/qwen3_encoder.cpp and
// qwen25vl_encoder.cpp): both models are the decoder LM of models/text/decoder_lm.h, and their
// fixtures have one layout (tests/qwen3_fixture.h: <tag>.hidden_states.<i>, <tag>.embeds.<b> for
// fp32 / bf16 / w8a8). The bounds are argued in qwen3_encoder.cpp.
#pragma once
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "models/text/decoder_lm.h"
#include "tests/error_stats.h"
#include "tests/expect_error.h"
#include "tests/qwen3_fixture.h"

namespace qdit::testutil {

// A fixture's reference tensor by key, as F32.
using Reference = std::function<Tensor(const std::string& key)>;

inline bool bits_equal(const Tensor& a, const Tensor& b) {
    return a.dtype() == b.dtype() && a.shape() == b.shape() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

inline const char* attention_name(ops::AttentionImpl impl) {
    return impl == ops::AttentionImpl::Simple ? "simple" : "auto";
}

// A padded batch (a key mask) runs on the CPU only: CUDA's attention refuses it, saying to run the
// items unpadded (what encode() does). True where the batch runs.
inline bool padded_batch_runs(const text::DecoderLM& model, const Qwen3Inputs& in) {
    if (!model.context().cuda()) return true;
    expect_error_mentioning([&] { model.hidden_states(in.ids, in.mask, in.batch, 1); }, "unpadded");
    return false;
}

// hidden_states[-from_end] of the whole padded batch (`<tag>.hidden_states.<layers + 1 - from_end>`)
// plus every item's encode() of the same state (`<tag>.embeds.<b>`): what the pipeline reads.
inline Err compare_pipeline_states(const text::DecoderLM& model, int64_t layers, int from_end, const Qwen3Inputs& in,
                                   const Reference& ref, const std::string& tag) {
    Err e = compare(model.hidden_states(in.ids, in.mask, in.batch, from_end),
                    ref(fmt::format("{}.hidden_states.{}", tag, layers + 1 - from_end)));
    for (int64_t b = 0; b < in.batch; ++b)
        e.add(compare(model.encode(in.ids_of(b), in.mask_of(b), from_end), ref(fmt::format("{}.embeds.{}", tag, b))));
    return e;
}

// bf16, the whole padded batch (padded rows included; the CPU only, see padded_batch_runs):
// hidden_states[-1] and [-2] and the pipeline's states (compare_pipeline_states at from_end) within
// 0.8 · d_ref of the bf16 reference, SQNR vs fp32 no more than 0.5 dB below the reference's.
inline void expect_batch_matches_bf16(const text::DecoderLM& model, int64_t layers, int from_end,
                                      const Qwen3Inputs& in, const Reference& ref, const char* name) {
    for (int k : {1, 2}) {
        SCOPED_TRACE(k);
        const Tensor out = model.hidden_states(in.ids, in.mask, in.batch, k);
        EXPECT_EQ(out.dtype(), DType::BF16);
        const Tensor r16 = ref(fmt::format("bf16.hidden_states.{}", layers + 1 - k)),
                     r32 = ref(fmt::format("fp32.hidden_states.{}", layers + 1 - k));
        const Err vs16 = compare(out, r16), vs32 = compare(out, r32), ref_vs32 = compare(r16, r32);
        std::printf("[ %-15s ] bf16 hidden_states[-%d]: rel L2 vs bf16 ref %.4f; vs fp32 %.4f (%.2f dB), ref bf16 vs "
                    "fp32 %.4f (%.2f dB)\n",
                    name, k, vs16.rel_l2(), vs32.rel_l2(), vs32.sqnr_db(), ref_vs32.rel_l2(), ref_vs32.sqnr_db());
        EXPECT_LE(vs16.rel_l2(), 0.8 * ref_vs32.rel_l2());
        EXPECT_GE(vs32.sqnr_db(), ref_vs32.sqnr_db() - 0.5);
    }
    const int64_t i = layers + 1 - from_end;
    const Err vs16 = compare_pipeline_states(model, layers, from_end, in, ref, "bf16"),
              ref_vs32 = compare(ref(fmt::format("bf16.hidden_states.{}", i)), ref(fmt::format("fp32.hidden_states.{}", i)));
    EXPECT_LE(vs16.rel_l2(), 0.8 * ref_vs32.rel_l2());
}

// int8 with f32 activations (the CPU) against the simulated W8A8 reference, on the padded batch's
// hidden_states[-from_end] and the pipeline's states: distance to the reference ≤ 0.25 × its own
// distance to fp32; SQNR vs fp32 within 0.25 dB of the reference's and above 30 dB.
inline void expect_reproduces_w8a8(const text::DecoderLM& model, int64_t layers, int from_end, const Qwen3Inputs& in,
                                   const Reference& ref, const char* name) {
    const int64_t i = layers + 1 - from_end;
    const Tensor r8 = ref(fmt::format("w8a8.hidden_states.{}", i)), r32 = ref(fmt::format("fp32.hidden_states.{}", i));
    const Tensor out = model.hidden_states(in.ids, in.mask, in.batch, from_end);
    const Err e = compare(out, r8), vs32 = compare(out, r32), ref_vs32 = compare(r8, r32);
    std::printf("[ %-15s ] int8 hidden_states[-%d]: rel L2 vs W8A8 ref %.3g (%.3f of the quantization noise); SQNR vs "
                "fp32 %.2f dB, reference %.2f dB\n",
                name, from_end, e.rel_l2(), e.rel_l2() / ref_vs32.rel_l2(), vs32.sqnr_db(), ref_vs32.sqnr_db());
    EXPECT_LE(e.rel_l2(), 0.25 * ref_vs32.rel_l2());
    EXPECT_NEAR(vs32.sqnr_db(), ref_vs32.sqnr_db(), 0.25);
    EXPECT_GT(vs32.sqnr_db(), 30.0);
    const Err pe = compare_pipeline_states(model, layers, from_end, in, ref, "w8a8");
    EXPECT_LE(pe.rel_l2(), 0.25 * ref_vs32.rel_l2());
}

// bf16, each item of the fixture alone (encode(): the valid rows) for hidden states -k, k in ks, with
// each attention kernel in impls (model has `layers` layers; -(layers + 1) is the embeddings):
//   - vs the bf16 reference: rel L2 ≤ 0.8 · d_ref, the reference's own distance from fp32;
//   - vs fp32: SQNR no more than 0.5 dB below the reference's;
//   - the embeddings (a gather of the bf16 table) bit for bit torch's;
//   - given a CPU model (a GPU's run): rel L2 to it ≤ 0.5 · its own distance from fp32, the
//     embeddings bit for bit its.
inline void expect_items_match_bf16(text::DecoderLM& model, const text::DecoderLM* cpu, int64_t layers,
                                    const Qwen3Inputs& in, const Reference& ref, const std::vector<int>& ks,
                                    const std::vector<ops::AttentionImpl>& impls, const char* name) {
    for (auto impl : impls) {
        model.set_attention(impl);
        for (int k : ks) {
            const Tensor r16 = ref(fmt::format("bf16.hidden_states.{}", layers + 1 - k)),
                         r32 = ref(fmt::format("fp32.hidden_states.{}", layers + 1 - k));
            Err vs16, vs32, ref32, vs_cpu, cpu32;
            for (int64_t b = 0; b < in.batch; ++b) {
                const Tensor out = model.encode(in.ids_of(b), in.mask_of(b), k);
                ASSERT_EQ(out.dtype(), DType::BF16);
                const Tensor b16 = valid_rows(r16, in, b), b32 = valid_rows(r32, in, b);
                const Tensor want = cpu ? cpu->encode(in.ids_of(b), in.mask_of(b), k) : Tensor();
                if (cpu) {
                    ASSERT_EQ(out.shape(), want.shape());
                }
                if (k == layers + 1) {
                    EXPECT_TRUE(bits_equal(out, b16.to(DType::BF16))) << "embeddings vs torch, item " << b;
                    if (cpu) {
                        EXPECT_TRUE(bits_equal(out, want)) << "embeddings vs cpu, item " << b;
                    }
                    continue;
                }
                vs16.add(compare(out, b16));
                vs32.add(compare(out, b32));
                ref32.add(compare(b16, b32));
                if (cpu) {
                    vs_cpu.add(compare(out, want));
                    cpu32.add(compare(want, b32));
                }
            }
            if (k == layers + 1) continue;
            const char* how = attention_name(impl);
            std::printf("[ %-15s %-6s ] encode hidden_states[-%d]: rel L2 vs bf16 ref %.4f (bound %.4f); vs fp32 "
                        "%.2f dB (ref %.2f dB)\n",
                        name, how, k, vs16.rel_l2(), 0.8 * ref32.rel_l2(), vs32.sqnr_db(), ref32.sqnr_db());
            EXPECT_LE(vs16.rel_l2(), 0.8 * ref32.rel_l2()) << how << " -" << k;
            EXPECT_GE(vs32.sqnr_db(), ref32.sqnr_db() - 0.5) << how << " -" << k;
            if (cpu) {
                std::printf("[ %-15s %-6s ] vs cpu bf16 %.2e (bound %.2e); cpu vs fp32 %.2f dB\n", name, how,
                            vs_cpu.rel_l2(), 0.5 * cpu32.rel_l2(), cpu32.sqnr_db());
                EXPECT_LE(vs_cpu.rel_l2(), 0.5 * cpu32.rel_l2()) << how << " -" << k;
            }
        }
    }
}

// int8 with bf16 activations, each item's embeds (encode() at the model's default hidden state,
// from_end): the W8A8 reference (f32 activations) and the bf16 reference err independently from
// fp32, so the expected SQNR vs fp32 is 10·log10(|ref|² / (e_w8a8² + e_bf16²)); ours within 1 dB of
// it and above 30 dB; given a CPU model with the same plan in bf16 (a GPU's run), rel L2 to it
// ≤ 0.5 · its own distance from fp32.
inline void expect_int8_bf16_embeds(const text::DecoderLM& model, const text::DecoderLM* cpu, int from_end,
                                    const Qwen3Inputs& in, const Reference& ref, const char* name) {
    Err vs32, q, b16, vs_cpu, cpu32;
    for (int64_t b = 0; b < in.batch; ++b) {
        const Tensor out = model.encode(in.ids_of(b), in.mask_of(b), from_end);
        const Tensor e32 = ref(fmt::format("fp32.embeds.{}", b));
        vs32.add(compare(out, e32));
        q.add(compare(ref(fmt::format("w8a8.embeds.{}", b)), e32));
        b16.add(compare(ref(fmt::format("bf16.embeds.{}", b)), e32));
        if (cpu) {
            const Tensor want = cpu->encode(in.ids_of(b), in.mask_of(b), from_end);
            vs_cpu.add(compare(out, want));
            cpu32.add(compare(want, e32));
        }
    }
    const double expected = 10 * std::log10(q.sum_ref2 / (q.sum_err2 + b16.sum_err2));
    std::printf("[ %-15s ] int8 + bf16 embeds: vs fp32 %.2f dB (expected %.2f: w8a8 ref %.2f, bf16 ref %.2f)\n", name,
                vs32.sqnr_db(), expected, q.sqnr_db(), b16.sqnr_db());
    EXPECT_GE(vs32.sqnr_db(), expected - 1.0);
    EXPECT_GT(vs32.sqnr_db(), 30.0);
    if (cpu) {
        std::printf("[ %-15s ] rel L2 vs cpu int8+bf16 %.2e (bound %.2e)\n", name, vs_cpu.rel_l2(),
                    0.5 * cpu32.rel_l2());
        EXPECT_LE(vs_cpu.rel_l2(), 0.5 * cpu32.rel_l2());
    }
}

}  // namespace qdit::testutil
