// The Qwen-Image pipeline against diffusers' QwenImagePipeline on a tiny pipeline folder
// (tests/data/qwen_image_pipeline/, scripts/fixtures/make_qwen_image_pipeline_fixtures.py): the
// prompt embeddings, the final latents and the image from injected initial latents, with and
// without true CFG; packing, the sigma schedule, the CFG rule, true CFG's batch of 2 against two
// calls, int8, and the checks before loading.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include <map>

#include "cli_util.h"
#include "io/files.h"
#include "io/png.h"
#include "io/safetensors.h"
#include "pipeline/qwen_image_pipeline.h"
#include "pipeline/tiny_model.h"
#include "error_stats.h"
#include "expect_error.h"
#include "qwen_image_pipeline_reference.h"

namespace fs = std::filesystem;
using namespace qdit;

namespace {

#define EXPECT_ERROR_CONTAINS(stmt, E, needle)                                      \
    do {                                                                            \
        const std::string msg_ = testutil::error_of<E>([&] { (void)stmt; });        \
        EXPECT_NE(msg_.find(needle), std::string::npos) << msg_;                    \
    } while (0)

const std::string kPipe = std::string(QDIT_TEST_DATA) + "/qwen_image_pipeline";

using testutil::max_abs;
using testutil::max_diff;

// Largest difference in levels, and how many values differ.
std::pair<int, int64_t> image_diff(const Tensor& a, const Tensor& b) {
    EXPECT_EQ(a.shape(), b.shape());
    int worst = 0;
    int64_t off = 0;
    for (int64_t i = 0; i < std::min(a.numel(), b.numel()); ++i) {
        const int d = std::abs(int(a.data<uint8_t>()[i]) - int(b.data<uint8_t>()[i]));
        worst = std::max(worst, d);
        off += d != 0;
    }
    return {worst, off};
}

PipelineOptions options(DType dt, QuantConfig q = {}) {
    PipelineOptions po;
    po.dtype = dt;
    po.transformer_quant = q;
    return po;
}

}  // namespace

TEST(QwenImagePipeline, PackingMatchesDiffusers) {
    SafetensorsFile ref(kPipe + "/reference.safetensors");
    for (const char* name : {"cfg", "nocfg"}) {
        const Tensor unpacked = ref.get(std::string(name) + ".latents"), packed = ref.get(std::string(name) + ".packed_latents");
        EXPECT_EQ(max_diff(pack_qwen_image_latents(unpacked), packed), 0.0) << name;
        EXPECT_EQ(max_diff(unpack_qwen_image_latents(packed, unpacked.size(2), unpacked.size(3)), unpacked), 0.0);
    }
}

TEST(QwenImagePipeline, ScheduleMatchesDiffusers) {
    SafetensorsFile ref(kPipe + "/reference.safetensors");
    nlohmann::json meta = read_json_file(kPipe + "/reference.json");
    const std::string sched_path = kPipe + "/scheduler/scheduler_config.json";
    const FlowMatchConfig sc = FlowMatchConfig::from_json(read_json_file(sched_path), sched_path);
    for (const auto& c : meta["cases"]) {
        const std::string name = c["name"];
        const int64_t tokens = (int64_t(c["width"]) / 16) * (int64_t(c["height"]) / 16);
        FlowMatchEulerScheduler s(sc, qwen_image_default_sigmas(c["steps"]), calculate_shift(tokens, sc));
        const Tensor ts = ref.get(name + ".timesteps"), sg = ref.get(name + ".sigmas");
        ASSERT_EQ(ts.numel(), s.steps());
        ASSERT_EQ(sg.numel(), s.steps() + 1);
        for (int i = 0; i < s.steps(); ++i) EXPECT_EQ(s.timesteps()[size_t(i)], ts.data<float>()[i]) << name << i;
        for (int i = 0; i <= s.steps(); ++i) EXPECT_EQ(s.sigmas()[size_t(i)], sg.data<float>()[i]) << name << i;
    }
}

