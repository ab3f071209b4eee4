// pipeline/frontend.h: what the CLI, the server and the Python module share.
#include <gtest/gtest.h>

#include <cstdio>
#include <map>

#include "cli_util.h"
#include "core/error.h"
#include "io/png.h"
#include "ops/context.h"
#include "pipeline/frontend.h"
#include "pipeline/tiny_model.h"

using namespace qdit;

TEST(Frontend, RenameFlagsRenamesWholeFlagsOnly) {
    const std::vector<std::pair<std::string, std::string>> names = {
        {"--quantization", "quantization"}, {"--steps", "'num_inference_steps'"}, {"--width", "width"}};
    EXPECT_EQ(rename_flags("--steps must be between 1 and 1000 (got 0)", names),
              "'num_inference_steps' must be between 1 and 1000 (got 0)");
    EXPECT_EQ(rename_flags("--width and --height: --width 99", names), "width and --height: width 99");
    // A longer flag that starts with a renamed one is left alone.
    EXPECT_EQ(rename_flags("--quantization-config x; --quantization int8", names),
              "--quantization-config x; quantization int8");
    EXPECT_EQ(rename_flags("no flags here", names), "no flags here");
    EXPECT_EQ(rename_flags("--steps", names), "'num_inference_steps'");
}

TEST(Frontend, ParseDeviceNamesTheField) {
    EXPECT_EQ(parse_device("cpu").type, DeviceType::CPU);
    EXPECT_EQ(parse_device("cuda:3").index, 3);
    try {
        parse_device("gpu", "device");
        FAIL() << "no error";
    } catch (const UsageError& e) {
        EXPECT_EQ(std::string(e.what()).rfind("device gpu:", 0), 0u) << e.what();
    }
}

// Without --device the GPU runs when the build has the CUDA backend and one is visible (and the
// dtype is bf16), else the CPU: the rule, its use by `qdit generate` (the PNG names the device) and
// its statement in --help.
TEST(Frontend, DefaultDeviceIsTheGpuWhenThereIsOne) {
    const bool gpu = ops::cuda_devices() > 0;
    EXPECT_EQ(default_device_name(), gpu ? "cuda" : "cpu");
    EXPECT_EQ(default_device_name(DType::F32), "cpu");

    const std::filesystem::path dir = testutil::fresh_dir("default_device");
    const std::filesystem::path out = dir / "x.png";
    testutil::CliResult r = testutil::run_qdit("generate --model " + std::string(QDIT_TEST_DATA) +
                                               "/pipeline --prompt p --width 32 --height 32 --steps 1 -o " +
                                               out.string());
    ASSERT_EQ(r.status, 0) << r.err;
    const PngImage img = read_png(out.string());
    std::map<std::string, std::string> text(img.text.begin(), img.text.end());
    EXPECT_EQ(text["device"], default_device_name());
    EXPECT_EQ(r.out.find("GPU:") != std::string::npos, gpu) << r.out;

    for (const char* cmd : {"generate --help", "serve --help"}) {
        r = testutil::run_qdit(cmd);
        ASSERT_EQ(r.status, 0) << r.err;
        EXPECT_NE(r.out.find("default: cuda when this build has the CUDA backend, a GPU is visible and --dtype is "
                             "bf16, else cpu"),
                  std::string::npos)
            << cmd << ": " << r.out;
    }
}

// LoadProgress: one line per tenth of the folder's weight bytes handed to the loaders, in order,
// while it lives; none when disabled, when the folder holds less than the threshold, or once it is
// gone.
TEST(Frontend, LoadProgressLinesPerTenth) {
    const std::filesystem::path dir = testutil::fresh_dir("load_progress") / "m";
    write_tiny_zimage(dir.string());
    auto lines_of = [&](bool enabled, uint64_t min_bytes) {
        std::FILE* f = std::tmpfile();
        {
            const LoadProgress p(dir.string(), enabled, min_bytes, f);
            ZImagePipeline pipe(dir.string(), PipelineOptions{});
        }
        ZImagePipeline again(dir.string(), PipelineOptions{});  // after: not counted
        std::rewind(f);
        std::vector<std::string> lines;
        char buf[256];
        while (std::fgets(buf, sizeof buf, f)) lines.emplace_back(buf);
        std::fclose(f);
        return lines;
    };
    const std::vector<std::string> lines = lines_of(true, 0);
    ASSERT_GE(lines.size(), 5u);
    ASSERT_LE(lines.size(), 10u);
    int last = 0;
    for (const std::string& l : lines) {
        int pct = 0;
        double read = 0, total = 0, rate = 0;
        ASSERT_EQ(std::sscanf(l.c_str(), "loading weights: %d%% (%lf of %lf GB, %lf GB/s)", &pct, &read, &total, &rate),
                  4)
            << l;
        EXPECT_GT(pct, last) << l;
        EXPECT_EQ(pct % 10, 0) << l;
        last = pct;
    }
    EXPECT_GE(last, 80) << "most of the tiny model's weights are read through the checkpoint";
    EXPECT_TRUE(lines_of(false, 0).empty());
    EXPECT_TRUE(lines_of(true, uint64_t(1) << 30).empty()) << "a tiny model gets no progress";
}
