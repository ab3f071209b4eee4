// Qwen-Image's prompt encoding (pipeline/qwen_image_prompt.h) against diffusers' own
// QwenImagePipeline.encode_prompt on a pipeline-like folder (tests/data/qwen25vl/prompt/:
// text_encoder = the flat_bf16 fixture, tokenizer = the tiny Qwen2 tokenizer of tests/data/text/),
// made by scripts/fixtures/make_qwen25vl_fixtures.py. Cases (prompt/reference.json): one prompt,
// the negative prompt " ", a batch of two prompts of different lengths (re-padding with a mask), the
// same cut to max_sequence_length 7 (the mask then is all ones and dropped), and a prompt longer
// than the tokenizer's 1024 + 34 tokens.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>

#include "io/files.h"
#include "models/loader.h"
#include "pipeline/qwen_image_prompt.h"
#include "tests/cli_util.h"
#include "tests/expect_error.h"
#include "tests/qwen25vl_fixture.h"

namespace fs = std::filesystem;
using namespace qdit;
using nlohmann::json;

namespace {

using testutil::error_of;
using testutil::qwen25vl_dir;
using testutil::qwen_image_prompt_has;
using testutil::qwen_image_prompt_reference;

struct Case {
    std::string name;
    std::vector<std::string> prompts;
    int64_t max_sequence_length = 0;
};

std::vector<Case> cases() {
    json meta = read_json_file((qwen25vl_dir("prompt") / "reference.json").string());
    std::vector<Case> out;
    for (const json& c : meta["cases"])
        out.push_back({c["name"].get<std::string>(), c["prompts"].get<std::vector<std::string>>(),
                       c["max_sequence_length"].get<int64_t>()});
    return out;
}

text::BpeTokenizer tokenizer() { return text::BpeTokenizer::from_dir((qwen25vl_dir("prompt") / "tokenizer").string()); }
PreparedModel encoder_folder() { return prepare_model((qwen25vl_dir("prompt") / "text_encoder").string(), QuantConfig{}); }

struct Err {
    double e2 = 0, r2 = 0, max_abs = 0, max_ref = 0;
    double rel() const { return std::sqrt(e2 / r2); }
};

Err compare(const Tensor& a_in, const Tensor& r_in) {
    Err e;
    EXPECT_EQ(a_in.shape(), r_in.shape());
    if (a_in.shape() != r_in.shape()) return e;
    Tensor a = a_in.to(DType::F32), r = r_in.to(DType::F32);
    for (int64_t i = 0; i < r.numel(); ++i) {
        const double d = double(a.data<float>()[i]) - r.data<float>()[i];
        e.e2 += d * d;
        e.r2 += double(r.data<float>()[i]) * r.data<float>()[i];
        e.max_abs = std::max(e.max_abs, std::abs(d));
        e.max_ref = std::max(e.max_ref, std::abs(double(r.data<float>()[i])));
    }
    return e;
}

// The mask as diffusers returns it: present (0/1 per position) or None.
void expect_mask(const QwenImagePromptEmbeds& got, const std::string& key) {
    if (!qwen_image_prompt_has(key)) {
        EXPECT_FALSE(got.mask.defined()) << key << ": diffusers returns no mask (all ones)";
        return;
    }
    ASSERT_TRUE(got.mask.defined()) << key;
    const Tensor want = qwen_image_prompt_reference(key);
    ASSERT_EQ(got.mask.shape(), want.shape());
    EXPECT_EQ(std::memcmp(got.mask.raw(), want.raw(), want.nbytes()), 0) << key;
}

}  // namespace