TEST(QwenImagePipeline, MatchesDiffusersWithInjectedLatents) {
    SafetensorsFile ref(kPipe + "/reference.safetensors");
    nlohmann::json meta = read_json_file(kPipe + "/reference.json");
    QwenImagePipeline pipe(kPipe, options(DType::F32));
    for (const auto& c : meta["cases"]) {
        const std::string name = c["name"];
        SCOPED_TRACE(name);
        const QwenImageGenerateOptions o = testutil::qwen_image_reference_case(meta, c, ref);
        EXPECT_EQ(o.true_cfg(), bool(c["true_cfg"]));

        // fp32 throughout: everything agrees to f32 rounding (≤ 1e-4 × max).
        const Tensor pos = pipe.encode_prompt(o.prompt, o.max_sequence_length),
                     want = ref.get(name + ".prompt_embeds");
        EXPECT_LE(max_diff(pos.view({pos.size(1), pos.size(2)}), want), 1e-4 * max_abs(want));
        if (o.negative_prompt) {
            const Tensor neg = pipe.encode_prompt(*o.negative_prompt, o.max_sequence_length),
                         want_neg = ref.get(name + ".negative_prompt_embeds");
            EXPECT_LE(max_diff(neg.view({neg.size(1), neg.size(2)}), want_neg), 1e-4 * max_abs(want_neg));
        }
        int calls = 0;
        const GenerateResult r = pipe.generate(o, [&](int step, int total, double) {
            EXPECT_EQ(step, ++calls);
            EXPECT_EQ(total, o.steps);
        });
        EXPECT_EQ(calls, o.steps);
        const Tensor final_ref = ref.get(name + ".fp32.final_latents");
        const double d = max_diff(r.latents, final_ref);
        EXPECT_LE(d, 1e-4 * max_abs(final_ref));
        std::printf("%s fp32: final latents max diff %.3g (max |ref| %.3g)\n", name.c_str(), d, max_abs(final_ref));
        const Tensor img_ref = ref.get(name + ".fp32.image");
        ASSERT_EQ(r.image.shape(), img_ref.shape());
        const auto [worst, off] = image_diff(r.image, img_ref);
        EXPECT_LE(worst, 1);
        EXPECT_LE(off * 1000, img_ref.numel());

        // The unpacked form of the same noise gives the same result.
        const GenerateResult u = pipe.generate(testutil::qwen_image_reference_case(meta, c, ref, false));
        EXPECT_EQ(max_diff(u.latents, r.latents), 0.0);
    }
}

// The loop that keeps the latents on the transformer's device (the prompt embeddings moved once, true
// CFG and the step as ops::true_cfg_euler_step) gives the latents of the loop that brought the
// velocity to the host and stepped there, bit for bit, in f32 and bf16, with and without true CFG.
TEST(QwenImagePipeline, DeviceLoopKeepsTheHostLoopsBits) {
    SafetensorsFile ref(kPipe + "/reference.safetensors");
    nlohmann::json meta = read_json_file(kPipe + "/reference.json");
    const PreparedModel m = prepare_model(kPipe + "/transformer", QuantConfig{});
    for (DType dt : {DType::F32, DType::BF16}) {
        QwenImagePipeline pipe(kPipe, options(dt));
        const qwen_image::QwenImageTransformer model(m, dt);
        for (const auto& c : meta["cases"]) {
            SCOPED_TRACE(c["name"].get<std::string>() + " " + dtype_name(dt));
            const QwenImageGenerateOptions o = testutil::qwen_image_reference_case(meta, c, ref);
            const Tensor got = pipe.generate(o).latents, want = testutil::qwen_image_host_loop_latents(pipe, kPipe, o, model);
            ASSERT_EQ(got.shape(), want.shape());
            EXPECT_EQ(std::memcmp(got.raw(), want.raw(), got.nbytes()), 0);
        }
    }
}

