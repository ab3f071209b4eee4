// server/request.h: the request bodies of `qdit serve`'s image endpoints, parsed
// and validated without HTTP or a model (the HTTP side is tests/python's).
#include <gtest/gtest.h>

#include <string>

#include "server/request.h"

using namespace qdit;
using namespace qdit::server;
using nlohmann::json;

namespace {

const char* const kModel = "tiny-zimage-v1";

ImageRequest parse(const std::string& body, const Limits& lim = {}) {
    return parse_image_request(parse_request_body(body), lim, kModel);
}

// "status param: message" of the ApiError the body gives, or a text saying there was none.
std::string refusal(const std::string& body, const Limits& lim = {}) {
    try {
        parse(body, lim);
    } catch (const ApiError& e) {
        return std::to_string(e.status) + " " + e.param + ": " + e.message;
    }
    return "accepted";
}

bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

}  // namespace

TEST(ServerRequest, FieldsAndDefaults) {
    ImageRequest r = parse(R"({"prompt": "a cat", "n": 2, "size": "512x768", "num_inference_steps": 4,
                               "seed": 7, "guidance_scale": 3.5, "negative_prompt": "dark",
                               "model": "tiny-zimage-v1", "response_format": "b64_json"})");
    EXPECT_EQ(r.gen.prompt, "a cat");
    EXPECT_EQ(r.gen.negative_prompt, "dark");
    EXPECT_EQ(r.n, 2);
    EXPECT_EQ(r.gen.width, 512);
    EXPECT_EQ(r.gen.height, 768);
    EXPECT_EQ(r.gen.steps, 4);
    EXPECT_EQ(r.gen.seed, 7u);
    EXPECT_FLOAT_EQ(r.gen.guidance, 3.5f);

    r = parse(R"({"prompt": "x", "size": "auto", "n": null})");
    EXPECT_EQ(r.n, 1);
    EXPECT_EQ(r.gen.width, 1024);
    EXPECT_EQ(r.gen.height, 1024);
    EXPECT_EQ(r.gen.steps, 9);
    EXPECT_EQ(r.gen.max_sequence_length, 512);
}

TEST(ServerRequest, BadFieldsAre400NamingTheField) {
    EXPECT_TRUE(starts_with(refusal(R"({"n": 1})"), "400 prompt:"));
    EXPECT_TRUE(starts_with(refusal(R"({"prompt": ""})"), "400 prompt:"));
    EXPECT_TRUE(starts_with(refusal(R"({"prompt": "x", "n": 11})"), "400 n:"));
    EXPECT_TRUE(starts_with(refusal(R"({"prompt": "x", "n": 1.0})"), "400 n:"));
    EXPECT_TRUE(starts_with(refusal(R"({"prompt": "x", "size": "64x65"})"), "400 size:"));
    EXPECT_TRUE(starts_with(refusal(R"({"prompt": "x", "size": "4096x4096"})"), "400 size:"));
    EXPECT_TRUE(starts_with(refusal(R"({"prompt": "x", "seed": 18446744073709551615})"), "400 seed:"));
    EXPECT_TRUE(starts_with(refusal(R"({"prompt": "x", "colour": "red"})"), "400 colour:"));
    EXPECT_TRUE(starts_with(refusal(R"({"prompt": "x", "model": "gpt-image-1"})"), "404 model:"));
    EXPECT_TRUE(starts_with(refusal(R"({"prompt": "x", "n": 10, "num_inference_steps": 200, "size": "2048x2048"})"),
                            "400 n:"));
    Limits lim;
    lim.max_prompt_bytes = 4;
    EXPECT_TRUE(starts_with(refusal(R"({"prompt": "12345"})", lim), "400 prompt:"));
}

TEST(ServerRequest, BodiesThatAreNotJsonObjectsAre400) {
    for (const char* body : {"", "{", "not json", R"({"prompt": "x",})", "[1, 2]", "42"})
        EXPECT_TRUE(starts_with(refusal(body), "400 :")) << body << ": " << refusal(body);
}

