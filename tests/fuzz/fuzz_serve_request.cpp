// Fuzz target: the HTTP body of POST /v1/images/generations (and /v1/jobs) of
// `qdit serve` as arbitrary bytes, through the server's request parser
// (server/request.h: the JSON body, then parse_image_request), with the default
// limits and with small ones, for a Z-Image and for a Qwen-Image server. A body either gives a request within the limits
// the parser promises, matching the fields it was given, or an ApiError with a
// 4xx status, a message and an error body that serializes; any other exception
// (a qdit::Error included) is a bug.
#include <climits>
#include <cmath>
#include <set>
#include <string>
#include <utility>

#include <fmt/format.h>

#include "fuzz_util.h"
#include "pipeline/qwen_image_prompt.h"
#include "server/request.h"

using namespace qdit;
using nlohmann::json;
using server::ApiError;
using server::Family;
using server::ImageRequest;
using server::Limits;

namespace {

const char* const kModelId = "tiny-zimage-v1";

// The field of the body, or null when absent or JSON null (the parser's "not given").
const json* given(const json& body, const char* key) {
    auto it = body.find(key);
    return it == body.end() || it->is_null() ? nullptr : &*it;
}

void check_request(const ImageRequest& r, const json& body, const Limits& lim, Family family) {
    const GenerateOptions& g = r.gen;
    const bool qwen = family == Family::QwenImage;
    if (!body.is_object()) fuzz::property_failed("a request from a body that is not an object");
    static const std::set<std::string> known = {"prompt", "model", "n", "size", "response_format",
                                                "output_format", "user", "negative_prompt", "num_inference_steps",
                                                "guidance_scale", "true_cfg_scale", "seed", "max_sequence_length"};
    for (auto it = body.begin(); it != body.end(); ++it)
        if (!known.count(it.key())) fuzz::property_failed("a request with the unknown field '" + it.key() + "'");
    for (auto [key, want] : {std::pair<const char*, const char*>{"model", kModelId},
                             {"response_format", "b64_json"}, {"output_format", "png"}})
        if (const json* p = given(body, key); p && *p != "" && *p != want)
            fuzz::property_failed(fmt::format("a request with {} {}", key, p->dump()));
    if (g.prompt.empty() || g.prompt.size() > lim.max_prompt_bytes)
        fuzz::property_failed(fmt::format("prompt of {} bytes (limit {})", g.prompt.size(), lim.max_prompt_bytes));
    if (g.negative_prompt.size() > lim.max_prompt_bytes)
        fuzz::property_failed(fmt::format("negative prompt of {} bytes", g.negative_prompt.size()));
    if (const json* p = given(body, "prompt"); !p || *p != g.prompt)
        fuzz::property_failed("the prompt is not the body's");
    if (const json* p = given(body, "negative_prompt"); p ? *p != g.negative_prompt : !g.negative_prompt.empty())
        fuzz::property_failed("the negative prompt is not the body's");
    if (r.n < 1 || r.n > lim.max_n) fuzz::property_failed(fmt::format("n = {}", r.n));
    if (const json* p = given(body, "n"); p ? *p != r.n : r.n != 1) fuzz::property_failed("n is not the body's");
    for (int side : {g.width, g.height})
        if (side < server::kSizeMultiple || side > lim.max_side || side % server::kSizeMultiple)
            fuzz::property_failed(fmt::format("size {}x{} (max side {})", g.width, g.height, lim.max_side));
    if (const json* p = given(body, "size"); p && *p != "" && *p != "auto") {
        // The parser reads WIDTHxHEIGHT in decimal digits; leading zeros are its only other spelling.
        const std::string s = p->get<std::string>();
        const size_t x = s.find('x');
        if (x == std::string::npos || std::stol(s.substr(0, x)) != g.width || std::stol(s.substr(x + 1)) != g.height)
            fuzz::property_failed(fmt::format("size \"{}\" read as {}x{}", s, g.width, g.height));
    } else if (g.width != 1024 || g.height != 1024) {
        fuzz::property_failed("the default size is not 1024x1024");
    }
    if (g.steps < 1 || g.steps > std::min(lim.max_steps, kMaxSteps)) fuzz::property_failed(fmt::format("steps = {}", g.steps));
    if (!given(body, "num_inference_steps") && g.steps != std::min(lim.max_steps, qwen ? 50 : 9))
        fuzz::property_failed(fmt::format("default steps = {}", g.steps));
    if (g.max_sequence_length < 1 ||
        g.max_sequence_length > (qwen ? int(kQwenImageMaxSequenceLength) : kMaxSequenceLength))
        fuzz::property_failed(fmt::format("max_sequence_length = {}", g.max_sequence_length));
    if (!std::isfinite(g.guidance) || g.guidance < 0 || g.guidance > 100)
        fuzz::property_failed(fmt::format("guidance = {}", g.guidance));
    if (qwen) {
        if (given(body, "guidance_scale") || g.guidance != 0)
            fuzz::property_failed("a Qwen-Image request with a guidance_scale");
        if (!std::isfinite(r.true_cfg_scale) || r.true_cfg_scale < 0 || r.true_cfg_scale > 100)
            fuzz::property_failed(fmt::format("true_cfg_scale = {}", r.true_cfg_scale));
        if (const json* p = given(body, "true_cfg_scale"); p ? float(p->get<double>()) != r.true_cfg_scale
                                                              : r.true_cfg_scale != 4.0f)
            fuzz::property_failed("the true_cfg_scale is not the body's");
        if (r.negative_prompt != (given(body, "negative_prompt") != nullptr))
            fuzz::property_failed("whether a negative prompt was given is not the body's");
    } else if (const json* p = given(body, "true_cfg_scale"); p && p->get<double>() != 1.0) {
        fuzz::property_failed("a Z-Image request with a true_cfg_scale other than 1");
    }
    if (g.seed > uint64_t(INT64_MAX)) fuzz::property_failed(fmt::format("seed = {}", g.seed));
    if (const json* p = given(body, "seed"); p && *p != g.seed) fuzz::property_failed("the seed is not the body's");
    const int64_t work = int64_t(r.n) * g.steps * g.width * g.height;
    if (work > lim.max_work) fuzz::property_failed(fmt::format("work {} over the limit {}", work, lim.max_work));
}

void check_error(const ApiError& e) {
    if (e.status < 400 || e.status > 499) fuzz::property_failed(fmt::format("status {}: {}", e.status, e.message));
    if (e.message.empty()) fuzz::property_failed("an API error without a message");
    // What the server answers: must serialize, and read back as JSON with the same shape.
    const json back = json::parse(server::to_text(server::error_body(e)));
    if (!back.contains("error") || !back["error"]["message"].is_string() || !back["error"]["type"].is_string())
        fuzz::property_failed("the error body does not read back");
}

void run(const std::string& text, const json* body, const Limits& lim, Family family) {
    try {
        const json parsed = body ? json() : server::parse_request_body(text);
        const json& b = body ? *body : parsed;
        check_request(server::parse_image_request(b, lim, kModelId, family), b, lim, family);
    } catch (const ApiError& e) {
        check_error(e);
    } catch (const std::exception& e) {
        fuzz::property_failed(fmt::format("uncaught {}: {}", typeid(e).name(), e.what()));
    } catch (...) {
        fuzz::property_failed("an exception that is not a std::exception");
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string text(reinterpret_cast<const char*>(data), size);
    for (Family f : {Family::ZImage, Family::QwenImage}) run(text, nullptr, Limits{}, f);
    // The same body against small limits, so that the fuzzer reaches each bound.
    json body;
    try {
        body = server::parse_request_body(text);
    } catch (const ApiError&) {
        return 0;
    }
    Limits small;
    small.max_prompt_bytes = 16;
    small.max_n = 2;
    small.max_steps = 4;
    small.max_side = 64;
    small.max_work = int64_t(2) * 4 * 32 * 64;
    for (Family f : {Family::ZImage, Family::QwenImage}) run(text, &body, small, f);
    return 0;
}
