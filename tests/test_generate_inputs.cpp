// `qdit generate` checks its inputs (sizes, steps, sequence length, latents
// file, output path, prompt length against the RoPE table, memory) before
// any weight is read: each case runs on a pipeline whose VAE weights, the
// first ones loaded, are garbage, so a refusal after a weight read would name
// that file instead. Each gives one error line, the exit status, and no file.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "io/png.h"
#include "io/safetensors.h"
#include "models/vae/autoencoder_kl.h"
#include "pipeline/zimage_pipeline.h"
#include "models/loader.h"
#include "tests/expect_error.h"
#include "cli_util.h"

namespace fs = std::filesystem;
using namespace qdit;
using nlohmann::json;
using testutil::CliResult;
using testutil::run_qdit;

namespace {

const char* kWeightFile = "diffusion_pytorch_model.safetensors";

// A prompt far longer than 32 tokens.
std::string long_prompt() {
    std::string p;
    for (int i = 0; i < 40; ++i) p += "a red fox in the deep snow ";
    return p;
}

struct Case {
    std::string args;  // after "generate --model DIR"
    int status;
    std::vector<std::string> needles;
};

void expect_refused(const fs::path& model, const fs::path& outdir, const Case& c) {
    const std::string cmd = "generate --model " + model.string() + " " + c.args;
    CliResult r = run_qdit(cmd);
    EXPECT_EQ(r.status, c.status) << cmd << ": " << r.err;
    EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << cmd << ": " << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << cmd << ": " << r.err;
    EXPECT_EQ(r.err.find(kWeightFile), std::string::npos) << cmd << ": a weight was read: " << r.err;
    for (const std::string& n : c.needles) EXPECT_NE(r.err.find(n), std::string::npos) << cmd << ": " << r.err;
    std::vector<std::string> left;
    for (const auto& e : fs::directory_iterator(outdir))
        if (e.is_regular_file() &&
            (e.path().extension() == ".png" || e.path().string().find(".tmp-") != std::string::npos))
            left.push_back(e.path().string());
    EXPECT_TRUE(left.empty()) << cmd << ": left " << left.front();
}

}  // namespace

// The broken pipeline does fail once a weight is read: the control for every
// "refused before any weight" case below.
TEST(GenerateInputs, TheBrokenPipelineFailsOnItsFirstWeight) {
    const fs::path bad = testutil::pipeline_with_unreadable_weights("in_control");
    const fs::path out = testutil::fresh_dir("in_control_out") / "x.png";
    CliResult r = run_qdit("generate --model " + bad.string() + " --prompt p --width 32 --height 32 --steps 1 -o " +
                           out.string());
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.err.find((bad / "vae" / kWeightFile).string()), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(out));
}

TEST(GenerateInputs, NumbersAreRefusedBeforeAnyWeight) {
    const fs::path bad = testutil::pipeline_with_unreadable_weights("in_numbers");
    const fs::path outdir = testutil::fresh_dir("in_numbers_out");
    const std::string o = " --prompt p -o " + (outdir / "x.png").string();
    const std::string config = (bad / "transformer" / "config.json").string();
    const Case cases[] = {
        {"--width 32 --height 32 --steps 100000" + o, 2, {"--steps must be between 1 and 1000 (got 100000)"}},
        {"--width 32 --height 32 --steps 0" + o, 2, {"--steps must be between 1 and 1000 (got 0)"}},
        // The test pipeline's VAE scales by 4 and its transformer patches by 2.
        {"--width 36 --height 32" + o, 2, {"multiples of 8 (the VAE's scale 4 x the transformer's patch 2; got 36x32)"}},
        {"--width 32 --height 20000" + o, 2, {"--width and --height must be between 1 and 16384 (got 32x20000)"}},
        {"--width -16 --height 32" + o, 2, {"between 1 and 16384"}},
        // Within 16384 but past the RoPE table of the test transformer (axes_lens [1536, 512, 512]).
        {"--width 4104 --height 32" + o, 2, {"--width 4104 makes 513 image tokens per row", "axes_lens[2] = 512 in " + config, "at most 4096 pixels"}},
        {"--width 32 --height 4104" + o, 2, {"--height 4104", "axes_lens[1] = 512 in " + config}},
        {"--width 32 --height 32 --max-sequence-length 0" + o, 2, {"--max-sequence-length must be between 1 and 4096"}},
        {"--width 32 --height 32 --max-sequence-length 5000" + o, 2, {"(got 5000)"}},
        {"--width 32 --height 32 --guidance -1" + o, 2, {"--guidance must be >= 0"}},
        {"--width 32 --height 32 --steps 2.5" + o, 2, {"--steps"}},
    };
    for (const Case& c : cases) expect_refused(bad, outdir, c);
}

