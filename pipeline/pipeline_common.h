// What the two text-to-image pipelines (ZImagePipeline, QwenImagePipeline) share: their options
// and result, the bounds of a request that need no model, and how a diffusers pipeline folder is
// opened before any weight is read (model_index.json and the component folders, the scheduler,
// the tokenizer, the text encoder's and the transformer's configs and checkpoint headers) and its
// weights checked against the memory budget.
#pragma once
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "core/clock.h"
#include "core/tensor.h"
#include "models/loader.h"
#include "models/text/tokenizer.h"
#include "ops/context.h"
#include "pipeline/scheduler.h"
#include "quant/config.h"

namespace qdit {

// Bounds of a request that hold for both pipelines, checked before any weight is read
// (docs/usage.md); each pipeline adds its own (sizes against its VAE and patch, sequence length).
inline constexpr int kMaxSteps = 1000;
inline constexpr int kMaxImageSide = 16384;

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
    std::optional<bool> offload_modulation;  // Qwen-Image on a GPU: the transformer's modulation weights
                                             // in pinned host memory (qwen_image::Placement); unset: on
                                             // (the denoising loop never reads them, set_timesteps does
                                             // once per schedule). Z-Image refuses true, unset is off
    bool vae_tiling = false;          // Qwen-Image: decode in tiles (AutoencoderKLQwenImage::decode_tiled);
                                      // Z-Image refuses it
    bool fp8_attention = false;       // the transformer's attention in FP8 (ops::AttentionImpl::Fp8): a
                                      // Hopper or Blackwell GPU, else the pipeline refuses to open
};

struct GenerateResult {
    Tensor image;    // U8 [H, W, 3]
    Tensor latents;  // F32 [1, C, h, w], the final latents
    double text_seconds = 0, denoise_seconds = 0, vae_seconds = 0;
    double load_seconds = 0;       // weights loaded during generate (offload_text_encoder), not in the above
    size_t device_peak_bytes = 0;  // peak bytes held on the GPU (0 on the CPU)
    size_t device_weight_bytes = 0;           // weights held on the GPU at the end (0 on the CPU)
    size_t device_activation_peak_bytes = 0;  // peak of the GPU's activations and workspaces (0 on the CPU)

    // The three device_* fields from ctx's device (zeros on the CPU).
    void record_device_memory(const ops::Context& ctx);
};

// The _class_name of a diffusers pipeline folder's model_index.json ("ZImagePipeline",
// "QwenImagePipeline", ...): IoError / ConfigError when the folder or its index is unreadable.
std::string pipeline_class(const std::string& dir);

// The pipeline's dtype: F32 or BF16, and BF16 on CUDA (UsageError).
void check_pipeline_dtype(const PipelineOptions& opt);

// --width / --height within 1..kMaxImageSide and --steps within 1..kMaxSteps (UsageError naming the
// flag), and initial latents, when given, of a floating-point dtype (ShapeError).
void check_size_and_steps(int width, int height, int steps);
void check_latents_dtype(const Tensor& latents);

// What both pipelines read from their folder, in this order, before any weight: model_index.json
// must name `pipeline` (its _class_name) and each of scheduler, text_encoder, tokenizer,
// transformer and vae as [library, class] with the component's folder present (`vae_class` is the
// example the message gives); then the scheduler's config, the tokenizer, and the text encoder's
// and the transformer's configs, checkpoint headers and quantization plans (prepare_model, with
// opt's QuantConfigs). IoError / ConfigError / ShapeError name the file and the field.
struct PipelineFolder {
    PipelineFolder(const std::string& dir, const PipelineOptions& opt, const std::string& pipeline,
                   const std::string& vae_class);

    std::string dir;
    PipelineOptions opt;
    FlowMatchConfig scheduler;
    text::BpeTokenizer tokenizer;
    PreparedModel text_prepared, transformer_prepared;

    // dir/<component> (a component folder, or a file under dir).
    std::string path(const std::string& component) const;
    // The three models' weights in opt.dtype against opt.memory_budget (0: the machine's physical
    // memory on the CPU, unchecked on a GPU): ResourceError listing each model's share.
    void require_weight_memory(uint64_t vae_bytes) const;
};

// Bytes a model's weights take once loaded: every parameter in the compute dtype, except int8
// Linear weights (one byte each plus an f32 scale per row). The pipelines check the sum against
// the memory budget before loading.
uint64_t weight_bytes(const PreparedModel& m, DType compute);

// Seeded standard-normal noise (mt19937_64 + Box-Muller), the same for the same seed and shape on
// every machine. Not torch's generator: pass the reference's noise as the request's latents to
// compare implementations.
Tensor seeded_noise(const Shape& shape, uint64_t seed);

// A model made when first asked for (timed into *seconds) and freed by release(); asked for again, it
// is made again.
template <class M>
class Lazy {
public:
    explicit Lazy(std::function<std::unique_ptr<M>()> make) : make_(std::move(make)) {}
    const M& get(double* seconds = nullptr) const {
        if (!m_) {
            const auto t0 = std::chrono::steady_clock::now();
            m_ = make_();
            if (seconds) *seconds += seconds_since(t0);
        }
        return *m_;
    }
    void release() const { m_.reset(); }
    bool loaded() const { return m_ != nullptr; }

private:
    std::function<std::unique_ptr<M>()> make_;
    mutable std::unique_ptr<M> m_;
};

}  // namespace qdit
