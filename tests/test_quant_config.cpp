#include <gtest/gtest.h>

#include <filesystem>

#include "core/error.h"
#include "io/files.h"
#include "quant/config.h"
#include "quant/plan.h"

using namespace qdit;
using nlohmann::json;

namespace {

std::string config_error(const std::string& text) {
    try {
        parse_quant_config(json::parse(text), "cfg");
    } catch (const ConfigError& e) {
        return e.what();
    }
    return "no error";
}

}  // namespace

TEST(QuantConfig, ParsesFields) {
    QuantConfig c = parse_quant_config(
        json::parse(R"({"method":"int8","ignored_layers":["a.b","c"],"activation_scheme":"dynamic"})"),
        "cfg");
    EXPECT_EQ(c.method, QuantMethod::Int8);
    EXPECT_EQ(c.ignored_layers, (std::vector<std::string>{"a.b", "c"}));
    EXPECT_EQ(parse_quant_config(json::parse(R"({"quant_method":"INT8"})"), "x").method,
              QuantMethod::Int8);
    EXPECT_EQ(parse_quant_config(json::parse(R"({"method":"none"})"), "x").method,
              QuantMethod::None);
    // What a pre-quantized checkpoint stores parses back to the same config.
    QuantConfig back = parse_quant_config(c.to_json(), "x");
    EXPECT_EQ(back.method, c.method);
    EXPECT_EQ(back.ignored_layers, c.ignored_layers);
}

TEST(QuantConfig, ErrorsNameFieldAndAllowedValues) {
    std::string e = config_error(R"({"method":"int4"})");
    EXPECT_NE(e.find("'int4'"), std::string::npos) << e;
    EXPECT_NE(e.find("none, int8, fp8"), std::string::npos) << e;
    e = config_error(R"({"method":"int8","weight_block_size":[128,128]})");
    EXPECT_NE(e.find("'weight_block_size'"), std::string::npos) << e;
    EXPECT_NE(e.find("method, ignored_layers, activation_scheme"), std::string::npos) << e;
    e = config_error(R"({"method":"int8","activation_scheme":"static"})");
    EXPECT_NE(e.find("activation_scheme"), std::string::npos) << e;
    EXPECT_NE(e.find("dynamic"), std::string::npos) << e;
    EXPECT_NE(config_error(R"({"ignored_layers":[]})").find("no 'method'"), std::string::npos);
    EXPECT_NE(config_error(R"({"method":"int8","ignored_layers":"a"})").find("list"),
              std::string::npos);
    EXPECT_NE(config_error(R"({"method":"int8","ignored_layers":[3]})").find("not a string"),
              std::string::npos);
    EXPECT_NE(config_error(R"({"method":"int8","ignored_layers":["a..b"]})").find("'a..b'"),
              std::string::npos);
    EXPECT_NE(config_error(R"({"method":"int8","quant_method":"fp8"})").find("disagree"),
              std::string::npos);
    EXPECT_NE(config_error(R"([1])").find("JSON object"), std::string::npos);
    EXPECT_NE(config_error(R"({"method":3})").find("must be a string"), std::string::npos);
}

TEST(QuantConfig, ShorthandAndConfigCombine) {
    std::vector<std::string> warnings;
    QuantConfig c = resolve_quant_config({"int8", "", {"feed_forward"}}, &warnings);
    EXPECT_EQ(c.method, QuantMethod::Int8);
    EXPECT_EQ(c.ignored_layers, std::vector<std::string>{"feed_forward"});
    EXPECT_TRUE(warnings.empty());

    // Config without a method takes the shorthand's; --ignored-layers extends the list.
    c = resolve_quant_config({"int8", R"({"ignored_layers":["a"]})", {"b"}}, &warnings);
    EXPECT_EQ(c.method, QuantMethod::Int8);
    EXPECT_EQ(c.ignored_layers, (std::vector<std::string>{"a", "b"}));
    EXPECT_TRUE(warnings.empty());

    // Conflict: a warning, and the config wins.
    c = resolve_quant_config({"int8", R"({"method":"none"})", {}}, &warnings);
    EXPECT_EQ(c.method, QuantMethod::None);
    ASSERT_EQ(warnings.size(), 1u);
    EXPECT_NE(warnings[0].find("conflicts"), std::string::npos);

    // From a file.
    std::string path = (std::filesystem::temp_directory_path() / "qdit_qc.json").string();
    write_file_atomic(path, R"({"method":"int8","ignored_layers":["x.y"]})");
    c = resolve_quant_config({"", path, {}}, nullptr);
    EXPECT_EQ(c.ignored_layers, std::vector<std::string>{"x.y"});

    EXPECT_THROW(resolve_quant_config({"int3", "", {}}, nullptr), UsageError);
    EXPECT_THROW(resolve_quant_config({"", "{not json", {}}, nullptr), ConfigError);
    EXPECT_THROW(resolve_quant_config({"", R"({"method": 1e400})", {}}, nullptr), ConfigError);
    EXPECT_THROW(resolve_quant_config({"", "/no/such/file.json", {}}, nullptr), IoError);
    EXPECT_THROW(resolve_quant_config({"fp8", "", {}}, nullptr), ConfigError);
    warnings.clear();
    resolve_quant_config({"none", "", {"a"}}, &warnings);
    EXPECT_EQ(warnings.size(), 1u);
}

