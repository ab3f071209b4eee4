// The Z-Image pipeline against diffusers' ZImagePipeline on a tiny pipeline
// folder made of the committed component fixtures (tests/data/pipeline/,
// scripts/fixtures/make_pipeline_fixtures.py), plus the generate command's
// error handling.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>

#include <fmt/format.h>

#include "io/files.h"
#include "io/png.h"
#include "io/safetensors.h"
#include "pipeline/tiny_model.h"
#include "pipeline/zimage_pipeline.h"
#include "cli_util.h"
#include "tiny_model.h"
#include "pipeline_reference.h"
#include "error_stats.h"

namespace fs = std::filesystem;
using namespace qdit;

namespace {

const std::string kPipe = std::string(QDIT_TEST_DATA) + "/pipeline";

using testutil::max_abs;
using testutil::max_diff;

}  // namespace

TEST(ZImagePipeline, MatchesDiffusersWithTheReferenceNoise) {
    SafetensorsFile ref(kPipe + "/reference.safetensors");
    nlohmann::json meta = read_json_file(kPipe + "/reference.json");
    ZImagePipeline pipe(kPipe, PipelineOptions{DType::F32, {}, {}});
    for (const auto& c : meta["cases"]) {
        const std::string name = c["name"];
        SCOPED_TRACE(name);
        const GenerateOptions o = testutil::reference_case(meta, c, ref);

        // fp32 throughout: everything agrees to f32 rounding (≤ 1e-4 × max).
        Tensor pos = pipe.encode_prompt(o.prompt, o.max_sequence_length);
        Tensor want = ref.get(name + ".prompt_embeds");
        EXPECT_LE(max_diff(pos, want), 1e-4 * max_abs(want));
        if (o.guidance > 0) {
            Tensor neg = pipe.encode_prompt(o.negative_prompt, o.max_sequence_length);
            Tensor want_neg = ref.get(name + ".negative_prompt_embeds");
            EXPECT_LE(max_diff(neg, want_neg), 1e-4 * max_abs(want_neg));
        }
        int calls = 0;
        GenerateResult r = pipe.generate(o, [&](int step, int total, double) {
            EXPECT_EQ(step, ++calls);
            EXPECT_EQ(total, o.steps);
        });
        EXPECT_EQ(calls, o.steps);
        Tensor final_ref = ref.get(name + ".final_latents");
        EXPECT_LE(max_diff(r.latents, final_ref), 1e-4 * max_abs(final_ref));
        // The 8-bit image may differ only where a value sits on a rounding
        // boundary: at most one level, in at most 0.1% of the values.
        Tensor img_ref = ref.get(name + ".image");
        ASSERT_EQ(r.image.shape(), img_ref.shape());
        int64_t off = 0;
        for (int64_t i = 0; i < img_ref.numel(); ++i) {
            int d = std::abs(int(r.image.data<uint8_t>()[i]) - int(img_ref.data<uint8_t>()[i]));
            EXPECT_LE(d, 1);
            off += d != 0;
        }
        EXPECT_LE(off * 1000, img_ref.numel());
    }
}

// The loop on the transformer's token layout (patchified once, the guidance and the Euler step as
// ops::euler_step) gives the latents of the loop that patchified and stepped on the host every
// step, bit for bit, in f32 and bf16, with and without guidance.
TEST(ZImagePipeline, TokenLoopKeepsTheHostLoopsBits) {
    SafetensorsFile ref(kPipe + "/reference.safetensors");
    nlohmann::json meta = read_json_file(kPipe + "/reference.json");
    const PreparedModel m = prepare_model(kPipe + "/transformer", QuantConfig{});
    for (DType dt : {DType::F32, DType::BF16}) {
        ZImagePipeline pipe(kPipe, PipelineOptions{dt, {}, {}});
        const zimage::ZImageTransformer model(m, dt);
        for (const auto& c : meta["cases"]) {
            SCOPED_TRACE(fmt::format("{} {}", c["name"].get<std::string>(), dtype_name(dt)));
            const GenerateOptions o = testutil::reference_case(meta, c, ref);
            const Tensor got = pipe.generate(o).latents, want = testutil::host_loop_latents(pipe, kPipe, o, model);
            ASSERT_EQ(got.shape(), want.shape());
            EXPECT_EQ(std::memcmp(got.raw(), want.raw(), got.nbytes()), 0);
        }
    }
}

