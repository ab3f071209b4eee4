// The request side of `qdit serve` without HTTP or a model: the bounds on a
// request, the API's error shape, and the parser that turns the JSON body of
// POST /v1/images/generations (and /v1/jobs) into generation options. The
// server links it, and so does the fuzz target of the request parser.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "pipeline/qwen_image_pipeline.h"
#include "pipeline/zimage_pipeline.h"

namespace qdit::server {

// Bounds on what one request may ask for; larger requests get a 4xx naming the field.
struct Limits {
    size_t max_body_bytes = 1 << 20;     // request body (413 beyond)
    size_t max_prompt_bytes = 8192;      // prompt and negative_prompt, each
    int max_n = 10;                      // images per request (OpenAI's bound)
    int max_steps = 200;                 // num_inference_steps
    int max_side = 2048;                 // width and height
    int64_t max_work = int64_t(10) * 50 * 1024 * 1024;  // n × steps × width × height
    size_t kept_jobs = 100;              // finished async jobs kept for GET /v1/jobs/{id} ...
    size_t kept_bytes = size_t(1) << 30; // ... and the bytes of their images and events
};

// Width and height of a request are multiples of this (the VAE's scale × the
// transformer's patch); the model may ask more (ZImagePipeline::check).
inline constexpr int kSizeMultiple = 16;

// An error answered to the client in OpenAI's shape:
// {"error": {"message", "type", "param", "code"}}.
struct ApiError {
    int status;
    std::string message;
    std::string param;  // the request field concerned, or empty
    std::string type;
    std::string code;
    ApiError(int status, std::string message, std::string param = "", std::string type = "invalid_request_error",
             std::string code = "")
        : status(status), message(std::move(message)), param(std::move(param)), type(std::move(type)),
          code(std::move(code)) {}
};

// {"error": {...}} for `e`.
nlohmann::json error_body(const ApiError& e);

// The JSON text of a response body. Messages may quote the request; a cut
// multi-byte character becomes U+FFFD instead of an exception.
std::string to_text(const nlohmann::json& j);

// A 400 naming the request field.
[[noreturn]] void bad_field(const std::string& field, const std::string& message);

// Which pipeline the server runs: what a request may ask for depends on it.
enum class Family { ZImage, QwenImage };

// One image request, validated: `gen` holds the first image's seed; image i uses seed + i.
// For Qwen-Image, gen.guidance is 0 and the two fields below say how true CFG runs.
struct ImageRequest {
    GenerateOptions gen;
    int n = 1;
    float true_cfg_scale = 4.0f;    // Qwen-Image: 'true_cfg_scale' (default 4.0)
    bool negative_prompt = false;   // Qwen-Image: whether 'negative_prompt' was given (even empty)

    // The Qwen-Image options of this request (the first image's seed).
    QwenImageGenerateOptions qwen() const;
};

// The request body as JSON; anything that is not JSON is a 400.
nlohmann::json parse_request_body(const std::string& body);

// Validates an image request against the limits (not against the model:
// the server asks the loaded pipeline for that). Throws ApiError (400, or 404
// for a model other than `model_id`); a request it returns has a non-empty
// prompt and each prompt within max_prompt_bytes, 1 <= n <= max_n, width and
// height multiples of kSizeMultiple from kSizeMultiple to max_side, 1 <= steps
// <= min(max_steps, kMaxSteps), a seed from 0 to INT64_MAX and
// n × steps × width × height <= max_work; and, by family:
//   - Z-Image: 1 <= max_sequence_length <= kMaxSequenceLength, a guidance from
//     0 to 100, no 'true_cfg_scale' other than 1 (a 400 naming it); 9 steps by default;
//   - Qwen-Image: 1 <= max_sequence_length <= kQwenImageMaxSequenceLength, a
//     true_cfg_scale from 0 to 100 (default 4), no 'guidance_scale' (a 400
//     naming it); 50 steps by default (at most max_steps).
ImageRequest parse_image_request(const nlohmann::json& body, const Limits& lim, const std::string& model_id,
                                 Family family = Family::ZImage);

}  // namespace qdit::server
