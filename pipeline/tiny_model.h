// The built-in tiny pipelines: a diffusers ZImagePipeline or QwenImagePipeline
// folder with random weights (same layout, key names and config fields as the
// real model), written deterministically so `qdit generate` runs with no
// download.
#pragma once
#include <string>

#include "io/cache.h"  // default_cache_dir

namespace qdit {

// The built-in pipelines, by the name `qdit generate --pipeline` takes.
enum class TinyPipeline { ZImage, QwenImage };
inline constexpr const char* kTinyPipelineNames = "zimage, qwen-image";
// "zimage" or "qwen-image"; UsageError naming `field` otherwise.
TinyPipeline parse_tiny_pipeline(const std::string& name, const std::string& field = "--pipeline");
// "Z-Image" or "Qwen-Image".
const char* tiny_pipeline_title(TinyPipeline p);

// Returns <cache_dir>/tiny-zimage-v1 (tiny-qwen-image-v1), writing it first if
// it is not there (into a temporary folder renamed at the end, so a
// half-written model is never used).
std::string ensure_tiny_pipeline(const std::string& cache_dir, TinyPipeline p);
inline std::string ensure_tiny_zimage(const std::string& cache_dir) {
    return ensure_tiny_pipeline(cache_dir, TinyPipeline::ZImage);
}

// Writes the tiny pipeline into `dir` (which must not exist).
void write_tiny_zimage(const std::string& dir);
// The tiny QwenImagePipeline: Qwen2.5-VL text encoder (2 layers, width 64), a
// 2-block Qwen-Image transformer (2 heads of 16) and an AutoencoderKLQwenImage
// (base_dim 8), with Qwen-Image's own scheduler config. Its tokenizer is the
// byte-level one of the tiny Z-Image model: the template's system prompt is
// longer than 34 tokens there, so part of it stays in the embeddings (as it
// would with any tokenizer other than Qwen2's).
void write_tiny_qwen_image(const std::string& dir);

}  // namespace qdit
