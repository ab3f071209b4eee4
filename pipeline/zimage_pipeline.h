// ZImagePipeline (diffusers): prompt → Qwen3 embeddings → flow-matching
// denoise loop with the Z-Image transformer (optional CFG) → VAE decode →
// 8-bit RGB image, with its models on the CPU or on a CUDA GPU
// (pipeline/zimage_components.h). The tokenizer runs on the host; the
// guidance and the scheduler's step run where the loop keeps the latents
// (ops::euler_step; on one GPU, that GPU), with the host's f32 arithmetic.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "core/tensor.h"
#include "pipeline/pipeline_common.h"

namespace qdit {

// Z-Image's bound on the sequence length (the shared bounds: pipeline/pipeline_common.h). Width and
// height are also bounded by the transformer's RoPE table (axes_lens) and must be multiples of the
// VAE scale x the patch.
inline constexpr int kMaxSequenceLength = 4096;  // diffusers' default is 512

struct GenerateOptions {
    std::string prompt;
    std::string negative_prompt;  // used with guidance > 0
    int steps = 9;
    int width = 1024, height = 1024;
    uint64_t seed = 0;
    float guidance = 0.0f;        // CFG when > 0, as ZImagePipeline does
    int max_sequence_length = 512;
    Tensor latents;               // optional initial noise [1, C, H/8, W/8] (or [C, H/8, W/8])
};

class ZImagePipeline {
public:
    // `dir` is a diffusers ZImagePipeline folder: model_index.json, scheduler/,
    // text_encoder/, tokenizer/, transformer/, vae/. Every component's config
    // is checked, and the weights' memory need against the budget, before any
    // weight is read.
    ZImagePipeline(const std::string& dir, const PipelineOptions& opt);
    // The same, with `planned` checked (as check() does) before any weight is
    // read, so a bad request fails fast.
    ZImagePipeline(const std::string& dir, const PipelineOptions& opt, const GenerateOptions& planned);
    ~ZImagePipeline();

    // Checks the options against the bounds above and the model: size a
    // multiple of the VAE scale x the patch and within the RoPE table, the
    // latents' shape, the prompts' token counts within the RoPE table.
    // UsageError / ShapeError / ConfigError names the bad value and the flag
    // or config field concerned.
    void check(const GenerateOptions& o) const;
    // The bounds that need no model (steps, sizes, sequence length, guidance,
    // latents dtype): UsageError naming the flag.
    static void check_limits(const GenerateOptions& o);

    // progress(step, total, seconds of that step) after each denoising step.
    GenerateResult generate(const GenerateOptions& o,
                            const std::function<void(int, int, double)>& progress = {}) const;

    // Tokens of the prompt after the chat template, before any cut to the
    // maximum sequence length.
    int64_t prompt_tokens(const std::string& prompt) const;

    // The prompt's embeddings as the transformer receives them: [tokens, hidden].
    Tensor encode_prompt(const std::string& prompt, int max_sequence_length) const;

    int transformer_int8_layers() const;
    int text_encoder_int8_layers() const;
    int64_t latent_channels() const;

private:
    void open(const std::string& dir, const PipelineOptions& opt);  // configs, checkpoints' headers
    void load();                                                     // the weights

    struct Parts;
    std::unique_ptr<Parts> p_;
};

}  // namespace qdit