TEST(ZImagePipeline, SameSeedSameImageAndInt8Runs) {
    ZImagePipeline f32(kPipe, PipelineOptions{DType::F32, {}, {}});
    GenerateOptions o;
    o.prompt = "a lighthouse";
    o.steps = 2;
    o.width = 32;
    o.height = 32;
    o.seed = 7;
    Tensor a = f32.generate(o).image, b = f32.generate(o).image;
    EXPECT_EQ(max_diff(a, b), 0.0);
    o.seed = 8;
    EXPECT_GT(max_diff(a, f32.generate(o).image), 0.0);

    QuantConfig q{QuantMethod::Int8, {}, "dynamic"};
    ZImagePipeline i8(kPipe, PipelineOptions{DType::BF16, q, q});
    EXPECT_GT(i8.transformer_int8_layers(), 0);
    EXPECT_GT(i8.text_encoder_int8_layers(), 0);
    GenerateResult r = i8.generate(o);
    EXPECT_EQ(r.image.shape(), (Shape{32, 32, 3}));
}

using testutil::CliResult;
using testutil::pipeline_copy;
using testutil::run_qdit;

// A tokenizer folder that pads on the left gives the same prompt embeddings up to float rounding, as
// in transformers: Qwen3 places each token at its index, so the prompt's tokens sit further along
// (max_length − their count), and RoPE is relative and the padding masked. transformers' own
// left-vs-right difference on this fixture's encoder (5.25, fp32) is 1.4e-6 of max 4.8.
TEST(ZImagePipeline, LeftPaddingTokenizerGivesTheSameEmbeddings) {
    const fs::path pipe = pipeline_copy("zimage_left_padding");
    testutil::edit_json(testutil::own_component(pipe, "tokenizer") / "tokenizer_config.json",
                        [](nlohmann::json& j) { j["padding_side"] = "left"; });
    const ZImagePipeline right(kPipe, PipelineOptions{DType::F32, {}, {}}),
        left(pipe.string(), PipelineOptions{DType::F32, {}, {}});
    const Tensor a = right.encode_prompt("a lighthouse at dusk", 64), b = left.encode_prompt("a lighthouse at dusk", 64);
    ASSERT_EQ(a.shape(), b.shape());
    EXPECT_GT(max_diff(a, b), 0.0);  // the positions did move
    EXPECT_LE(max_diff(a, b), 1e-5 * max_abs(a));
    fs::remove_all(pipe);
}

TEST(Generate, WritesAPngWithItsSettings) {
    fs::path out = testutil::fresh_dir("gen_ok") / "out.png";
    CliResult r = run_qdit("generate --model " + kPipe + " --prompt 'a cat' --width 32 --height 48 --steps 2 "
                 "--seed 3 --quantization int8 -o " + out.string());
    ASSERT_EQ(r.status, 0) << r.err;
    PngImage img = read_png(out.string());
    EXPECT_EQ(img.width, 32);
    EXPECT_EQ(img.height, 48);
    std::map<std::string, std::string> text(img.text.begin(), img.text.end());
    EXPECT_EQ(text["prompt"], "a cat");
    EXPECT_EQ(text["seed"], "3");
    EXPECT_EQ(text["steps"], "2");
    EXPECT_EQ(text["quantization"], "int8");
    EXPECT_EQ(text["device"], "cpu");
}

