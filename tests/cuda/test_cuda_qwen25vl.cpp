// Qwen-Image's text encoder (the language model of Qwen2.5-VL, models/text/qwen25vl.h) on CUDA: the
// same class on a CUDA context, against transformers' references (tests/data/qwen25vl/) and the CPU
// model in bf16, and Qwen-Image's prompt encoding (pipeline/qwen_image_prompt.h) on the GPU against
// diffusers' prompt_embeds. The ops it runs beyond Qwen3's (q/k/v biases in the Linear group, RoPE
// without q/k norm) are in the ops harness (tests/ops/test_ops.cpp: qk_rms_norm_rope "no-norm").
//
// Bounds as in tests/cuda/test_cuda_qwen3.cpp, which argues them: with d_ref the bf16 reference's
// distance from fp32,
//   - vs transformers' bf16 output: rel L2 <= 0.8 · d_ref;
//   - vs fp32: SQNR no more than 0.5 dB below the bf16 reference's;
//   - vs the CPU model in bf16 (same rounding points, other summation orders): rel L2 <= 0.5 · the
//     CPU model's own distance from fp32;
//   - the embeddings (a gather) bit for bit the CPU's and torch's.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "io/files.h"
#include "models/loader.h"
#include "models/text/qwen25vl.h"
#include "ops/context.h"
#include "pipeline/qwen_image_prompt.h"
#include "tests/expect_error.h"
#include "tests/qwen25vl_fixture.h"

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
using testutil::qwen_image_prompt_has;
using testutil::qwen_image_prompt_reference;

bool have_gpu() { return ops::cuda_devices() > 0; }
const ops::Context kGpu{{DeviceType::CUDA, 0}};

struct Err {
    double e2 = 0, r2 = 0, max_abs = 0, max_ref = 0;
    double rel() const { return std::sqrt(e2 / r2); }
    double sqnr() const { return 10 * std::log10(r2 / e2); }
    void add(const Err& o) {
        e2 += o.e2;
        r2 += o.r2;
        max_abs = std::max(max_abs, o.max_abs);
        max_ref = std::max(max_ref, o.max_ref);
    }
};

Err compare(const Tensor& a_in, const Tensor& r_in) {
    Tensor a = a_in.to(DType::F32), r = r_in.to(DType::F32);
    Err e;
    EXPECT_EQ(a.numel(), r.numel());
    if (a.numel() != r.numel()) return e;
    for (int64_t i = 0; i < r.numel(); ++i) {
        const double av = a.data<float>()[i], rv = r.data<float>()[i], d = av - rv;
        EXPECT_TRUE(std::isfinite(av)) << i;
        e.e2 += d * d;
        e.r2 += rv * rv;
        e.max_abs = std::max(e.max_abs, std::abs(d));
        e.max_ref = std::max(e.max_ref, std::abs(rv));
    }
    return e;
}

bool bits_equal(const Tensor& a, const Tensor& b) {
    return a.dtype() == b.dtype() && a.nbytes() == b.nbytes() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// Rows of item b of a [B, L, D] reference where the mask keeps the token → [n_valid, D].
Tensor valid_rows(const Tensor& ref, const Qwen3Inputs& in, int64_t b) {
    const int64_t L = ref.size(1), D = ref.size(2);
    std::vector<int64_t> keep;
    for (int64_t j = 0; j < L; ++j)
        if (in.mask[size_t(b * L + j)]) keep.push_back(j);
    Tensor out = Tensor::empty({int64_t(keep.size()), D}, DType::F32);
    for (size_t i = 0; i < keep.size(); ++i)
        std::memcpy(out.data<float>() + i * size_t(D), ref.data<float>() + (b * L + keep[i]) * D, size_t(D) * 4);
    return out;
}

const char* impl_name(ops::AttentionImpl impl) { return impl == ops::AttentionImpl::Simple ? "simple" : "auto"; }

}  // namespace