// True CFG's one transformer call on a batch of 2 (qwen_image_cfg_batch: the shorter prompt's
// embeddings zero-padded at the end under the text mask) gives each prompt's velocity of its own
// batch-1 call to f32 rounding (measured on the CPU: the same bits), whether the prompt or the
// negative prompt is the longer; the padding matters: without the mask the padded item's velocity
// changes. Embeddings that cannot share a batch are refused.
TEST(QwenImagePipeline, CfgBatchOfTwoGivesTheTwoCallsVelocities) {
    SafetensorsFile ref(kPipe + "/reference.safetensors");
    QwenImagePipeline pipe(kPipe, options(DType::F32));
    const qwen_image::QwenImageTransformer model(prepare_model(kPipe + "/transformer", QuantConfig{}), DType::F32);
    const Tensor x = ref.get("cfg.packed_latents");  // a 64x64 image: 4x4 tokens
    const int64_t L = x.size(1), F = x.size(2);
    const std::array<int64_t, 3> grid{1, 4, 4};
    Tensor x2 = Tensor::empty({2, L, F}, DType::F32), sigma1 = Tensor::empty({1}, DType::F32),
           sigma2 = Tensor::empty({2}, DType::F32);
    for (int64_t b = 0; b < 2; ++b) std::memcpy(x2.data<float>() + b * L * F, x.raw(), x.nbytes());
    sigma1.data<float>()[0] = sigma2.data<float>()[0] = sigma2.data<float>()[1] = 0.6f;
    const std::string fox = "A red fox in the snow, Ultra HD, 4K, cinematic composition.";
    for (const auto& [prompt, negative] : std::vector<std::pair<std::string, std::string>>{{fox, " "}, {" ", fox}}) {
        SCOPED_TRACE("prompt '" + prompt + "', negative prompt '" + negative + "'");
        const Tensor pos = pipe.encode_prompt(prompt, 512), neg = pipe.encode_prompt(negative, 512);
        const int64_t T0 = pos.size(1), T1 = neg.size(1), T = std::max(T0, T1), D = pos.size(2);
        ASSERT_NE(T0, T1);
        const QwenImageCfgBatch text = qwen_image_cfg_batch(pos, neg);
        ASSERT_EQ(text.embeds.shape(), (Shape{2, T, D}));
        ASSERT_EQ(text.mask.shape(), (Shape{2, T}));
        for (int64_t b = 0; b < 2; ++b) {
            const int64_t n = b == 0 ? T0 : T1;
            const Tensor item = text.embeds.view({2 * T, D}).slice_rows(b * T, (b + 1) * T);
            EXPECT_EQ(max_diff(item.slice_rows(0, n), (b == 0 ? pos : neg).view({n, D})), 0.0) << "item " << b;
            if (n < T) EXPECT_EQ(max_abs(item.slice_rows(n, T)), 0.0) << "item " << b << "'s padding";
            for (int64_t k = 0; k < T; ++k) EXPECT_EQ(text.mask.data<uint8_t>()[b * T + k], k < n ? 1 : 0);
        }

        const Tensor v = model.forward(x2, text.embeds, text.mask, sigma2, grid).view({2 * L, F});
        const Tensor vp = model.forward(x, pos, Tensor(), sigma1, grid).view({L, F}),
                     vn = model.forward(x, neg, Tensor(), sigma1, grid).view({L, F});
        const double dp = max_diff(v.slice_rows(0, L), vp), dn = max_diff(v.slice_rows(L, 2 * L), vn);
        std::printf("T %lld/%lld: batch of 2 vs two calls, max diff %.3g / %.3g (max |v| %.3g / %.3g)\n",
                    (long long)T0, (long long)T1, dp, dn, max_abs(vp), max_abs(vn));
        EXPECT_LE(dp, 1e-5 * max_abs(vp));
        EXPECT_LE(dn, 1e-5 * max_abs(vn));
        EXPECT_GT(max_diff(vp, vn), 1e-2 * max_abs(vp)) << "the two prompts give the same velocity";

        const Tensor unmasked = model.forward(x2, text.embeds, Tensor(), sigma2, grid).view({2 * L, F});
        const int64_t padded = T0 < T1 ? 0 : 1;
        const Tensor want = padded == 0 ? vp : vn;
        EXPECT_GT(max_diff(unmasked.slice_rows(padded * L, (padded + 1) * L), want), 1e-3 * max_abs(want))
            << "the mask changes nothing";
    }
    const Tensor pos = pipe.encode_prompt(fox, 512);
    const int64_t D = pos.size(2);
    for (const Tensor& bad : {Tensor::zeros({1, 3, D + 1}, DType::F32), Tensor::zeros({1, 3, D}, DType::BF16),
                              Tensor::zeros({2, 3, D}, DType::F32)})
        EXPECT_ERROR_CONTAINS(qwen_image_cfg_batch(pos, bad), ShapeError, "must be [1, T, D] on the host");
}

