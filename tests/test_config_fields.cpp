// Config fields are read strictly (JSON type, range) with the file and the
// field named: the reader itself, then every config file the engine reads,
// with the absurd values that used to end in std::bad_alloc.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "io/files.h"
#include "models/model_spec.h"
#include "models/vae/autoencoder_kl.h"
#include "pipeline/scheduler.h"
#include "pipeline/zimage_pipeline.h"
#include "tests/expect_error.h"
#include "cli_util.h"

namespace fs = std::filesystem;
using namespace qdit;
using nlohmann::json;
using testutil::error_of;

namespace {

// The message read_config_field gives for j = {"f": value} read as T.
template <typename T>
std::string read_error(const json& value) {
    const json j = {{"f", value}};
    T out{};
    return error_of<ConfigError>([&] { read_config_field(j, "c.json", "f", &out); });
}

template <typename T>
std::string bounded_error(const json& value, Bounds<T> b) {
    const json j = {{"f", value}};
    T out{};
    return error_of<ConfigError>([&] { read_config_field(j, "c.json", "f", &out, b); });
}

const std::string kNoError = "no error of the expected type";

}  // namespace

TEST(ConfigField, IntegersMustBeJsonIntegers) {
    for (const json& bad : {json(2.5), json(2.0), json::parse("1e9"), json("2"), json(true), json::array({2})})
        EXPECT_NE(read_error<int64_t>(bad).find("c.json: field 'f' must be an integer (got " + bad.dump() + ")"),
                  std::string::npos)
            << bad.dump();
    json j = {{"f", 7}};
    int64_t v = 0;
    read_config_field(j, "c.json", "f", &v);
    EXPECT_EQ(v, 7);
    // Absent and null keep the default.
    v = 3;
    read_config_field(json{{"f", nullptr}}, "c.json", "f", &v);
    read_config_field(json::object(), "c.json", "f", &v);
    EXPECT_EQ(v, 3);
    // An int field refuses what does not fit an int; a huge unsigned is out of range.
    EXPECT_NE(read_error<int>(json(int64_t(1) << 40)).find("outside the supported range"), std::string::npos);
    EXPECT_NE(read_error<int64_t>(json(uint64_t(1) << 63)).find("outside the supported range"), std::string::npos);
}

TEST(ConfigField, OtherTypesAreCheckedToo) {
    EXPECT_NE(read_error<double>(json("1.5")).find("must be a number"), std::string::npos);
    EXPECT_NE(read_error<double>(json(false)).find("must be a number"), std::string::npos);
    EXPECT_NE(read_error<bool>(json(1)).find("must be true or false"), std::string::npos);
    EXPECT_NE(read_error<std::string>(json(3)).find("must be a string"), std::string::npos);
    EXPECT_NE(read_error<std::vector<int64_t>>(json(3)).find("must be a list"), std::string::npos);
    EXPECT_NE(read_error<std::vector<int64_t>>(json::array({1, 2.5})).find("field 'f[1]' must be an integer"),
              std::string::npos);
    double d = 0;
    read_config_field(json{{"f", 2}}, "c.json", "f", &d);  // an integer is a number
    EXPECT_EQ(d, 2.0);
}