// encode() of every fixture item (right padding in nested_fp32; left in flat_bf16, whose valid
// tokens keep positions past 0) for hidden states -1, -2 and -(N+1), with both attention
// implementations, against transformers' bf16 and fp32 outputs and the CPU model in bf16.
TEST(CudaQwen25VLEncoder, Bf16MatchesTransformersAndCpu) {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
    for (const char* name : kQwen25VLFixtures) {
        SCOPED_TRACE(name);
        const Qwen3Inputs in = qwen25vl_inputs(name);
        PreparedModel m = prepare_model(qwen25vl_encoder_dir(name), QuantConfig{});
        text::Qwen25VLTextModel cpu(m, DType::BF16);
        text::Qwen25VLTextModel gpu(m, DType::BF16, kGpu);
        const text::Qwen25VLConfig& c = gpu.config();
        const int64_t N = c.num_hidden_layers;
        EXPECT_EQ(gpu.int8_layers(), 0);
        EXPECT_EQ(gpu.linear_layers(), int(7 * N));
        ASSERT_GE(c.num_attention_heads, 2 * c.num_key_value_heads) << "the fixture should exercise GQA";
        for (auto impl : {ops::AttentionImpl::Simple, ops::AttentionImpl::Auto}) {
            gpu.set_attention(impl);
            for (int k : {1, 2, int(N + 1)}) {
                const Tensor r16 = qwen25vl_reference(name, fmt::format("bf16.hidden_states.{}", N + 1 - k)),
                             r32 = qwen25vl_reference(name, fmt::format("fp32.hidden_states.{}", N + 1 - k));
                Err vs16, vs32, ref32, vs_cpu, cpu32;
                for (int64_t b = 0; b < in.batch; ++b) {
                    const Tensor out = gpu.encode(in.ids_of(b), in.mask_of(b), k);
                    const Tensor want = cpu.encode(in.ids_of(b), in.mask_of(b), k);
                    ASSERT_EQ(out.dtype(), DType::BF16);
                    ASSERT_EQ(out.shape(), want.shape());
                    const Tensor b16 = valid_rows(r16, in, b), b32 = valid_rows(r32, in, b);
                    if (k == N + 1) {
                        EXPECT_TRUE(bits_equal(out, want)) << "embeddings, item " << b;
                        EXPECT_TRUE(bits_equal(out, b16.to(DType::BF16))) << "embeddings vs torch, item " << b;
                        continue;
                    }
                    vs16.add(compare(out, b16));
                    vs32.add(compare(out, b32));
                    ref32.add(compare(b16, b32));
                    vs_cpu.add(compare(out, want));
                    cpu32.add(compare(want, b32));
                }
                if (k == N + 1) continue;
                std::printf("[ %-12s %-6s ] hidden_states[-%d]: rel L2 vs bf16 ref %.4f (bound %.4f), vs cpu bf16 "
                            "%.2e (bound %.2e); vs fp32 %.2f dB (ref %.2f dB, cpu %.2f dB)\n",
                            name, impl_name(impl), k, vs16.rel(), 0.8 * ref32.rel(), vs_cpu.rel(), 0.5 * cpu32.rel(),
                            vs32.sqnr(), ref32.sqnr(), cpu32.sqnr());
                EXPECT_LE(vs16.rel(), 0.8 * ref32.rel()) << impl_name(impl) << " -" << k;
                EXPECT_GE(vs32.sqnr(), ref32.sqnr() - 0.5) << impl_name(impl) << " -" << k;
                EXPECT_LE(vs_cpu.rel(), 0.5 * cpu32.rel()) << impl_name(impl) << " -" << k;
            }
        }
    }
}

