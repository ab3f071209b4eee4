// Request validation of `qdit serve` (see request.h); no HTTP and no model here.
#include "server/request.h"

#include <algorithm>
#include <cmath>
#include <random>

#include <fmt/format.h>

#include "pipeline/qwen_image_prompt.h"

namespace qdit::server {

using nlohmann::json;

json error_body(const ApiError& e) {
    json err = {{"message", e.message},
                {"type", e.type},
                {"param", e.param.empty() ? json(nullptr) : json(e.param)},
                {"code", e.code.empty() ? json(nullptr) : json(e.code)}};
    return {{"error", err}};
}

std::string to_text(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

void bad_field(const std::string& field, const std::string& message) {
    throw ApiError{400, message, field};
}

json parse_request_body(const std::string& body) {
    try {
        return json::parse(body);
    } catch (const json::exception& e) {
        // parse_error, and out_of_range for a number beyond double's range (1e400).
        throw ApiError{400, fmt::format("the request body is not valid JSON: {}", e.what()), ""};
    }
}

namespace {

const json* field(const json& body, const char* key) {
    auto it = body.find(key);
    return it == body.end() || it->is_null() ? nullptr : &*it;
}

std::string string_field(const json& body, const char* key, size_t max_bytes) {
    const json* v = field(body, key);
    if (!v) return {};
    if (!v->is_string()) bad_field(key, fmt::format("'{}' must be a string", key));
    std::string s = v->get<std::string>();
    if (s.size() > max_bytes)
        bad_field(key, fmt::format("'{}' is {} bytes long; the limit is {}", key, s.size(), max_bytes));
    return s;
}

int64_t int_field(const json& body, const char* key, int64_t lo, int64_t hi, int64_t dflt) {
    const json* v = field(body, key);
    if (!v) return dflt;
    if (!v->is_number_integer()) bad_field(key, fmt::format("'{}' must be an integer", key));
    const bool out = v->is_number_unsigned() ? v->get<uint64_t>() > uint64_t(hi) || int64_t(v->get<uint64_t>()) < lo
                                             : v->get<int64_t>() < lo || v->get<int64_t>() > hi;
    if (out)
        bad_field(key, fmt::format("'{}' must be between {} and {} (got {})", key, lo, hi, v->dump()));
    return v->get<int64_t>();
}

double number_field(const json& body, const char* key, double dflt) {
    const json* v = field(body, key);
    if (!v) return dflt;
    if (!v->is_number()) bad_field(key, fmt::format("'{}' must be a number", key));
    return v->get<double>();
}

// "WxH", each side a positive multiple of `multiple` up to `max_side`.
void parse_size(const std::string& s, int multiple, int max_side, int* w, int* h) {
    auto x = s.find('x');
    auto digits = [](const std::string& t) {
        return !t.empty() && t.size() <= 6 && t.find_first_not_of("0123456789") == std::string::npos;
    };
    if (x == std::string::npos || !digits(s.substr(0, x)) || !digits(s.substr(x + 1)))
        bad_field("size", fmt::format("'size' must be WIDTHxHEIGHT, e.g. \"1024x1024\" (got \"{}\")", s));
    *w = std::stoi(s.substr(0, x));
    *h = std::stoi(s.substr(x + 1));
    for (int v : {*w, *h})
        if (v <= 0 || v % multiple || v > max_side)
            bad_field("size", fmt::format("'size' {}: width and height must be multiples of {} from {} to {}", s,
                                          multiple, multiple, max_side));
}

// OpenAI's fields, then the reference server's.
const char* const kKnownFields[] = {"prompt", "model", "n", "size", "response_format", "output_format", "user",
                                    "negative_prompt", "num_inference_steps", "guidance_scale", "true_cfg_scale",
                                    "seed", "max_sequence_length"};

}  // namespace

QwenImageGenerateOptions ImageRequest::qwen() const {
    QwenImageGenerateOptions o;
    o.prompt = gen.prompt;
    if (negative_prompt) o.negative_prompt = gen.negative_prompt;
    o.steps = gen.steps;
    o.width = gen.width;
    o.height = gen.height;
    o.seed = gen.seed;
    o.true_cfg_scale = true_cfg_scale;
    o.max_sequence_length = gen.max_sequence_length;
    return o;
}

ImageRequest parse_image_request(const json& body, const Limits& lim, const std::string& model_id, Family family) {
    const bool qwen = family == Family::QwenImage;
    if (!body.is_object()) throw ApiError{400, "the request body must be a JSON object", ""};
    for (auto it = body.begin(); it != body.end(); ++it) {
        bool known = false;
        for (const char* k : kKnownFields) known = known || it.key() == k;
        if (!known) bad_field(it.key().substr(0, 64), fmt::format("unknown field '{}'", it.key().substr(0, 64)));
    }
    ImageRequest r;
    if (!field(body, "prompt")) bad_field("prompt", "'prompt' is required");
    r.gen.prompt = string_field(body, "prompt", lim.max_prompt_bytes);
    if (r.gen.prompt.empty()) bad_field("prompt", "'prompt' must not be empty");
    r.gen.negative_prompt = string_field(body, "negative_prompt", lim.max_prompt_bytes);
    r.negative_prompt = field(body, "negative_prompt") != nullptr;
    std::string model = string_field(body, "model", 256);
    if (!model.empty() && model != model_id)
        throw ApiError{404, fmt::format("model '{}' does not exist; this server serves '{}'", model, model_id),
                       "model", "invalid_request_error", "model_not_found"};
    std::string format = string_field(body, "response_format", 64);
    if (!format.empty() && format != "b64_json")
        bad_field("response_format",
                  fmt::format("'response_format' \"{}\" is not supported: only \"b64_json\"", format));
    std::string output = string_field(body, "output_format", 64);
    if (!output.empty() && output != "png")
        bad_field("output_format", fmt::format("'output_format' \"{}\" is not supported: only \"png\"", output));
    string_field(body, "user", 256);  // accepted, not used
    r.n = int(int_field(body, "n", 1, lim.max_n, 1));
    std::string size = string_field(body, "size", 64);
    if (size.empty() || size == "auto") size = "1024x1024";
    parse_size(size, kSizeMultiple, lim.max_side, &r.gen.width, &r.gen.height);
    // The default (Z-Image-Turbo's 9, Qwen-Image's 50) never exceeds the server's own limit.
    const int max_steps = std::min(lim.max_steps, kMaxSteps);
    r.gen.steps = int(int_field(body, "num_inference_steps", 1, max_steps, std::min(qwen ? 50 : 9, max_steps)));
    r.gen.max_sequence_length = int(int_field(body, "max_sequence_length", 1,
                                              qwen ? kQwenImageMaxSequenceLength : kMaxSequenceLength, 512));
    if (qwen) {
        // Qwen-Image's guidance is true CFG; guidance_scale is Z-Image's.
        if (field(body, "guidance_scale"))
            bad_field("guidance_scale", "'guidance_scale' applies to Z-Image only; Qwen-Image's guidance is "
                                        "'true_cfg_scale' (with 'negative_prompt')");
        const double t = number_field(body, "true_cfg_scale", 4.0);
        if (!std::isfinite(t) || t < 0 || t > 100)
            bad_field("true_cfg_scale", "'true_cfg_scale' must be from 0 to 100");
        r.true_cfg_scale = float(t);
    } else {
        double g = number_field(body, "guidance_scale", 0.0);
        if (!std::isfinite(g) || g < 0 || g > 100)
            bad_field("guidance_scale", "'guidance_scale' must be from 0 to 100");
        r.gen.guidance = float(g);
        // Qwen-Image's true CFG scale; Z-Image has none (its CFG is guidance_scale).
        double t = number_field(body, "true_cfg_scale", 1.0);
        if (t != 1.0)
            bad_field("true_cfg_scale", "'true_cfg_scale' applies to Qwen-Image only; Z-Image's classifier-free "
                                        "guidance is 'guidance_scale'");
    }
    if (field(body, "seed")) {
        r.gen.seed = uint64_t(int_field(body, "seed", 0, INT64_MAX, 0));
    } else {
        std::random_device rd;
        r.gen.seed = rd() & 0x7fffffffu;
    }
    const int64_t work = int64_t(r.n) * r.gen.steps * r.gen.width * r.gen.height;
    if (work > lim.max_work)
        bad_field("n", fmt::format("'n' × 'num_inference_steps' × width × height = {} × {} × {} × {} = {} exceeds "
                                   "this server's limit of {}",
                                   r.n, r.gen.steps, r.gen.width, r.gen.height, work, lim.max_work));
    return r;
}

}  // namespace qdit::server