TEST(QwenImagePipeline, TrueCfgRunsOnlyAboveOneWithANegativePrompt) {
    SafetensorsFile ref(kPipe + "/reference.safetensors");
    nlohmann::json meta = read_json_file(kPipe + "/reference.json");
    QwenImagePipeline pipe(kPipe, options(DType::F32));
    const nlohmann::json c = meta["cases"][1];  // no negative prompt: no CFG
    ASSERT_FALSE(bool(c["true_cfg"]));
    QwenImageGenerateOptions o = testutil::qwen_image_reference_case(meta, c, ref);
    const GenerateResult plain = pipe.generate(o);
    o.negative_prompt = "blurry";  // a negative prompt, but a scale of 1: still no CFG
    o.true_cfg_scale = 1.0f;
    EXPECT_FALSE(o.true_cfg());
    EXPECT_EQ(max_diff(pipe.generate(o).latents, plain.latents), 0.0);
    o.true_cfg_scale = 1.5f;  // now it runs, and changes the result
    EXPECT_TRUE(o.true_cfg());
    EXPECT_GT(max_diff(pipe.generate(o).latents, plain.latents), 1e-3);
    o.negative_prompt = "";  // an empty negative prompt is still one (diffusers: not None)
    EXPECT_TRUE(o.true_cfg());
}

// bf16: the latents are rounded to bf16 at every step, as diffusers holds them. CPU bf16 matmuls
// and attention round differently from torch's, so the run is compared with a bound: the final
// latents within 2% of max |ref| (measured: 1.1%, two bf16 steps at that magnitude).
TEST(QwenImagePipeline, Bf16StaysNearDiffusers) {
    SafetensorsFile ref(kPipe + "/reference.safetensors");
    nlohmann::json meta = read_json_file(kPipe + "/reference.json");
    QwenImagePipeline pipe(kPipe, options(DType::BF16));
    const nlohmann::json c = meta["cases"][0];
    ASSERT_TRUE(bool(c["bf16"]));
    const GenerateResult r = pipe.generate(testutil::qwen_image_reference_case(meta, c, ref));
    // Every latent value is a bf16 value.
    for (int64_t i = 0; i < r.latents.numel(); ++i) {
        const float v = r.latents.data<float>()[i];
        ASSERT_EQ(bf16_to_f32(f32_to_bf16(v)), v);
    }
    const Tensor want = ref.get("cfg.bf16.final_latents");
    const double d = max_diff(r.latents, want);
    std::printf("cfg bf16: final latents max diff %.3g (max |ref| %.3g)\n", d, max_abs(want));
    EXPECT_LE(d, 0.02 * max_abs(want));
}

// int8 W8A8 on every Linear of the transformer blocks (the default plan) against the fp32
// reference: the int8 error of each step (per-token activation and per-row weight scales, about 1%
// of a 32-wide row's values) stays in the final latents at well under 1% of their range over the 2-3
// steps (measured: 0.40% and 0.19%; image 0.2 and 0.07 levels on average). Bound: 2% of max |ref|
// and a mean image difference of at most 1 level.
TEST(QwenImagePipeline, Int8RunsAndStaysNear) {
    SafetensorsFile ref(kPipe + "/reference.safetensors");
    nlohmann::json meta = read_json_file(kPipe + "/reference.json");
    QuantConfig q;
    q.method = QuantMethod::Int8;
    QwenImagePipeline pipe(kPipe, options(DType::F32, q));
    EXPECT_GT(pipe.transformer_int8_layers(), 0);
    for (const auto& c : meta["cases"]) {
        const std::string name = c["name"];
        const GenerateResult r = pipe.generate(testutil::qwen_image_reference_case(meta, c, ref));
        const Tensor want = ref.get(name + ".fp32.final_latents");
        const double d = max_diff(r.latents, want);
        std::printf("%s int8: final latents max diff %.3g (max |ref| %.3g)\n", name.c_str(), d, max_abs(want));
        EXPECT_LE(d, 0.02 * max_abs(want)) << name;
        const Tensor img = ref.get(name + ".fp32.image");
        double sum = 0;
        for (int64_t i = 0; i < img.numel(); ++i)
            sum += std::abs(int(r.image.data<uint8_t>()[i]) - int(img.data<uint8_t>()[i]));
        std::printf("%s int8: image mean |diff| %.3g levels\n", name.c_str(), sum / double(img.numel()));
        EXPECT_LE(sum / double(img.numel()), 1.0) << name;
    }
}