// Every Linear in int8 with bf16 activations: expected SQNR vs fp32 from the W8A8 and bf16
// references' independent errors, 10·log10(|ref|² / (e_w8a8² + e_bf16²)); ours within 1 dB of it
// and above 30 dB; against the CPU model with the same plan in bf16 as in the bf16 test.
TEST(CudaQwen25VLEncoder, Int8MatchesW8A8Reference) {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
    for (const char* name : kQwen25VLFixtures) {
        SCOPED_TRACE(name);
        const Qwen3Inputs in = qwen25vl_inputs(name);
        PreparedModel m = prepare_model(qwen25vl_encoder_dir(name), QuantConfig{QuantMethod::Int8, {}, "dynamic"});
        text::Qwen25VLTextModel gpu(m, DType::BF16, kGpu);
        text::Qwen25VLTextModel cpu(m, DType::BF16);
        const int64_t N = gpu.config().num_hidden_layers;
        ASSERT_EQ(gpu.int8_layers(), int(7 * N));
        Err vs32, q, b16, vs_cpu, cpu32;
        for (int64_t b = 0; b < in.batch; ++b) {
            const Tensor out = gpu.encode(in.ids_of(b), in.mask_of(b));
            const Tensor r32 = qwen25vl_reference(name, fmt::format("fp32.embeds.{}", b));
            vs32.add(compare(out, r32));
            q.add(compare(qwen25vl_reference(name, fmt::format("w8a8.embeds.{}", b)), r32));
            b16.add(compare(qwen25vl_reference(name, fmt::format("bf16.embeds.{}", b)), r32));
            const Tensor want = cpu.encode(in.ids_of(b), in.mask_of(b));
            vs_cpu.add(compare(out, want));
            cpu32.add(compare(want, r32));
        }
        const double expected = 10 * std::log10(q.r2 / (q.e2 + b16.e2));
        std::printf("[ %-12s ] cuda int8: vs fp32 %.2f dB (expected %.2f: w8a8 ref %.2f, bf16 ref %.2f); rel L2 vs "
                    "cpu int8+bf16 %.2e (bound %.2e)\n",
                    name, vs32.sqnr(), expected, q.sqnr(), b16.sqnr(), vs_cpu.rel(), 0.5 * cpu32.rel());
        EXPECT_GE(vs32.sqnr(), expected - 1.0);
        EXPECT_GT(vs32.sqnr(), 30.0);
        EXPECT_LE(vs_cpu.rel(), 0.5 * cpu32.rel());
    }
}

// encode_device() is encode() left on the device; the in-memory key layout (lm_keys) gives the
// saved layout's result bit for bit; weight_bytes() counts the language model in bf16 (the
// gate/up rows padded to a multiple of 16; lm_head and the vision tower are never loaded); bad
// inputs are refused with the CPU model's messages.
TEST(CudaQwen25VLEncoder, DeviceResultLayoutsWeightsAndErrors) {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
    PreparedModel m = prepare_model(qwen25vl_encoder_dir("nested_fp32"), QuantConfig{});
    text::Qwen25VLTextModel gpu(m, DType::BF16, kGpu);
    const text::Qwen25VLConfig& c = gpu.config();
    const std::vector<int32_t> ids = {1001, 77, 1000, 3, 42, 1002, 9};
    const std::vector<uint8_t> ones(ids.size(), 1);
    const Tensor host = gpu.encode(ids, ones);
    const Tensor dev = gpu.encode_device(ids, ones);
    ASSERT_EQ(dev.dtype(), DType::BF16);
    ASSERT_EQ(dev.shape(), (Shape{int64_t(ids.size()), c.hidden_size}));
    EXPECT_EQ(dev.device().type, DeviceType::CUDA);
    EXPECT_TRUE(bits_equal(ops::to_host(dev, gpu.context()), host));
    text::Qwen25VLTextModel lm(prepare_model(qwen25vl_encoder_dir("lm_keys"), QuantConfig{}), DType::BF16, kGpu);
    EXPECT_TRUE(bits_equal(lm.encode(ids, ones), host));

    for (const char* name : kQwen25VLFixtures) {
        PreparedModel p = prepare_model(qwen25vl_encoder_dir(name), QuantConfig{});
        text::Qwen25VLTextModel g(p, DType::BF16, kGpu);
        const text::Qwen25VLConfig& gc = g.config();
        size_t params = 0;
        for (const ParamSpec& ps : p.spec.params)
            if (ps.name != "lm_head.weight") params += size_t(shape_numel(ps.shape));
        const int64_t pad = (gc.intermediate_size + 15) / 16 * 16 - gc.intermediate_size;
        // gate and up gain pad rows, down pad columns: 3 · pad · hidden per layer.
        params += size_t(3 * pad * gc.hidden_size * gc.num_hidden_layers);
        EXPECT_EQ(g.weight_bytes(), 2 * params) << name;
    }

    std::string e = error_of([&] { gpu.encode({1, int32_t(c.vocab_size), 2}, {1, 1, 1}); });
    EXPECT_NE(e.find(std::to_string(c.vocab_size)), std::string::npos) << e;
    e = error_of([&] { gpu.encode({1, 2, 3}, {1, 1, 1}, int(c.num_hidden_layers) + 2); });
    EXPECT_NE(e.find(fmt::format("-{}", c.num_hidden_layers + 2)), std::string::npos) << e;
    e = error_of([&] { gpu.encode({1, 2, 3}, {0, 0, 0}); });
    EXPECT_NE(e.find("no token"), std::string::npos) << e;
    e = error_of([&] { gpu.encode({1, 2, 3}, {1, 1}); });
    EXPECT_NE(e.find("mask"), std::string::npos) << e;
    e = error_of([&] { text::Qwen25VLTextModel f32(m, DType::F32, kGpu); });
    EXPECT_NE(e.find("BF16"), std::string::npos) << e;
}