// nlohmann's parser throws out_of_range, not parse_error, for a number beyond
// double's range; the server answered such a body with a 500.
TEST(ServerRequest, NumbersBeyondDoubleRangeAre400) {
    for (const char* body : {R"({"prompt": "x", "guidance_scale": 1e400})", R"({"prompt": "x", "seed": -1e400})",
                             "1e400"}) {
        const std::string r = refusal(body);
        EXPECT_TRUE(starts_with(r, "400 :")) << body << ": " << r;
        EXPECT_NE(r.find("not valid JSON"), std::string::npos) << r;
    }
}

// A server whose step limit is below the default step count gives a request without
// num_inference_steps its limit (found by fuzz_serve_request with small limits).
TEST(ServerRequest, DefaultStepsStayWithinTheLimit) {
    Limits lim;
    lim.max_steps = 4;
    EXPECT_EQ(parse(R"({"prompt": "a cat", "size": "16x64"})", lim).gen.steps, 4);
    EXPECT_EQ(parse(R"({"prompt": "a cat", "size": "16x64"})").gen.steps, 9);
}

// A Qwen-Image server: true_cfg_scale (default 4, 0 to 100) and whether a negative prompt was given
// (even empty) make its true CFG; guidance_scale is refused naming it; 50 steps by default and a
// max_sequence_length up to 1024.
TEST(ServerRequest, QwenImageFields) {
    auto qwen = [](const std::string& body, const Limits& lim = {}) {
        return parse_image_request(parse_request_body(body), lim, kModel, Family::QwenImage);
    };
    ImageRequest r = qwen(R"({"prompt": "a cat", "size": "64x64", "seed": 3})");
    EXPECT_EQ(r.gen.steps, 50);
    EXPECT_EQ(r.true_cfg_scale, 4.0f);
    EXPECT_FALSE(r.negative_prompt);
    EXPECT_FALSE(r.qwen().negative_prompt.has_value());
    EXPECT_FALSE(r.qwen().true_cfg());
    r = qwen(R"({"prompt": "a cat", "negative_prompt": "", "true_cfg_scale": 2.5, "num_inference_steps": 3,
                 "max_sequence_length": 1024, "seed": 9, "size": "32x48"})");
    const QwenImageGenerateOptions o = r.qwen();
    EXPECT_EQ(o.negative_prompt, std::optional<std::string>(""));
    EXPECT_TRUE(o.true_cfg());
    EXPECT_EQ(o.true_cfg_scale, 2.5f);
    EXPECT_EQ(o.steps, 3);
    EXPECT_EQ(o.max_sequence_length, 1024);
    EXPECT_EQ(o.seed, 9u);
    EXPECT_EQ(o.width, 32);
    EXPECT_EQ(o.height, 48);
    Limits small;
    small.max_steps = 20;
    EXPECT_EQ(qwen(R"({"prompt": "x"})", small).gen.steps, 20);
    for (const auto& [body, field] : std::vector<std::pair<std::string, std::string>>{
             {R"({"prompt": "x", "guidance_scale": 0})", "guidance_scale"},
             {R"({"prompt": "x", "true_cfg_scale": -1})", "true_cfg_scale"},
             {R"({"prompt": "x", "true_cfg_scale": 101})", "true_cfg_scale"},
             {R"({"prompt": "x", "true_cfg_scale": "4"})", "true_cfg_scale"},
             {R"({"prompt": "x", "max_sequence_length": 1025})", "max_sequence_length"}}) {
        try {
            qwen(body);
            ADD_FAILURE() << body << " was accepted";
        } catch (const ApiError& e) {
            EXPECT_EQ(e.status, 400) << body;
            EXPECT_EQ(e.param, field) << body;
            EXPECT_NE(e.message.find("'" + field + "'"), std::string::npos) << e.message;
        }
    }
    // And the Z-Image rule stays: true_cfg_scale other than 1 is refused there.
    EXPECT_TRUE(starts_with(refusal(R"({"prompt": "x", "true_cfg_scale": 4})"), "400 true_cfg_scale:"));
}