TEST(GenerateInputs, LatentsFileIsCheckedBeforeAnyWeight) {
    const fs::path bad = testutil::pipeline_with_unreadable_weights("in_latents");
    const fs::path outdir = testutil::fresh_dir("in_latents_out"), files = testutil::fresh_dir("in_latents_files");
    const std::string o = " --prompt p --width 32 --height 32 -o " + (outdir / "x.png").string();
    const fs::path shape = files / "shape.safetensors", ints = files / "ints.safetensors",
                   two = files / "two.safetensors", garbage = files / "garbage.safetensors";
    write_safetensors(shape.string(), {{"latents", Tensor::zeros({1, 16, 2, 2}, DType::F32)}});
    write_safetensors(ints.string(), {{"latents", Tensor::zeros({1, 16, 8, 8}, DType::I32)}});
    write_safetensors(two.string(), {{"a", Tensor::zeros({1, 16, 8, 8}, DType::F32)},
                                     {"b", Tensor::zeros({1, 16, 8, 8}, DType::F32)}});
    write_file_atomic(garbage.string(), "not a safetensors file");
    const Case cases[] = {
        {"--latents " + (files / "missing.safetensors").string() + o, 1, {(files / "missing.safetensors").string()}},
        {"--latents " + garbage.string() + o, 1, {garbage.string()}},
        {"--latents " + two.string() + o, 1, {"holds 2 tensors: name the initial noise 'latents'"}},
        {"--latents " + ints.string() + o, 1, {"the initial latents are I32; they must be floating point"}},
        {"--latents " + shape.string() + o, 1, {"the initial latents have shape [1, 16, 2, 2], but 32x32 needs [1, 16, 8, 8]"}},
    };
    for (const Case& c : cases) expect_refused(bad, outdir, c);
}

TEST(GenerateInputs, OutputPathIsCheckedBeforeAnyWeight) {
    const fs::path bad = testutil::pipeline_with_unreadable_weights("in_output");
    const fs::path outdir = testutil::fresh_dir("in_output_out");
    const std::string args = "--prompt p --width 32 --height 32 -o ";
    fs::create_directory(outdir / "folder.png");
    write_file_atomic((outdir / "file").string(), "x");
    std::vector<Case> cases = {
        {args + outdir.string(), 1, {outdir.string() + ": it is a folder"}},
        {args + (outdir / "folder.png").string(), 1, {(outdir / "folder.png").string() + ": it is a folder"}},
        {args + (outdir / "file" / "x.png").string(), 1, {"folder " + (outdir / "file").string() + " does not exist"}},
        {args + "/no/such/dir/x.png", 1, {"folder /no/such/dir does not exist"}},
        {args + (outdir / "x.jpg").string(), 2, {"the output must be a .png file"}},
    };
    const fs::path locked = outdir / "locked";
    fs::create_directory(locked);
    fs::permissions(locked, fs::perms::owner_read | fs::perms::owner_exec);
    if (::access(locked.c_str(), W_OK) != 0)  // a user the permissions apply to (not root)
        cases.push_back({args + (locked / "x.png").string(), 1, {"folder " + locked.string() + " is not writable"}});
    for (const Case& c : cases) expect_refused(bad, outdir, c);
    EXPECT_TRUE(fs::is_empty(outdir / "folder.png"));
    fs::permissions(locked, fs::perms::owner_all);
}