TEST(ConfigField, BoundsAreInclusiveAndNamed) {
    EXPECT_EQ(bounded_error<int64_t>(json(1024), {0, 1024}), kNoError);
    EXPECT_EQ(bounded_error<int64_t>(json(0), {0, 1024}), kNoError);
    const std::string e = bounded_error<int64_t>(json(1000000000), {0, 1024});
    EXPECT_NE(e.find("c.json: field 'f' is 1000000000, outside the supported range [0, 1024]"), std::string::npos)
        << e;
    EXPECT_NE(bounded_error<int64_t>(json(-1), {0, 1024}).find("outside"), std::string::npos);
    EXPECT_NE(bounded_error<double>(json(0.0), {1e-12, 1.0}).find("outside"), std::string::npos);
    EXPECT_EQ(bounded_error<double>(json(1e-6), {1e-12, 1.0}), kNoError);

    // Lists: 1 to 16 entries, each in range, the index named.
    auto list_error = [](const json& value) {
        std::vector<int64_t> out;
        return error_of<ConfigError>(
            [&] { read_config_field(json{{"f", value}}, "c.json", "f", &out, Bounds<int64_t>{1, 65536}); });
    };
    EXPECT_EQ(list_error(json::array({1536, 512, 512})), kNoError);
    EXPECT_NE(list_error(json::array({1536, 1000000000, 512})).find("field 'f[1]' is 1000000000"),
              std::string::npos);
    EXPECT_NE(list_error(json::array({1536, 2.5})).find("field 'f[1]' must be an integer"), std::string::npos);
    EXPECT_NE(list_error(json::array()).find("must be a list of 1 to 16 numbers"), std::string::npos);
    EXPECT_NE(list_error(json(std::vector<int>(17, 1))).find("must be a list of 1 to 16 numbers"), std::string::npos);
}

// Each config file the engine reads, through its own parser: the absurd
// values of the bug report and a few more, each refused with file and field.
TEST(ConfigField, EveryConfigFileRefusesAbsurdValuesByName) {
    const std::string pipe = testutil::test_pipeline_dir();
    struct Case {
        std::string file, field;
        json value;
        std::string needle;
    };
    const Case cases[] = {
        {"transformer/config.json", "n_layers", json::parse("1e9"), "field 'n_layers' must be an integer"},
        {"transformer/config.json", "n_layers", 1000000000, "field 'n_layers' is 1000000000, outside the supported range [0, 1024]"},
        {"transformer/config.json", "n_layers", 2.5, "field 'n_layers' must be an integer (got 2.5)"},
        {"transformer/config.json", "n_refiner_layers", "2", "field 'n_refiner_layers' must be an integer"},
        {"transformer/config.json", "dim", 65537 * 2, "field 'dim' is 131074"},
        {"transformer/config.json", "n_heads", true, "field 'n_heads' must be an integer (got true)"},
        {"transformer/config.json", "axes_lens", json::array({1000000000, 512, 512}), "field 'axes_lens[0]' is 1000000000"},
        {"transformer/config.json", "axes_lens", json::array({1536, 512}), "must list 3 axes"},
        {"transformer/config.json", "norm_eps", "1e-5", "field 'norm_eps' must be a number"},
        {"transformer/config.json", "rope_theta", 0, "field 'rope_theta' is 0"},
        {"text_encoder/config.json", "num_hidden_layers", 1000000000, "field 'num_hidden_layers' is 1000000000"},
        {"text_encoder/config.json", "num_hidden_layers", 2.5, "field 'num_hidden_layers' must be an integer"},
        {"text_encoder/config.json", "vocab_size", int64_t(1) << 40, "field 'vocab_size' is 1099511627776"},
        {"text_encoder/config.json", "head_dim", 2.0, "field 'head_dim' must be an integer (got 2.0)"},
        {"text_encoder/config.json", "attention_bias", 0, "field 'attention_bias' must be true or false"},
        {"vae/config.json", "layers_per_block", 1000000000, "field 'layers_per_block' is 1000000000"},
        {"vae/config.json", "layers_per_block", 2.5, "field 'layers_per_block' must be an integer"},
        {"vae/config.json", "block_out_channels", json::array({128, 256, 1e9, 512}), "field 'block_out_channels[2]' must be an integer"},
        {"vae/config.json", "scaling_factor", "0.3", "field 'scaling_factor' must be a number"},
        {"scheduler/scheduler_config.json", "num_train_timesteps", 2.5, "field 'num_train_timesteps' must be an integer"},
        {"scheduler/scheduler_config.json", "shift", true, "field 'shift' must be a number"},
        {"scheduler/scheduler_config.json", "max_image_seq_len", int64_t(1) << 40, "field 'max_image_seq_len' is"},
        {"model_index.json", "_class_name", 3, "field '_class_name' must be a string"},
        {"model_index.json", "vae", "AutoencoderKL", "field 'vae' must be a list"},
        {"model_index.json", "vae", json::array({"AutoencoderKL"}), "field 'vae' must name the component's library and class"},
    };
    for (const Case& c : cases) {
        SCOPED_TRACE(c.file + " " + c.field + " = " + c.value.dump());
        json j = read_json_file(pipe + "/" + c.file);
        j[c.field] = c.value;
        const std::string where = "dir/" + c.file;
        std::string e;
        if (c.file == "vae/config.json") {
            e = error_of<ConfigError>([&] { vae::Config::from_json(j, where); });
        } else if (c.file == "scheduler/scheduler_config.json") {
            e = error_of<ConfigError>([&] { FlowMatchConfig::from_json(j, where); });
        } else if (c.file == "model_index.json") {
            const fs::path d = testutil::pipeline_copy("cfg_index");
            write_file_atomic((d / "model_index.json").string(), j.dump());
            e = error_of<ConfigError>([&] { ZImagePipeline(d.string(), PipelineOptions{}); });
            EXPECT_EQ(e.rfind((d / "model_index.json").string() + ": ", 0), 0u) << e;
        } else {
            e = error_of<ConfigError>([&] { model_spec_from_config(j, where); });
        }
        if (c.file != "model_index.json") EXPECT_EQ(e.rfind(where + ": ", 0), 0u) << e;
        EXPECT_NE(e.find(c.needle), std::string::npos) << e;
    }
    // RoPE tables past 2^26 values (head dims far beyond any model's).
    json j = read_json_file(pipe + "/transformer/config.json");
    j.update(json{{"dim", 65536}, {"n_heads", 1}, {"n_kv_heads", 1}, {"axes_dims", {32768, 16384, 16384}},
                  {"axes_lens", {4096, 512, 512}}});
    const std::string e = error_of<ConfigError>([&] { model_spec_from_config(j, "t.json"); });
    EXPECT_NE(e.find("t.json: the RoPE tables of axes_lens x axes_dims hold 150994944 values"), std::string::npos)
        << e;
}

