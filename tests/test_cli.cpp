// Runs the qdit binary as a user would: exit codes, one-line errors, outputs.
#include <gtest/gtest.h>
#include <filesystem>

#include "cli_util.h"

using namespace qdit::testutil;

namespace {

int count_lines(const std::string& s) { return int(std::count(s.begin(), s.end(), '\n')); }

}  // namespace

TEST(Cli, HelpAndUsageErrors) {
    CliResult r = run_qdit("--help");
    EXPECT_EQ(r.status, 0);
    EXPECT_NE(r.out.find("inspect"), std::string::npos);
    EXPECT_NE(r.out.find("quantize"), std::string::npos);
    r = run_qdit("inspect --help");
    EXPECT_EQ(r.status, 0);
    EXPECT_NE(r.out.find("--ignored-layers"), std::string::npos);

    for (const char* args : {"", "inspect", "frobnicate", "inspect x --quantization int4",
                             "inspect x --ignored-layers a,,b", "quantize x"}) {
        r = run_qdit(args);
        EXPECT_EQ(r.status, 2) << args;
        EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << args << ": " << r.err;
        EXPECT_EQ(count_lines(r.err), 1) << args << ": " << r.err;
    }
}

TEST(Cli, InspectListsTheDefaultPlanAndHonoursIgnoredLayers) {
    // A checkpoint written by diffusers: 2 layers + 1 noise + 1 context refiner block.
    fs::path d = fs::path(QDIT_TEST_DATA) / "zimage" / "h3_b1" / "transformer";
    CliResult r = run_qdit("inspect " + d.string() + " --quantization int8");
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_NE(r.out.find("ZImageTransformer2DModel"), std::string::npos);
    // One line per Linear layer, with its precision.
    int int8_ffn = 0, lines = 0;
    for (size_t pos = 0; (pos = r.out.find('\n', pos)) != std::string::npos; ++pos) {
        size_t start = r.out.rfind('\n', pos - 1);
        std::string line = r.out.substr(start + 1, pos - start - 1);
        if (line.find(".feed_forward.") != std::string::npos) {
            ++lines;
            int8_ffn += line.find(" int8 ") != std::string::npos;
        }
    }
    EXPECT_EQ(lines, 12);
    EXPECT_EQ(int8_ffn, 12);
    EXPECT_NE(r.out.find("model default: adaLN_modulation"), std::string::npos);
    EXPECT_NE(r.out.find("total: "), std::string::npos);

    r = run_qdit("inspect " + d.string() + " --quantization int8 --ignored-layers feed_forward,nope");
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_NE(r.out.find("ignored_layers 'feed_forward' kept 12 layer(s)"), std::string::npos) << r.out;
    EXPECT_NE(r.err.find("warning: ignored_layers pattern 'nope' matched no Linear layer"),
              std::string::npos)
        << r.err;
    int kept = 0;
    for (size_t pos = 0; (pos = r.out.find("ignored_layers: feed_forward\n", pos)) != std::string::npos; ++pos) ++kept;
    EXPECT_EQ(kept, 12);

    r = run_qdit("inspect " + d.string() + " --quantization-config '{\"method\":\"int8\",\"colour\":1}'");
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.err.find("'colour'"), std::string::npos) << r.err;
    EXPECT_EQ(count_lines(r.err), 1) << r.err;

    r = run_qdit("inspect /no/such/dir");
    EXPECT_EQ(r.status, 1);
    EXPECT_EQ(r.err.rfind("error: model folder /no/such/dir does not exist", 0), 0u) << r.err;
}

TEST(Cli, QuantizeThenInspectThePreQuantizedCopy) {
    fs::path d = write_tiny("cli_quant");
    fs::path out = fresh_dir("cli_quant_out") / "q";
    CliResult r = run_qdit("quantize " + d.string() + " -o " + out.string() +
                " --quantization int8 --ignored-layers layers.1");
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_TRUE(fs::exists(out / "config.json"));
    r = run_qdit("inspect " + out.string());
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_NE(r.out.find("pre-quantized"), std::string::npos);
    // Writing over a non-empty folder is refused and leaves it as it was.
    auto before = std::distance(fs::directory_iterator(out), fs::directory_iterator());
    r = run_qdit("quantize " + d.string() + " -o " + out.string() + " --quantization int8");
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.err.find("not empty"), std::string::npos) << r.err;
    EXPECT_EQ(std::distance(fs::directory_iterator(out), fs::directory_iterator()), before);
}