// Qwen-Image's prompt encoding on the GPU (each prompt alone over its valid tokens, re-padded on
// the device): masks exactly diffusers', embeddings within the CPU prompt test's bound against
// diffusers' default bf16 output (rel L2 ≤ 0.9 · d_ref, tests/test_qwen_image_prompt.cpp argues it:
// torch's CPU SDPA rounds per key block at these lengths), within 0.6 × the CPU's own bf16 distance
// from fp32 of the CPU model's (the short prompts run the simple attention kernel and give the CPU's
// bits; the 1024-token one runs cuDNN's fused attention, whose sums are ordered differently:
// 0.51 × measured on an H100); on_device leaves the same values on the GPU.
TEST(CudaQwenImagePrompt, Bf16EmbedsMatchDiffusersAndCpu) {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
    const text::BpeTokenizer tok = text::BpeTokenizer::from_dir((qwen25vl_dir("prompt") / "tokenizer").string());
    PreparedModel m = prepare_model((qwen25vl_dir("prompt") / "text_encoder").string(), QuantConfig{});
    text::Qwen25VLTextModel gpu(m, DType::BF16, kGpu), cpu(m, DType::BF16);
    const json meta = read_json_file((qwen25vl_dir("prompt") / "reference.json").string());
    for (const json& cs : meta["cases"]) {
        const std::string name = cs["name"].get<std::string>();
        SCOPED_TRACE(name);
        const auto prompts = cs["prompts"].get<std::vector<std::string>>();
        const int64_t max_len = cs["max_sequence_length"].get<int64_t>();
        const QwenImagePromptEmbeds got = encode_qwen_image_prompts(gpu, tok, prompts, max_len);
        const QwenImagePromptEmbeds want = encode_qwen_image_prompts(cpu, tok, prompts, max_len);
        const QwenImagePromptEmbeds dev = encode_qwen_image_prompts(gpu, tok, prompts, max_len, /*on_device=*/true);
        EXPECT_EQ(dev.embeds.device().type, DeviceType::CUDA);
        EXPECT_TRUE(bits_equal(ops::to_host(dev.embeds, gpu.context()), got.embeds));
        const Tensor r16 = qwen_image_prompt_reference(name + ".bf16.prompt_embeds"),
                     r32 = qwen_image_prompt_reference(name + ".fp32.prompt_embeds");
        ASSERT_EQ(got.embeds.shape(), r16.shape());
        const Err vs16 = compare(got.embeds, r16), ref = compare(r16, r32), vs_cpu = compare(got.embeds, want.embeds),
                  cpu32 = compare(want.embeds, r32);
        std::printf("[ %-9s ] cuda bf16 prompt_embeds: rel L2 vs bf16 ref %.4f (bound %.4f), vs cpu %.2e (bound %.2e)\n",
                    name.c_str(), vs16.rel(), 0.9 * ref.rel(), vs_cpu.rel(), 0.6 * cpu32.rel());
        EXPECT_LE(vs16.rel(), 0.9 * ref.rel());
        EXPECT_LE(vs_cpu.rel(), 0.6 * cpu32.rel());
        const std::string mkey = name + ".bf16.prompt_embeds_mask";
        EXPECT_EQ(got.mask.defined(), qwen_image_prompt_has(mkey));
        if (got.mask.defined()) {
            const Tensor wm = qwen_image_prompt_reference(mkey);
            EXPECT_TRUE(bits_equal(got.mask, wm));
        }
    }
}
