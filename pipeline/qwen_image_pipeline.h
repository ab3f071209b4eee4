// QwenImagePipeline (diffusers 0.42.1), text to image: prompt (and negative prompt) → Qwen2.5-VL
// embeddings (pipeline/qwen_image_prompt.h) → flow-matching denoise loop with the Qwen-Image
// transformer on packed latents, with true CFG → unpack, denormalize, AutoencoderKLQwenImage decode
// → 8-bit RGB image. The three models run on the CPU or, through ops::Context, a GPU; the tokenizer
// runs on the host, the guidance and the scheduler's step where the latents stay between steps, on
// the transformer's device (ops::true_cfg_euler_step, the host's arithmetic).
//
// What diffusers' __call__ does, and this pipeline with it:
//   - latents [1, 1, C, H/8, W/8] (C = transformer in_channels / 4) packed 2x2 into
//     [1, (H/16)(W/16), 4C]: token (i, j) row-major, feature c·4 + dy·2 + dx (c slowest); they are
//     held in the prompt embeddings' dtype (the pipeline's dtype) between steps;
//   - sigmas linspace(1, 1/N, N) (numpy, f64 → f32), shifted with mu = calculate_shift(tokens) and
//     the scheduler config's time shift and shift_terminal; the transformer's timestep is
//     dt(dt(t) / 1000), dt the latents' dtype (bf16 rounds t before the division);
//   - true CFG when true_cfg_scale > 1 and a negative prompt is given (even an empty one):
//     comb = neg + s·(cond − neg), then comb·(‖cond‖ / ‖comb‖) per token over the last dim, each
//     operation rounded to the dtype; diffusers calls the transformer once per prompt, this
//     pipeline once per step on a batch of 2 under a text mask (qwen_image_cfg_batch), the same
//     velocities up to rounding;
//   - the Euler step in f32 on the upcast latents with dt·v rounded to the velocity's dtype, the
//     result rounded back to it;
//   - unpack to [1, C, H/8, W/8], z / (1 / std) + mean, decode, postprocess (x·0.5 + 0.5, clamp, ·255,
//     round half to even).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "core/tensor.h"
#include "pipeline/pipeline_common.h"

namespace qdit {

struct QwenImageGenerateOptions {
    std::string prompt;
    std::optional<std::string> negative_prompt;  // none: no true CFG (diffusers' None)
    int steps = 50;
    int width = 1024, height = 1024;             // multiples of 16 (the VAE's 8 x the 2x2 packing)
    uint64_t seed = 0;
    float true_cfg_scale = 4.0f;                 // true CFG runs when > 1 and a negative prompt is given
    int max_sequence_length = 512;               // prompt tokens kept after the template's 34, 1 to 1024
    // Optional initial noise: unpacked [1, C, H/8, W/8] (or [C, H/8, W/8], [1, 1, C, H/8, W/8],
    // [1, C, 1, H/8, W/8]) or packed [1, (H/16)(W/16), 4C] as diffusers' latents= takes it. Rounded
    // to the pipeline's dtype, as diffusers does.
    Tensor latents;

    // Whether this request runs true CFG (diffusers: do_true_cfg).
    bool true_cfg() const { return true_cfg_scale > 1.0f && negative_prompt.has_value(); }
};

class QwenImagePipeline {
public:
    // `dir` is a diffusers QwenImagePipeline folder: model_index.json, scheduler/, text_encoder/,
    // tokenizer/, transformer/, vae/. Every component's config and checkpoint header, and the
    // weights' memory need against the budget, are checked before any weight is read. The
    // transformer is quantized as opt.transformer_quant says, the text encoder as
    // opt.text_encoder_quant. One device (opt.gpus must be 1).
    QwenImagePipeline(const std::string& dir, const PipelineOptions& opt);
    // The same, with `planned` checked (as check() does) before any weight is read.
    QwenImagePipeline(const std::string& dir, const PipelineOptions& opt, const QwenImageGenerateOptions& planned);
    ~QwenImagePipeline();

    // Bounds that need no model (steps, sizes, max sequence length, true_cfg_scale, latents dtype):
    // UsageError / ShapeError naming the flag.
    static void check_limits(const QwenImageGenerateOptions& o);
    // check_limits, then against the model: size a multiple of the VAE scale x 2, the latents' shape.
    void check(const QwenImageGenerateOptions& o) const;

    // progress(step, total, seconds of that step) after each denoising step. result.latents holds
    // the final packed latents [1, L, 4C] (F32, values of the pipeline's dtype).
    GenerateResult generate(const QwenImageGenerateOptions& o,
                            const std::function<void(int, int, double)>& progress = {}) const;

    // Tokens of the prompt in the template, before the first 34 are dropped and any cut.
    int64_t prompt_tokens(const std::string& prompt) const;
    // The prompt's embeddings as the transformer receives them: [1, L, hidden] in the pipeline's dtype.
    Tensor encode_prompt(const std::string& prompt, int max_sequence_length) const;

    // Whether the text encoder's weights are loaded now (with offload_text_encoder: only while encoding).
    bool text_encoder_loaded() const;

    int transformer_int8_layers() const;
    int text_encoder_int8_layers() const;
    int64_t latent_channels() const;  // C
    DType dtype() const;

private:
    void open(const std::string& dir, const PipelineOptions& opt);
    void load();

    struct Parts;
    std::unique_ptr<Parts> p_;
};

// diffusers' QwenImagePipeline sigmas: numpy's linspace(1, 1/steps, steps) in f64, cast to f32.
std::vector<float> qwen_image_default_sigmas(int steps);

// Packing of QwenImagePipeline: [1, C, h, w] (h, w even; any float dtype) → [1, (h/2)(w/2), 4C] F32
// with feature c·4 + dy·2 + dx, and back.
Tensor pack_qwen_image_latents(const Tensor& latents);
Tensor unpack_qwen_image_latents(const Tensor& packed, int64_t h, int64_t w);

// True CFG's text input, one transformer call for both prompts: the prompt's and the negative
// prompt's embeddings ([1, T0, D] and [1, T1, D] on the host, one dtype) as embeds [2, T, D],
// T = max(T0, T1), the shorter zero-padded at the end, with the text mask U8 [2, T] (1: a real
// token). Masked tokens are never keys, so each item's velocity is that of its prompt alone (up to
// rounding), as diffusers' two calls give it.
struct QwenImageCfgBatch {
    Tensor embeds, mask;
};
QwenImageCfgBatch qwen_image_cfg_batch(const Tensor& pos, const Tensor& neg);

}  // namespace qdit
