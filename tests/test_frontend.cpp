// pipeline/frontend.h: what the CLI, the server and the Python module share.
#include <gtest/gtest.h>

#include "core/error.h"
#include "pipeline/frontend.h"

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
