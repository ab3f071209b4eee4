// What the front ends (the command line, the HTTP server, the Python module)
// share: resolving a model folder, naming a device, and the PNG metadata of a
// generated image.
#pragma once
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "pipeline/qwen_image_pipeline.h"
#include "pipeline/tiny_model.h"
#include "pipeline/zimage_pipeline.h"

namespace qdit {

// "cpu", "cuda" (GPU 0) or "cuda:N"; UsageError naming `field` otherwise.
Device parse_device(const std::string& s, const std::string& field = "--device");

// The device a front end uses when none is named: "cuda" (GPU 0) when this build has the CUDA
// backend and a GPU is visible and the pipeline runs in bf16 (a GPU runs nothing else), else "cpu".
std::string default_device_name(DType dtype = DType::BF16);

// The folder to load: `model`, or (when empty) the built-in tiny pipeline
// `builtin`, written into the cache first if needed; *tiny tells which.
std::string resolve_model_dir(const std::string& model, bool* tiny = nullptr,
                              TinyPipeline builtin = TinyPipeline::ZImage);

// Load progress for a big model: while it lives, and when `enabled` (the CLI: stderr is a terminal)
// and the folder's safetensors files hold at least `min_bytes`, one line on `out` per tenth of
// those bytes handed to the loaders (weights loaded later, as with offload_text_encoder, included):
// "loading weights:  30% (R of T GB, S GB/s)". Tiny models get none. One at a time per process
// (it sets io's checkpoint read observer).
class LoadProgress {
public:
    LoadProgress(const std::string& dir, bool enabled, uint64_t min_bytes = uint64_t(1) << 30,
                 std::FILE* out = stderr);
    ~LoadProgress();
    LoadProgress(const LoadProgress&) = delete;
    LoadProgress& operator=(const LoadProgress&) = delete;

private:
    std::FILE* out_;
    uint64_t total_ = 0, read_ = 0;
    int shown_ = 0;
    bool active_ = false;
    std::chrono::steady_clock::time_point t0_;
};

// The pipeline's messages name the command line's flags (--steps, --width,
// --max-sequence-length, ...); a front end whose arguments are named otherwise
// (the server's JSON fields, the Python module's arguments) renames them:
// each `flag` followed by a character that cannot continue a flag becomes `name`.
std::string rename_flags(std::string message,
                         const std::vector<std::pair<std::string, std::string>>& flag_to_name);

// The tEXt chunks every generated PNG carries: prompt, negative_prompt, seed,
// steps, size, guidance, model, quantization, device, software.
std::vector<std::pair<std::string, std::string>> image_metadata(const GenerateOptions& o,
                                                                const std::string& model,
                                                                const std::string& quantization,
                                                                const std::string& device);

// The same for a Qwen-Image run: true_cfg_scale (and whether true CFG ran) in place of guidance;
// negative_prompt is absent when none was given.
std::vector<std::pair<std::string, std::string>> image_metadata(const QwenImageGenerateOptions& o,
                                                                const std::string& model,
                                                                const std::string& quantization,
                                                                const std::string& device);

}  // namespace qdit
