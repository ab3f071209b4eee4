// ZImagePipeline (diffusers): prompt → Qwen3 embeddings → flow-matching
// denoise loop with the Z-Image transformer (optional CFG) → VAE decode →
// 8-bit RGB image, with its models on the CPU or on a CUDA GPU
// (pipeline/zimage_components.h); tokenizer, scheduler and guidance run on
// the host either way.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "core/tensor.h"
#include "models/text/tokenizer.h"
#include "pipeline/scheduler.h"
#include "quant/config.h"

namespace qdit {

// Bounds of generate's inputs, checked before any weight is read
// (docs/usage.md). Width and height are also bounded by the transformer's
// RoPE table (axes_lens) and must be multiples of the VAE scale x the patch.
inline constexpr int kMaxSteps = 1000;
inline constexpr int kMaxImageSide = 16384;
inline constexpr int kMaxSequenceLength = 4096;  // diffusers' default is 512

struct PipelineOptions {
    DType dtype = DType::BF16;        // activations of every component (F32 or BF16; BF16 on CUDA)
    QuantConfig transformer_quant;    // the transformer's Linear layers
    QuantConfig text_encoder_quant;   // the text encoder's (off unless asked for)
    Device device;                    // where the three models run (CPU, or CUDA GPU `index` in bf16)
    int gpus = 1;                     // CUDA only: > 1 splits the transformer over NCCL on GPUs
                                      // 0..gpus-1 (text encoder and VAE on GPU 0; device.index 0)
    bool sequence_parallel = false;   // how (gpus > 1): tensor parallel, or sequence parallel (Ulysses)
    uint64_t memory_budget = 0;       // bytes the weights may take; 0: the machine's physical
                                      // memory on the CPU (on CUDA: not checked yet)
    bool offload_text_encoder = false;  // the text encoder is loaded for each encoding and freed right
                                        // after; the transformer is loaded after the first encoding, so
                                        // the two never share the device's memory in a one-image run
    bool vae_tiling = false;          // Qwen-Image: decode in tiles (AutoencoderKLQwenImage::decode_tiled);
                                      // Z-Image refuses it
};

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

struct GenerateResult {
    Tensor image;    // U8 [H, W, 3]
    Tensor latents;  // F32 [1, C, h, w], the final latents
    double text_seconds = 0, denoise_seconds = 0, vae_seconds = 0;
    double load_seconds = 0;       // weights loaded during generate (offload_text_encoder), not in the above
    size_t device_peak_bytes = 0;  // peak bytes held on the GPU (0 on the CPU)
    size_t device_weight_bytes = 0;           // weights held on the GPU at the end (0 on the CPU)
    size_t device_activation_peak_bytes = 0;  // peak of the GPU's activations and workspaces (0 on the CPU)
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

// Seeded standard-normal noise (mt19937_64 + Box-Muller), the same for the
// same seed and shape on every machine. Not torch's generator: pass the
// reference's noise with GenerateOptions::latents to compare implementations.
Tensor seeded_noise(const Shape& shape, uint64_t seed);

struct PreparedModel;
// Bytes a model's weights take once loaded: every parameter in the compute dtype, except int8
// Linear weights (one byte each plus an f32 scale per row). The pipelines check the sum against
// the memory budget before loading.
uint64_t weight_bytes(const PreparedModel& m, DType compute);

}  // namespace qdit