// The template and the tokenizer call: token ids and attention mask equal diffusers'.
TEST(QwenImagePrompt, TokensMatchDiffusers) {
    EXPECT_EQ(render_qwen_image_prompt("a cat"),
              "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
              "spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\na cat<|im_end|>\n"
              "<|im_start|>assistant\n");
    // The fixture's tokenizer, and the same tokenizer as Qwen-Image's folder holds it (vocab.json +
    // merges.txt, no tokenizer.json: tests/data/text/tokenizer_vocab_merges).
    for (const text::BpeTokenizer& tok :
         {tokenizer(), text::BpeTokenizer::from_dir(std::string(QDIT_TEST_DATA) + "/text/tokenizer_vocab_merges")}) {
        for (const Case& c : cases()) {
            SCOPED_TRACE(c.name);
            const QwenImageTokens t = tokenize_qwen_image_prompts(tok, c.prompts);
            const Tensor ids = qwen_image_prompt_reference(c.name + ".input_ids"),
                         mask = qwen_image_prompt_reference(c.name + ".attention_mask");
            ASSERT_EQ((Shape{t.batch, t.len}), ids.shape());
            EXPECT_EQ(std::memcmp(t.ids.data(), ids.raw(), ids.nbytes()), 0);
            EXPECT_EQ(std::memcmp(t.mask.data(), mask.raw(), mask.nbytes()), 0);
            if (c.name == "long") EXPECT_EQ(t.len, kQwenImageTokenizerMaxLength + kQwenImageDropTokens);
        }
    }
}

// The tokenizer's truncation_side decides which tokens a long prompt keeps (diffusers calls the
// tokenizer with truncation=True); its padding_side changes nothing here, as the batch is re-padded
// on the right for an encoder that runs each prompt over its own tokens.
TEST(QwenImagePrompt, TokenizerSidesOfTheConfig) {
    const fs::path dir = testutil::fresh_dir("qwen_image_sides");
    fs::copy(qwen25vl_dir("prompt") / "tokenizer", dir);
    testutil::edit_json(dir / "tokenizer_config.json", [](json& j) {
        j["padding_side"] = "left";
        j["truncation_side"] = "left";
    });
    const text::BpeTokenizer left = text::BpeTokenizer::from_dir(dir.string()), right = tokenizer();
    for (const Case& c : cases()) {
        SCOPED_TRACE(c.name);
        const QwenImageTokens l = tokenize_qwen_image_prompts(left, c.prompts),
                              r = tokenize_qwen_image_prompts(right, c.prompts);
        EXPECT_EQ(l.mask, r.mask);
        if (c.name != "long") {
            EXPECT_EQ(l.ids, r.ids);
            continue;
        }
        const std::vector<int32_t> all = right.encode(render_qwen_image_prompt(c.prompts[0]));
        ASSERT_GT(all.size(), size_t(l.len));
        EXPECT_EQ(l.ids, std::vector<int32_t>(all.end() - l.len, all.end()));  // the last 1024 + 34
        EXPECT_NE(l.ids, r.ids);
    }
    fs::remove_all(dir);
}

// prompt_embeds and their mask in fp32: shapes and masks exactly diffusers', values within f32
// rounding-order differences (as the encoder's own fp32 test: max error ≤ 1e-4 · max|ref|).
TEST(QwenImagePrompt, Fp32EmbedsMatchDiffusers) {
    const text::BpeTokenizer tok = tokenizer();
    text::Qwen25VLTextModel enc(encoder_folder(), DType::F32);
    for (const Case& c : cases()) {
        SCOPED_TRACE(c.name);
        const QwenImagePromptEmbeds got = encode_qwen_image_prompts(enc, tok, c.prompts, c.max_sequence_length);
        const Tensor want = qwen_image_prompt_reference(c.name + ".fp32.prompt_embeds");
        EXPECT_EQ(got.embeds.dtype(), DType::F32);
        const Err e = compare(got.embeds, want);
        std::printf("[ %-9s ] fp32 prompt_embeds %s: max|err| %.3g (%.3g of max|ref|)\n", c.name.c_str(),
                    shape_str(want.shape()).c_str(), e.max_abs, e.max_abs / e.max_ref);
        EXPECT_LE(e.max_abs, 1e-4 * e.max_ref);
        expect_mask(got, c.name + ".fp32.prompt_embeds_mask");
    }
}