TEST(QuantConfig, SplitLayerList) {
    EXPECT_EQ(split_layer_list("a, b.c ,d", "--x"), (std::vector<std::string>{"a", "b.c", "d"}));
    EXPECT_THROW(split_layer_list("a,,b", "--x"), UsageError);
    EXPECT_THROW(split_layer_list("", "--x"), UsageError);
}

TEST(LayerMatch, DesignExamples) {
    EXPECT_TRUE(layer_matches("feed_forward", "layers.3.feed_forward.w1"));
    EXPECT_TRUE(layer_matches("img_mlp", "transformer_blocks.0.img_mlp.net.2"));
    EXPECT_FALSE(layer_matches("ff", "feed_forward"));
    EXPECT_FALSE(layer_matches("ff", "layers.3.feed_forward.w1"));
    EXPECT_TRUE(layer_matches("layers.3.feed_forward.w1", "layers.3.feed_forward.w1"));
    EXPECT_TRUE(layer_matches("3.feed_forward", "layers.3.feed_forward.w1"));
    EXPECT_TRUE(layer_matches("layers.3", "layers.3.attention.to_q"));
    EXPECT_FALSE(layer_matches("layers.3", "layers.30.attention.to_q"));
    EXPECT_FALSE(layer_matches("layers.3", "noise_refiner.layers"));
    EXPECT_FALSE(layer_matches("to_out", "attention.to_out_proj"));
    EXPECT_TRUE(layer_matches("to_out.0", "layers.1.attention.to_out.0"));
    EXPECT_FALSE(layer_matches("feed_forward.w1.x", "layers.3.feed_forward.w1"));
    EXPECT_FALSE(layer_matches("w1.feed_forward", "layers.3.feed_forward.w1"));
}

TEST(QuantPlan, PatternsDefaultsAndReport) {
    ModelSpec m;
    m.class_name = "Toy";
    m.linears = {{"embed", 8, 4, true},
                 {"layers.0.attn.to_q", 16, 8, false},
                 {"layers.0.ff.w1", 32, 8, false},
                 {"layers.1.attn.to_q", 16, 8, false},
                 {"layers.1.ff.w1", 32, 8, false}};
    m.keep_high_precision = {"embed"};
    std::vector<DType> dt(m.linears.size(), DType::BF16);
    std::vector<bool> pq(m.linears.size(), false);

    QuantConfig c;
    c.method = QuantMethod::Int8;
    c.ignored_layers = {"ff", "layers.1.attn", "nothing.here"};
    QuantPlan p = make_quant_plan(m, c, dt, pq);
    ASSERT_EQ(p.layers.size(), 5u);
    EXPECT_EQ(p.layers[0].precision, Precision::High);
    EXPECT_EQ(p.layers[0].kept_by, "model default: embed");
    EXPECT_EQ(p.layers[1].precision, Precision::Int8);
    EXPECT_EQ(p.layers[2].kept_by, "ignored_layers: ff");
    EXPECT_EQ(p.layers[3].kept_by, "ignored_layers: layers.1.attn");
    EXPECT_EQ(p.layers[4].precision, Precision::High);
    EXPECT_EQ(p.pattern_hits.at("ff"), 2);
    EXPECT_EQ(p.pattern_hits.at("layers.1.attn"), 1);
    EXPECT_EQ(p.pattern_hits.at("nothing.here"), 0);
    ASSERT_EQ(p.warnings.size(), 1u);
    EXPECT_NE(p.warnings[0].find("'nothing.here'"), std::string::npos);
    EXPECT_EQ(p.quantized_count(), 1);
    // bf16 [16, 8] -> int8 + one f32 scale per output channel.
    EXPECT_EQ(p.layers[1].bytes_before, 16u * 8 * 2);
    EXPECT_EQ(p.layers[1].bytes_after, 16u * 8 + 16 * 4);
    EXPECT_EQ(p.layers[0].bytes_before, 8u * 4 * 2 + 8 * 2);
    std::string report = format_plan(p);
    EXPECT_NE(report.find("layers.0.attn.to_q"), std::string::npos);
    EXPECT_NE(report.find("total: 5 Linear layers, 1 int8, 4 high precision"), std::string::npos);

    // Without quantization nothing changes and nothing is "kept by" anything.
    QuantPlan none = make_quant_plan(m, QuantConfig{}, dt, pq);
    EXPECT_EQ(none.quantized_count(), 0);
    EXPECT_EQ(none.bytes_before(), none.bytes_after());

    // A layer stored as int8 cannot be kept in high precision.
    pq[1] = true;
    c.ignored_layers = {"layers.0"};
    EXPECT_THROW(make_quant_plan(m, c, dt, pq), ConfigError);
}