// The reported case end to end: `qdit inspect` and `qdit generate` refuse
// axes_lens 1e9 and n_layers 1e9 at once, naming file and field.
TEST(ConfigField, CommandsRefuseAbsurdConfigsNamingFileAndField) {
    const fs::path d = testutil::pipeline_with_unreadable_weights("cfg_cli");
    const fs::path transformer = testutil::own_component(d, "transformer");
    const fs::path out = testutil::fresh_dir("cfg_cli_out") / "x.png";
    for (const auto& [field, value] : {std::pair<std::string, json>{"axes_lens", json::array({1536, 1000000000, 512})},
                                       std::pair<std::string, json>{"n_layers", json::parse("1e9")}}) {
        testutil::edit_json(transformer / "config.json", [&](json& j) { j[field] = value; });
        for (const std::string& cmd : {"inspect " + d.string(),
                                       "generate --model " + d.string() + " --prompt p --width 32 --height 32 -o " +
                                           out.string()}) {
            testutil::CliResult r = testutil::run_qdit(cmd);
            EXPECT_EQ(r.status, 1) << cmd << ": " << r.err;
            EXPECT_EQ(r.err.rfind("error: " + (transformer / "config.json").string() + ": field '" + field, 0), 0u)
                << cmd << ": " << r.err;
            EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
            EXPECT_FALSE(fs::exists(out));
        }
        testutil::edit_json(transformer / "config.json", [&](json& j) {
            j = read_json_file(testutil::test_pipeline_dir() + "/transformer/config.json");
        });
    }
}