// bf16 (the pipeline's dtype). These sequences are longer (52-1024 kept tokens) than the encoder
// test's (≤ 29), and torch's CPU SDPA then splits the keys into blocks and rounds each block's
// unnormalised probabilities to bf16 before multiplying by v: its rounding points depend on the
// kernel and the length. torch's own math SDPA (the `bf16_math` references) lands 0.87-0.99 × d_ref
// from its default kernel (d_ref: the default bf16 reference's distance from fp32). So:
//   - vs diffusers' default output: rel L2 ≤ 0.9 × d_ref, closer than torch's other kernel gets
//     (measured 0.72-0.79); a missing rounding point or a wrong RoPE / mask lands far above;
//   - vs the math-path output: no further than two independent bf16 roundings, ≤ 1.4 × its d_ref;
//   - vs fp32: no further than either reference, up to 0.5 dB.
// The padded rows are zeros.
TEST(QwenImagePrompt, Bf16EmbedsMatchDiffusers) {
    const text::BpeTokenizer tok = tokenizer();
    text::Qwen25VLTextModel enc(encoder_folder(), DType::BF16);
    for (const Case& c : cases()) {
        SCOPED_TRACE(c.name);
        const QwenImagePromptEmbeds got = encode_qwen_image_prompts(enc, tok, c.prompts, c.max_sequence_length);
        EXPECT_EQ(got.embeds.dtype(), DType::BF16);
        const Tensor r16 = qwen_image_prompt_reference(c.name + ".bf16.prompt_embeds"),
                     rm = qwen_image_prompt_reference(c.name + ".bf16_math.prompt_embeds"),
                     r32 = qwen_image_prompt_reference(c.name + ".fp32.prompt_embeds");
        const Err vs16 = compare(got.embeds, r16), vsm = compare(got.embeds, rm), vs32 = compare(got.embeds, r32),
                  ref16 = compare(r16, r32), refm = compare(rm, r32);
        const Err torch_kernels = compare(rm, r16);
        std::printf("[ %-9s ] bf16 prompt_embeds: rel L2 vs default ref %.4f (%.2f of d_ref; torch's math path %.2f), "
                    "vs math-path ref %.4f (bound %.4f); vs fp32 %.4f (refs %.4f, %.4f)\n",
                    c.name.c_str(), vs16.rel(), vs16.rel() / ref16.rel(), torch_kernels.rel() / ref16.rel(), vsm.rel(),
                    1.4 * refm.rel(), vs32.rel(), ref16.rel(), refm.rel());
        EXPECT_LE(vs16.rel(), 0.9 * ref16.rel());
        EXPECT_LE(vsm.rel(), 1.4 * refm.rel());
        EXPECT_LE(vs32.rel(), std::pow(10.0, 0.5 / 20) * std::max(refm.rel(), ref16.rel()));
        expect_mask(got, c.name + ".bf16.prompt_embeds_mask");
        if (got.mask.defined()) {
            const Tensor f = got.embeds.to(DType::F32);
            const int64_t D = f.size(2);
            for (int64_t i = 0; i < got.mask.numel(); ++i)
                if (!got.mask.data<uint8_t>()[i])
                    for (int64_t d = 0; d < D; ++d) ASSERT_EQ(f.data<float>()[i * D + d], 0.f) << "row " << i;
        }
    }
}

TEST(QwenImagePrompt, BadArgumentsAreRefused) {
    const text::BpeTokenizer tok = tokenizer();
    text::Qwen25VLTextModel enc(encoder_folder(), DType::F32);
    for (int64_t n : {int64_t(0), int64_t(1025)}) {
        std::string e = error_of<UsageError>([&] { encode_qwen_image_prompts(enc, tok, {"a cat"}, n); });
        EXPECT_NE(e.find("max_sequence_length"), std::string::npos) << e;
        EXPECT_NE(e.find("1024"), std::string::npos) << e;
    }
    std::string e = error_of<UsageError>([&] { encode_qwen_image_prompts(enc, tok, {}, 512); });
    EXPECT_NE(e.find("no prompt"), std::string::npos) << e;
    // Fewer than 35 tokens (the 34 dropped ones and one more): nothing would be left.
    QwenImageTokens t;
    t.batch = 1;
    t.len = 34;
    t.ids.assign(34, 5);
    t.mask.assign(34, 1);
    e = error_of<ShapeError>([&] { encode_qwen_image_prompts(enc, t); });
    EXPECT_NE(e.find("34"), std::string::npos) << e;
}