TEST(QwenImagePipeline, RefusesBadRequestsBeforeLoading) {
    QwenImageGenerateOptions o;
    o.prompt = "x";
    o.width = 40;  // not a multiple of 16
    o.height = 64;
    o.steps = 2;
    EXPECT_ERROR_CONTAINS(QwenImagePipeline(kPipe, options(DType::F32), o), UsageError, "multiples of 16");
    o.width = 64;
    o.max_sequence_length = 1025;
    EXPECT_ERROR_CONTAINS(QwenImagePipeline::check_limits(o), UsageError, "--max-sequence-length");
    o.max_sequence_length = 512;
    o.steps = 0;
    EXPECT_ERROR_CONTAINS(QwenImagePipeline::check_limits(o), UsageError, "--steps");
    o.steps = 2;
    o.true_cfg_scale = std::nanf("");
    EXPECT_ERROR_CONTAINS(QwenImagePipeline::check_limits(o), UsageError, "--true-cfg-scale");
    o.true_cfg_scale = 4.0f;
    o.steps = 1;  // the fixture's scheduler has shift_terminal, which one step cannot meet
    EXPECT_ERROR_CONTAINS(QwenImagePipeline(kPipe, options(DType::F32), o), UsageError,
                          "--steps 1: scheduler_config.json's shift_terminal 0.02");
    o.steps = 2;
    o.latents = Tensor::zeros({1, 16, 6, 8}, DType::F32);  // 64x64 needs [1, 16, 8, 8]
    EXPECT_ERROR_CONTAINS(QwenImagePipeline(kPipe, options(DType::F32), o), ShapeError, "initial latents");
    // A Z-Image folder is not a Qwen-Image one.
    EXPECT_ERROR_CONTAINS(QwenImagePipeline(std::string(QDIT_TEST_DATA) + "/pipeline", options(DType::F32)),
                          ConfigError, "not a QwenImagePipeline");
    EXPECT_EQ(pipeline_class(kPipe), "QwenImagePipeline");
    EXPECT_EQ(pipeline_class(std::string(QDIT_TEST_DATA) + "/pipeline"), "ZImagePipeline");
}

// `qdit generate --model DIR` picks the Qwen-Image pipeline from model_index.json and gives
// diffusers' image for the same latents; the flags of the other pipeline are refused.
TEST(QwenImageGenerate, CliPicksThePipelineAndMatchesDiffusers) {
    SafetensorsFile ref(kPipe + "/reference.safetensors");
    nlohmann::json meta = read_json_file(kPipe + "/reference.json");
    const nlohmann::json c = meta["cases"][0];
    ASSERT_TRUE(bool(c["true_cfg"]));
    const fs::path dir = testutil::fresh_dir("qwen_cli");
    const fs::path latents = dir / "latents.safetensors", out = dir / "out.png";
    write_safetensors(latents.string(), {{"latents", ref.get("cfg.latents")}});
    const std::string common = "generate --model " + kPipe + " --prompt '" + c["prompt"].get<std::string>() +
                               "' --width 64 --height 64 --steps 3 --dtype f32 --latents " + latents.string();
    testutil::CliResult r = testutil::run_qdit(common + " --negative-prompt ' ' --true-cfg-scale 4 -o " + out.string());
    ASSERT_EQ(r.status, 0) << r.err;
    const PngImage img = read_png(out.string());
    ASSERT_EQ(img.width, 64);
    ASSERT_EQ(img.height, 64);
    const Tensor want = ref.get("cfg.fp32.image");
    int worst = 0;
    for (int64_t i = 0; i < want.numel(); ++i)
        worst = std::max(worst, std::abs(int(img.rgb[size_t(i)]) - int(want.data<uint8_t>()[i])));
    EXPECT_LE(worst, 1);
    std::map<std::string, std::string> text(img.text.begin(), img.text.end());
    EXPECT_EQ(text["negative_prompt"], " ");
    EXPECT_EQ(text["true_cfg_scale"], "4");
    EXPECT_EQ(text["steps"], "3");
    EXPECT_NE(r.out.find("true CFG 4"), std::string::npos) << r.out;

    // Z-Image's flags are refused for Qwen-Image and the other way round, before any work.
    const fs::path bad = testutil::fresh_dir("qwen_cli_bad");
    const std::string o = " -o " + (bad / "x.png").string();
    for (const auto& [args, needle] :
         std::vector<std::pair<std::string, std::string>>{
             {common + " --guidance 2" + o, "--guidance"},
             {"generate --model " + kPipe + " --prompt p --width 64 --height 64 --gpus 2" + o, "--gpus 2"},
             {common + " --max-sequence-length 2000" + o, "--max-sequence-length"},
             {"generate --model " + kPipe + " --prompt p --width 72 --height 64" + o, "multiples of 16"},
             {"generate --model " + std::string(QDIT_TEST_DATA) + "/pipeline --prompt p --width 32 --height 32 "
              "--true-cfg-scale 2" + o, "--true-cfg-scale"}}) {
        const testutil::CliResult e = testutil::run_qdit(args);
        EXPECT_NE(e.status, 0) << args;
        EXPECT_EQ(e.err.rfind("error: ", 0), 0u) << args << ": " << e.err;
        EXPECT_NE(e.err.find(needle), std::string::npos) << args << ": " << e.err;
        EXPECT_TRUE(fs::is_empty(bad)) << args;
    }
}