// --verbose: the report's lines, one per denoising step, before the unchanged summary.
TEST(Generate, VerboseSaysWhereTheTimeWent) {
    fs::path out = testutil::fresh_dir("gen_verbose") / "out.png";
    CliResult r = run_qdit("generate --model " + kPipe + " --prompt 'a cat' --width 32 --height 32 --steps 3 "
                           "--verbose -o " + out.string());
    ASSERT_EQ(r.status, 0) << r.err;
    const size_t load = r.out.find("\nload: "), text = r.out.find("\ntext encoder: "),
                 vae = r.out.find("\nvae: "), summary = r.out.find("\ntime: load ");
    for (size_t at : {load, text, vae, summary}) ASSERT_NE(at, std::string::npos) << r.out;
    EXPECT_LT(load, text);
    EXPECT_LT(vae, summary);
    for (int step = 1; step <= 3; ++step)
        EXPECT_NE(r.out.find(fmt::format("\ndenoise step {}: ", step)), std::string::npos) << r.out;
    EXPECT_EQ(r.out.find("denoise step 4"), std::string::npos) << r.out;
    // Nothing of the GPU load path on the CPU.
    EXPECT_EQ(r.out.find("GPU weights"), std::string::npos) << r.out;
    r = run_qdit("generate --model " + kPipe + " --prompt 'a cat' --width 32 --height 32 --steps 1 -o " + out.string());
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(r.out.find("denoise step"), std::string::npos) << r.out;  // only with --verbose
    EXPECT_NE(r.out.find("time: load "), std::string::npos) << r.out;
}

TEST(Generate, BadInputsGiveOneErrorLineAndNoFile) {
    fs::path outdir = testutil::fresh_dir("gen_bad");
    const std::string out = (outdir / "x.png").string();
    const std::string base = " --prompt p --width 32 --height 32 --steps 1 -o " + out;

    fs::path no_vae = pipeline_copy("gen_no_vae");
    fs::remove(no_vae / "vae");
    fs::path bad_sched = pipeline_copy("gen_bad_sched");
    write_file_atomic((bad_sched / "scheduler" / "scheduler_config.json").string(),
                      R"({"_class_name": "DPMSolverMultistepScheduler"})");
    // model_index.json names the scheduler class diffusers builds, and the pipeline.
    auto edit_index = [](const fs::path& dir, const char* key, const nlohmann::json& value) {
        nlohmann::json j = read_json_file((dir / "model_index.json").string());
        j[key] = value;
        write_file_atomic((dir / "model_index.json").string(), j.dump(1));
    };
    fs::path heun = pipeline_copy("gen_heun");
    edit_index(heun, "scheduler", {"diffusers", "FlowMatchHeunDiscreteScheduler"});
    fs::path img2img = pipeline_copy("gen_img2img");
    edit_index(img2img, "_class_name", "QwenImageImg2ImgPipeline");
    fs::path corrupt = pipeline_copy("gen_corrupt");
    fs::remove(corrupt / "vae");
    fs::create_directory(corrupt / "vae");
    fs::copy_file(fs::path(kPipe) / "vae" / "config.json", corrupt / "vae" / "config.json");
    write_file_atomic((corrupt / "vae" / "diffusion_pytorch_model.safetensors").string(), "garbage!!");

    const std::vector<std::pair<std::string, std::string>> cases = {
        {"generate --model /no/such/model" + base, "/no/such/model"},
        {"generate --model " + no_vae.string() + base, "vae"},
        {"generate --model " + bad_sched.string() + base, "DPMSolverMultistepScheduler"},
        {"generate --model " + corrupt.string() + base, "diffusion_pytorch_model.safetensors"},
        {"generate --model " + heun.string() + base, "model_index.json: field 'scheduler' names FlowMatchHeun"},
        {"generate --model " + img2img.string() + base, "'QwenImageImg2ImgPipeline' is not supported"},
        {"generate --model " + kPipe + " --prompt p --width 36 --height 32 -o " + out, "multiple"},
        {"generate --model " + kPipe + " --prompt p --width 32 --height 32 --steps 0 -o " + out, "steps"},
        {"generate --model " + kPipe + " --prompt p --width 32 --height 32 -o /no/such/dir/x.png", "/no/such/dir"},
        {"generate --model " + kPipe + " --prompt p --width 32 --height 32 --dtype f16 -o " + out, "f16"},
        {"generate --model " + kPipe + " --prompt p --width 32 --height 32 --device gpu -o " + out, "gpu"},
        {"generate --model " + kPipe + " --prompt p --width 32 --height 32 --device cuda --dtype f32 -o " + out,
         "bf16"},
        {"generate --model " + kPipe + " --prompt p --width 32 --height 32 --gpus 0 -o " + out, "--gpus 0"},
        {"generate --model " + kPipe + " --prompt p --width 32 --height 32 --gpus 2 --device cpu -o " + out,
         "--gpus 2"},
        {"generate --model " + kPipe + " --prompt p --width 32 --height 32 --gpus 2 --device cuda:1 -o " + out,
         "CUDA_VISIBLE_DEVICES"},
        {"generate --model " + kPipe + " --prompt p --width 32 --height 32 --gpus 2 --parallel pipeline -o " + out,
         "--parallel pipeline"},
    };
    for (const auto& [args, needle] : cases) {
        CliResult r = run_qdit(args);
        EXPECT_NE(r.status, 0) << args;
        EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << args << ": " << r.err;
        EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << args << ": " << r.err;
        EXPECT_NE(r.err.find(needle), std::string::npos) << args << ": " << r.err;
        EXPECT_TRUE(fs::is_empty(outdir)) << args;
    }
}