// A prompt past the RoPE table names axes_lens[0] and --max-sequence-length,
// which then makes it fit.
TEST(GenerateInputs, PromptLongerThanTheRopeTable) {
    const fs::path bad = testutil::pipeline_with_unreadable_weights("in_prompt");
    testutil::edit_json(testutil::own_component(bad, "transformer") / "config.json",
                        [](json& j) { j["axes_lens"][0] = 64; });  // captions of up to 32 tokens
    const fs::path outdir = testutil::fresh_dir("in_prompt_out");
    const std::string size = " --width 32 --height 32 --steps 1 -o " + (outdir / "x.png").string();
    const std::string config = (bad / "transformer" / "config.json").string();
    const Case cases[] = {
        {"--prompt '" + long_prompt() + "'" + size, 2,
         {"the prompt is ", "more than the 32 the transformer's RoPE table allows (axes_lens[0] = 64 in " + config,
          "--max-sequence-length 32"}},
        {"--prompt p --guidance 2 --negative-prompt '" + long_prompt() + "'" + size, 2,
         {"the negative prompt is ", "axes_lens[0] = 64"}},
    };
    for (const Case& c : cases) expect_refused(bad, outdir, c);
    // The max-sequence-length default (512) exceeds this table; an explicit 32 cuts the prompt to fit.
    const fs::path good = testutil::pipeline_copy("in_prompt_good");
    testutil::edit_json(testutil::own_component(good, "transformer") / "config.json",
                        [](json& j) { j["axes_lens"][0] = 64; });
    CliResult r = run_qdit("generate --model " + good.string() + " --prompt '" + long_prompt() +
                           "' --max-sequence-length 32" + size);
    EXPECT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(read_png((outdir / "x.png").string()).width, 32);
    EXPECT_NE(r.err.find("warning: the prompt is "), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("tokens after the chat template; only the first 32 are used (--max-sequence-length)"),
              std::string::npos)
        << r.err;
}

// Weights that need more memory than the budget are refused before loading,
// with both sizes; int8 lowers the need.
TEST(GenerateInputs, MemoryNeedAboveTheBudgetIsRefusedBeforeLoading) {
    const fs::path bad = testutil::pipeline_with_unreadable_weights("in_memory");
    PipelineOptions po;  // bf16
    uint64_t need = 0;
    for (const char* c : {"text_encoder", "transformer"})
        need += uint64_t(prepare_model((bad / c).string(), {}).spec.parameter_count()) * 2;
    const auto vae_config = vae::Config::from_json(read_json_file((bad / "vae" / "config.json").string()), "vae");
    for (const ParamSpec& p : vae::decoder_params(vae_config)) need += uint64_t(shape_numel(p.shape)) * 2;

    po.memory_budget = need - 1;
    std::string e = testutil::error_of<ResourceError>([&] { ZImagePipeline(bad.string(), po); });
    EXPECT_NE(e.find("the weights of " + bad.string()), std::string::npos) << e;
    EXPECT_NE(e.find("(" + std::to_string(need) + " bytes), more than the memory budget"), std::string::npos) << e;
    EXPECT_NE(e.find("(" + std::to_string(need - 1) + " bytes)"), std::string::npos) << e;

    // Within budget the load goes on, to the broken weights.
    po.memory_budget = need;
    e = testutil::error_of<Error>([&] { ZImagePipeline(bad.string(), po); });
    EXPECT_NE(e.find(kWeightFile), std::string::npos) << e;
    po.transformer_quant.method = QuantMethod::Int8;  // int8 weights fit a budget bf16 ones do not
    po.memory_budget = need - 1;
    e = testutil::error_of<Error>([&] { ZImagePipeline(bad.string(), po); });
    EXPECT_NE(e.find(kWeightFile), std::string::npos) << e;
}

TEST(GenerateInputs, ThePlannedRequestIsCheckedThroughTheApiToo) {
    const fs::path bad = testutil::pipeline_with_unreadable_weights("in_api");
    GenerateOptions go;
    go.prompt = "p";
    go.width = go.height = 32;
    go.steps = 1001;
    std::string e = testutil::error_of<UsageError>([&] { ZImagePipeline(bad.string(), PipelineOptions{}, go); });
    EXPECT_NE(e.find("--steps must be between 1 and 1000"), std::string::npos) << e;
    go.steps = 1;
    go.latents = Tensor::zeros({1, 16, 2, 2}, DType::F32);
    e = testutil::error_of<ShapeError>([&] { ZImagePipeline(bad.string(), PipelineOptions{}, go); });
    EXPECT_NE(e.find("[1, 16, 2, 2]"), std::string::npos) << e;
}

TEST(GenerateInputs, HelpStatesTheBounds) {
    CliResult r = run_qdit("generate --help");
    ASSERT_EQ(r.status, 0) << r.err;
    for (const char* s : {"Denoising steps, 1 to 1000", "a multiple of 16 up to 16384", "axes_lens[2] x 16",
                          "--max-sequence-length INT=512", "1 to 4096", "axes_lens[0] of transformer/config.json",
                          "one floating-point tensor", "its folder must exist and be writable"})
        EXPECT_NE(r.out.find(s), std::string::npos) << s;
}