// The built-in tiny Qwen-Image pipeline is written the same every time and is a pipeline folder
// that loads and runs, with and without true CFG, to an image that is not flat.
TEST(QwenImageTinyModel, IsDeterministicAndRuns) {
    const fs::path a = testutil::fresh_dir("qwen_tiny_a") / "m", b = testutil::fresh_dir("qwen_tiny_b") / "m";
    write_tiny_qwen_image(a.string());
    write_tiny_qwen_image(b.string());
    for (const auto& e : fs::recursive_directory_iterator(a)) {
        if (!e.is_regular_file()) continue;
        const fs::path rel = fs::relative(e.path(), a);
        EXPECT_EQ(read_text_file(e.path().string()), read_text_file((b / rel).string())) << rel;
    }
    EXPECT_EQ(pipeline_class(a.string()), "QwenImagePipeline");
    QwenImagePipeline pipe(a.string(), options(DType::F32));
    QwenImageGenerateOptions o;
    o.prompt = "a red fox";
    o.steps = 2;
    o.width = o.height = 32;
    const GenerateResult plain = pipe.generate(o);
    ASSERT_EQ(plain.image.shape(), (Shape{32, 32, 3}));
    o.negative_prompt = " ";
    const GenerateResult cfg = pipe.generate(o);
    EXPECT_GT(image_diff(plain.image, cfg.image).second, 0) << "true CFG changed nothing";
    const uint8_t* px = plain.image.data<uint8_t>();
    const auto [lo, hi] = std::minmax_element(px, px + plain.image.numel());
    EXPECT_GT(int(*hi) - int(*lo), 16) << "a flat image: the random weights give no signal";
    for (int64_t i = 0; i < plain.latents.numel(); ++i) ASSERT_TRUE(std::isfinite(plain.latents.data<float>()[i]));
}

// `qdit generate --pipeline qwen-image` without --model writes the tiny Qwen-Image pipeline into the
// cache and runs it; the default stays the tiny Z-Image one; --pipeline with --model, or an unknown
// name, is refused before any work.
TEST(QwenImageGenerate, BuiltInTinyPipelineFromTheCommandLine) {
    const fs::path cache = testutil::fresh_dir("qwen_tiny_cache"), dir = testutil::fresh_dir("qwen_tiny_cli");
    ASSERT_EQ(setenv("QDIT_CACHE_DIR", cache.c_str(), 1), 0);
    const std::string common = " --prompt 'a red fox' --width 32 --height 32 --steps 2 --seed 5";
    const fs::path q1 = dir / "q1.png", q2 = dir / "q2.png", z = dir / "z.png";
    testutil::CliResult r = testutil::run_qdit("generate --pipeline qwen-image" + common + " -o " + q1.string());
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_NE(r.err.find("built-in tiny Qwen-Image pipeline"), std::string::npos) << r.err;
    EXPECT_EQ(pipeline_class((cache / "tiny-qwen-image-v1").string()), "QwenImagePipeline");
    EXPECT_NE(r.out.find("true CFG off"), std::string::npos) << r.out;
    r = testutil::run_qdit("generate --pipeline qwen-image" + common + " -o " + q2.string());
    ASSERT_EQ(r.status, 0) << r.err;
    const PngImage a = read_png(q1.string()), b = read_png(q2.string());
    EXPECT_EQ(a.width, 32);
    EXPECT_EQ(a.rgb, b.rgb) << "the same seed gave another image";
    std::map<std::string, std::string> text(a.text.begin(), a.text.end());
    EXPECT_EQ(text["seed"], "5");
    EXPECT_EQ(text["model"], (cache / "tiny-qwen-image-v1").string());
    EXPECT_EQ(text.count("guidance"), 0u);

    r = testutil::run_qdit("generate" + common + " -o " + z.string());
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_NE(r.err.find("built-in tiny Z-Image pipeline"), std::string::npos) << r.err;
    EXPECT_EQ(pipeline_class((cache / "tiny-zimage-v1").string()), "ZImagePipeline");

    const fs::path bad = testutil::fresh_dir("qwen_tiny_bad");
    for (const auto& [args, needle] : std::vector<std::pair<std::string, std::string>>{
             {"generate --pipeline flux" + common, "--pipeline flux: allowed values are zimage, qwen-image"},
             {"generate --pipeline qwen-image --model " + kPipe + common, "cannot go with --model"},
             {"generate --pipeline qwen-image --guidance 2" + common, "--guidance"}}) {
        const testutil::CliResult e = testutil::run_qdit(args + " -o " + (bad / "x.png").string());
        EXPECT_EQ(e.status, 2) << args;
        EXPECT_EQ(e.err.rfind("error: ", 0), 0u) << args << ": " << e.err;
        EXPECT_NE(e.err.find(needle), std::string::npos) << args << ": " << e.err;
        EXPECT_TRUE(fs::is_empty(bad)) << args;
    }
    unsetenv("QDIT_CACHE_DIR");
}