// Without a GPU (or without the CUDA backend) --device cuda fails with one error line that says
// so, and writes nothing.
TEST(Generate, DeviceCudaWithoutAGpuSaysSo) {
    fs::path outdir = testutil::fresh_dir("gen_cuda");
    const std::string out = (outdir / "x.png").string();
    CliResult r = run_qdit("generate --model " + kPipe + " --prompt p --width 32 --height 32 --steps 1 --device cuda -o " +
                     out);
    if (r.status == 0) GTEST_SKIP() << "a CUDA device is here: --device cuda ran";
    EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_NE(r.err.find("CUDA"), std::string::npos) << r.err;
    EXPECT_TRUE(fs::is_empty(outdir));
}

// --gpus 2 where two GPUs, NCCL or the CUDA backend are missing fails with one error line that
// names what is missing, and writes nothing.
TEST(Generate, GpusWithoutTheGpusSaysSo) {
    fs::path outdir = testutil::fresh_dir("gen_gpus");
    const std::string out = (outdir / "x.png").string();
    CliResult r = run_qdit("generate --model " + kPipe + " --prompt p --width 32 --height 32 --steps 1 --gpus 2 -o " + out);
    if (r.status == 0) GTEST_SKIP() << "two CUDA devices and NCCL are here: --gpus 2 ran";
    EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_TRUE(r.err.find("CUDA") != std::string::npos || r.err.find("NCCL") != std::string::npos) << r.err;
    EXPECT_TRUE(fs::is_empty(outdir));
}

TEST(Generate, BuiltInTinyModelIsDeterministic) {
    fs::path a = testutil::fresh_dir("tiny_a") / "m", b = testutil::fresh_dir("tiny_b") / "m";
    write_tiny_zimage(a.string());
    write_tiny_zimage(b.string());
    for (auto& e : fs::recursive_directory_iterator(a)) {
        if (!e.is_regular_file()) continue;
        fs::path rel = fs::relative(e.path(), a);
        EXPECT_EQ(read_text_file(e.path().string()), read_text_file((b / rel).string())) << rel;
    }
    // It is a valid pipeline folder.
    ZImagePipeline pipe(a.string(), PipelineOptions{});
    GenerateOptions o;
    o.prompt = "x";
    o.steps = 1;
    o.width = o.height = 32;
    EXPECT_EQ(pipe.generate(o).image.shape(), (Shape{32, 32, 3}));
}