// offload_text_encoder: the encoder is loaded for each encoding and freed right after; the transformer
// comes after it. The image is the same, and a pipeline used again loads the encoder again.
TEST(QwenImagePipeline, OffloadTextEncoderGivesTheSameImage) {
    QwenImageGenerateOptions o;
    o.prompt = "a red fox";
    o.negative_prompt = " ";
    o.steps = 2;
    o.width = o.height = 64;
    PipelineOptions off = options(DType::F32);
    off.offload_text_encoder = true;
    QwenImagePipeline resident(kPipe, options(DType::F32)), offloaded(kPipe, off);
    EXPECT_TRUE(resident.text_encoder_loaded());
    EXPECT_FALSE(offloaded.text_encoder_loaded());
    const GenerateResult want = resident.generate(o);
    EXPECT_EQ(want.load_seconds, 0.0);
    for (int run = 0; run < 2; ++run) {
        const GenerateResult got = offloaded.generate(o);
        EXPECT_FALSE(offloaded.text_encoder_loaded()) << "run " << run;
        EXPECT_GT(got.load_seconds, 0.0) << "run " << run;
        EXPECT_EQ(max_diff(got.latents, want.latents), 0.0) << "run " << run;
        EXPECT_EQ(image_diff(got.image, want.image).first, 0) << "run " << run;
    }
    EXPECT_TRUE(resident.text_encoder_loaded());
}

// `--offload text-encoder` runs both pipelines on the CPU (where it frees host memory) with the same
// image as without, and Qwen-Image with `--offload text-encoder,modulation` too (the modulation
// weights are in host memory already), and both with `--offload none`; Z-Image refuses
// `modulation`, and an unknown value, or none in a list, is refused.
TEST(QwenImageGenerate, OffloadFlag) {
    const fs::path dir = testutil::fresh_dir("qwen_offload");
    const std::vector<std::string> models = {kPipe, std::string(QDIT_TEST_DATA) + "/pipeline"};
    for (const std::string& m : models) {
        const std::string common = "generate --model " + m + " --prompt 'a red fox' --width 32 --height 32 --steps 2 "
                                   "--device cpu";
        const fs::path a = dir / "a.png", b = dir / "b.png";
        testutil::CliResult r = testutil::run_qdit(common + " -o " + a.string());
        ASSERT_EQ(r.status, 0) << r.err;
        r = testutil::run_qdit(common + (m == kPipe ? " --offload text-encoder,modulation" : " --offload text-encoder") +
                               " -o " + b.string());
        ASSERT_EQ(r.status, 0) << r.err;
        EXPECT_NE(r.out.find("peak memory"), std::string::npos) << r.out;
        EXPECT_EQ(r.out.find("GPU"), std::string::npos) << "no GPU line on the CPU: " << r.out;
        EXPECT_EQ(read_png(a.string()).rgb, read_png(b.string()).rgb) << m;
        r = testutil::run_qdit(common + " --offload none -o " + b.string());
        ASSERT_EQ(r.status, 0) << r.err;
        EXPECT_EQ(read_png(a.string()).rgb, read_png(b.string()).rgb) << m;
        fs::remove(a);
        fs::remove(b);
    }
    const testutil::CliResult e = testutil::run_qdit("generate --model " + kPipe +
                                                     " --prompt p --width 32 --height 32 --offload vae -o " +
                                                     (dir / "x.png").string());
    EXPECT_EQ(e.status, 2);
    EXPECT_NE(e.err.find("--offload vae: 'vae' is not one of text-encoder, modulation"), std::string::npos) << e.err;
    const testutil::CliResult n = testutil::run_qdit("generate --model " + kPipe +
                                                     " --prompt p --width 32 --height 32 --offload none,modulation -o " +
                                                     (dir / "x.png").string());
    EXPECT_EQ(n.status, 2);
    EXPECT_NE(n.err.find("'none' is not one of text-encoder, modulation (or none alone)"), std::string::npos) << n.err;
    const testutil::CliResult z = testutil::run_qdit("generate --model " + std::string(QDIT_TEST_DATA) +
                                                     "/pipeline --prompt p --width 32 --height 32 --device cpu "
                                                     "--offload modulation -o " + (dir / "z.png").string());
    EXPECT_EQ(z.status, 2);
    EXPECT_NE(z.err.find("--offload modulation: Qwen-Image's"), std::string::npos) << z.err;
    EXPECT_TRUE(fs::is_empty(dir));
}

// --fp8-attention runs on a Hopper or Blackwell GPU only: on the CPU both pipelines refuse it, naming
// the flag, before any work (generate and serve).
TEST(QwenImageGenerate, Fp8AttentionRefusedOnCpu) {
    const fs::path dir = testutil::fresh_dir("qwen_fp8_attention");
    for (const std::string& m : {kPipe, std::string(QDIT_TEST_DATA) + "/pipeline"}) {
        const testutil::CliResult e = testutil::run_qdit("generate --model " + m +
                                                         " --prompt p --width 32 --height 32 --device cpu "
                                                         "--fp8-attention -o " + (dir / "x.png").string());
        EXPECT_EQ(e.status, 2) << m;
        EXPECT_NE(e.err.find("--fp8-attention runs on a GPU"), std::string::npos) << e.err;
    }
    const testutil::CliResult s =
        testutil::run_qdit("serve --model " + kPipe + " --device cpu --fp8-attention --port 1");
    EXPECT_EQ(s.status, 2);
    EXPECT_NE(s.err.find("--fp8-attention runs on a GPU"), std::string::npos) << s.err;
    EXPECT_TRUE(fs::is_empty(dir));
}

// --vae-tiling decodes in tiles (AutoencoderKLQwenImage::decode_tiled, checked against diffusers in
// test_qwen_image_vae): an image within one 256-pixel tile is the untiled one, a wider one is decoded in tiles (so it
// differs); Z-Image refuses the flag before any work.
TEST(QwenImageGenerate, VaeTilingFlag) {
    const fs::path dir = testutil::fresh_dir("qwen_tiling");
    auto run = [&](const std::string& size, bool tiling) {
        const fs::path out = dir / "x.png";
        const testutil::CliResult r = testutil::run_qdit("generate --model " + kPipe + " --prompt 'a red fox' " + size +
                                                         " --steps 2 --device cpu" +
                                                         (tiling ? " --vae-tiling" : "") + " -o " + out.string());
        EXPECT_EQ(r.status, 0) << r.err;
        const PngImage img = read_png(out.string());
        fs::remove(out);
        return img.rgb;
    };
    EXPECT_EQ(run("--width 64 --height 64", true), run("--width 64 --height 64", false));
    EXPECT_NE(run("--width 320 --height 32", true), run("--width 320 --height 32", false));
    const testutil::CliResult e = testutil::run_qdit("generate --model " + std::string(QDIT_TEST_DATA) +
                                                     "/pipeline --prompt p --width 32 --height 32 --vae-tiling -o " +
                                                     (dir / "z.png").string());
    EXPECT_EQ(e.status, 2);
    EXPECT_NE(e.err.find("--vae-tiling"), std::string::npos) << e.err;
    EXPECT_TRUE(fs::is_empty(dir));
}
