#include "pipeline/zimage_pipeline.h"

#include <chrono>
#include <cmath>
#include <filesystem>

#include "core/error.h"
#include "io/files.h"
#include "models/text/qwen3.h"
#include "models/vae/autoencoder_kl.h"
#include "models/zimage/transformer.h"
#include "ops/elementwise.h"
#include "ops/image.h"
#include "pipeline/chat_template.h"
#include "pipeline/zimage_components.h"

namespace fs = std::filesystem;

namespace qdit {

namespace {

// The three models on the CPU.
class CpuComponents final : public ZImageComponents {
public:
    CpuComponents(const std::string& dir, const PipelineOptions& opt, const PreparedModel& text,
                  const PreparedModel& transformer)
        : ZImageComponents(opt.offload_text_encoder),
          dtype_(opt.dtype),
          vae_((fs::path(dir) / "vae").string(), opt.dtype),
          text_([&text, dt = opt.dtype] { return std::make_unique<text::Qwen3TextModel>(text, dt); }),
          transformer_([&transformer, dt = opt.dtype] {
              return std::make_unique<zimage::ZImageTransformer>(transformer, dt);
          }) {
        if (!offload_) {
            text_.get();
            transformer_.get();
        }
    }

    Tensor encode(const std::vector<int32_t>& ids, const std::vector<uint8_t>& mask) const override {
        return text_.get(&load_seconds_).encode(ids, mask);
    }
    void release_text_encoder() const override { text_.release(); }
    void load_transformer() const override { transformer_.get(&load_seconds_); }
    ops::Context loop_context() const override { return {}; }
    DType loop_dtype() const override { return dtype_; }
    Tensor transformer(const Tensor& patches, const std::array<int64_t, 3>& grid, const Tensor& caps,
                       float t) const override {
        return transformer_.get(&load_seconds_).forward_tokens(patches, grid, caps, t);
    }
    Tensor decode(const Tensor& latents) const override {
        Tensor image = ops::image_to_u8(vae_.decode(vae_.unscale_latents(latents)), {});
        return image.view({image.size(1), image.size(2), image.size(3)});
    }

private:
    DType dtype_;
    vae::AutoencoderKL vae_;
    Lazy<text::Qwen3TextModel> text_;
    Lazy<zimage::ZImageTransformer> transformer_;
};

// The scheduler of `steps` steps for h x w latents (their 2x2 patches' count sets the shift), as
// diffusers' ZImagePipeline builds it.
FlowMatchEulerScheduler schedule(const FlowMatchConfig& c, int steps, int64_t h, int64_t w) {
    return FlowMatchEulerScheduler(c, zimage_default_sigmas(steps), calculate_shift((h / 2) * (w / 2), c));
}

}  // namespace

std::unique_ptr<ZImageComponents> make_zimage_cpu_components(const std::string& dir, const PipelineOptions& opt,
                                                             const PreparedModel& text_encoder,
                                                             const PreparedModel& transformer) {
    return std::make_unique<CpuComponents>(dir, opt, text_encoder, transformer);
}

#ifndef QDIT_WITH_CUDA
std::unique_ptr<ZImageComponents> make_zimage_cuda_components(const std::string&, const PipelineOptions&,
                                                              const PreparedModel&, const PreparedModel&) {
    raise<UsageError>("this qdit was built without the CUDA backend (configure with -DQDIT_CUDA=ON): "
                      "--device cuda and --gpus are not available");
}
#endif

struct ZImagePipeline::Parts : PipelineFolder {
    vae::Config vae;
    zimage::Config dit;
    std::unique_ptr<ZImageComponents> models;

    Parts(const std::string& d, const PipelineOptions& o)
        : PipelineFolder(d, o, "ZImagePipeline", "AutoencoderKL") {}

    std::string apply_chat_template(const std::string& prompt) const {
        const std::string& template_path = tokenizer.chat_template_path();
        return render_zimage_prompt(tokenizer.chat_template(),
                                    template_path.empty() ? path("tokenizer") : template_path, prompt);
    }
};

ZImagePipeline::ZImagePipeline(const std::string& dir, const PipelineOptions& opt) {
    open(dir, opt);
    load();
}

ZImagePipeline::ZImagePipeline(const std::string& dir, const PipelineOptions& opt,
                               const GenerateOptions& planned) {
    check_limits(planned);
    open(dir, opt);
    check(planned);
    load();
}

void ZImagePipeline::open(const std::string& dir, const PipelineOptions& opt) {
    check_pipeline_dtype(opt);
    if (opt.gpus < 1) raise<UsageError>("--gpus {}: the number of GPUs must be 1 or more", opt.gpus);
    if (opt.gpus > 1 && (opt.device.type != DeviceType::CUDA || opt.device.index != 0))
        raise<UsageError>("--gpus {} runs on CUDA GPUs 0..{} (choose them with CUDA_VISIBLE_DEVICES), not on {}",
                          opt.gpus, opt.gpus - 1,
                          opt.device.type == DeviceType::CUDA ? fmt::format("cuda:{}", opt.device.index) : "the CPU");
    if (opt.vae_tiling)
        raise<UsageError>("--vae-tiling: tiled VAE decoding is Qwen-Image's; the Z-Image pipeline decodes whole");
    if (opt.offload_modulation.value_or(false))
        raise<UsageError>("--offload modulation: Qwen-Image's; Z-Image's modulation weights are a small part of its "
                          "transformer and stay with it");
    // Every component (configs, keys, shapes, quantization plans) before the first weight is read.
    p_ = std::make_unique<Parts>(dir, opt);
    const std::string vae_config = p_->path("vae/config.json");
    p_->vae = vae::Config::from_json(read_json_file(vae_config), vae_config);
    const auto text_cfg = text::Qwen3Config::from_json(p_->text_prepared.folder.config,
                                                       p_->text_prepared.folder.config_path);
    p_->dit = zimage::Config::from_json(p_->transformer_prepared.folder.config,
                                        p_->transformer_prepared.folder.config_path);
    if (text_cfg.hidden_size != p_->dit.cap_feat_dim)
        raise<ShapeError>("{}: the text encoder's hidden size {} differs from the transformer's "
                          "cap_feat_dim {}",
                          dir, text_cfg.hidden_size, p_->dit.cap_feat_dim);
    if (p_->vae.latent_channels != p_->dit.in_channels)
        raise<ShapeError>("{}: the VAE has {} latent channels but the transformer takes {}", dir,
                          p_->vae.latent_channels, p_->dit.in_channels);
}

void ZImagePipeline::load() {
    const PipelineOptions& opt = p_->opt;
    uint64_t vae_bytes = 0;
    for (const ParamSpec& ps : vae::decoder_params(p_->vae))
        vae_bytes += uint64_t(shape_numel(ps.shape)) * dtype_size(opt.dtype);
    p_->require_weight_memory(vae_bytes);
    p_->models = opt.device.type == DeviceType::CUDA
                     ? make_zimage_cuda_components(p_->dir, opt, p_->text_prepared, p_->transformer_prepared)
                     : make_zimage_cpu_components(p_->dir, opt, p_->text_prepared, p_->transformer_prepared);
}

ZImagePipeline::~ZImagePipeline() = default;

int ZImagePipeline::transformer_int8_layers() const {
    return p_->transformer_prepared.plan.quantized_count();
}
int ZImagePipeline::text_encoder_int8_layers() const {
    return p_->text_prepared.plan.quantized_count();
}
int64_t ZImagePipeline::latent_channels() const { return p_->dit.in_channels; }

void ZImagePipeline::check_limits(const GenerateOptions& o) {
    check_size_and_steps(o.width, o.height, o.steps);
    if (o.max_sequence_length <= 0 || o.max_sequence_length > kMaxSequenceLength)
        raise<UsageError>("--max-sequence-length must be between 1 and {} (got {})", kMaxSequenceLength,
                          o.max_sequence_length);
    if (!std::isfinite(o.guidance) || o.guidance < 0)
        raise<UsageError>("--guidance must be >= 0 (got {})", o.guidance);
    check_latents_dtype(o.latents);
}

int64_t ZImagePipeline::prompt_tokens(const std::string& prompt) const {
    return int64_t(p_->tokenizer.encode(p_->apply_chat_template(prompt)).size());
}

void ZImagePipeline::check(const GenerateOptions& o) const {
    check_limits(o);
    const zimage::Config& dit = p_->dit;
    const std::string& config = p_->transformer_prepared.folder.config_path;
    // The VAE halves the size per down block, the transformer patchifies.
    const int64_t scale = p_->vae.spatial_scale(), patch = dit.all_patch_size[0];
    const int64_t multiple = scale * patch;
    if (o.width % multiple || o.height % multiple)
        raise<UsageError>("--width and --height must be multiples of {} (the VAE's scale {} x the "
                          "transformer's patch {}; got {}x{})",
                          multiple, scale, patch, o.width, o.height);
    // RoPE positions: axis 0 numbers the caption tokens (1, 2, ...; padded to
    // a multiple of 32) and then the image's frame, axes 1 and 2 the image
    // token's row and column.
    for (int axis : {1, 2}) {
        const int64_t side = axis == 1 ? o.height : o.width, tokens = side / multiple;
        if (tokens > dit.axes_lens[size_t(axis)])
            raise<UsageError>("--{} {} makes {} image tokens per {}, more than the transformer's RoPE "
                              "table holds (axes_lens[{}] = {} in {}): at most {} pixels",
                              axis == 1 ? "height" : "width", side, tokens, axis == 1 ? "column" : "row",
                              axis, dit.axes_lens[size_t(axis)], config,
                              dit.axes_lens[size_t(axis)] * multiple);
    }
    const int64_t frames = 1;  // one latent frame per image
    const int64_t max_caption = std::max<int64_t>(0, (dit.axes_lens[0] - 1 - frames) / 32 * 32);
    for (bool negative : {false, true}) {
        if (negative && o.guidance <= 0) continue;
        const int64_t n = std::min<int64_t>(prompt_tokens(negative ? o.negative_prompt : o.prompt),
                                            o.max_sequence_length);
        if (n > max_caption)
            raise<UsageError>(
                "the {} is {} tokens after the chat template, more than the {} the transformer's RoPE "
                "table allows (axes_lens[0] = {} in {}: caption positions padded to 32, then the "
                "image's); {}",
                negative ? "negative prompt" : "prompt", n, max_caption, dit.axes_lens[0], config,
                max_caption > 0 ? fmt::format("shorten it or pass --max-sequence-length {} (it cuts the "
                                              "prompt there)", max_caption)
                                : std::string("axes_lens[0] must be at least 34 to hold any caption"));
    }
    if (o.latents.defined()) {
        Shape want = {1, latent_channels(), o.height / scale, o.width / scale};
        Shape got = o.latents.shape();
        if (got.size() == 3) got.insert(got.begin(), 1);
        if (got != want)
            raise<ShapeError>("the initial latents have shape {}, but {}x{} needs {}",
                              shape_str(o.latents.shape()), o.width, o.height, shape_str(want));
    }
    schedule(p_->scheduler, o.steps, o.height / scale, o.width / scale);  // refuses what its config cannot run
}

Tensor ZImagePipeline::encode_prompt(const std::string& prompt, int max_sequence_length) const {
    std::string templated = p_->apply_chat_template(prompt);
    text::PaddedTokens t = p_->tokenizer.encode_padded(templated, size_t(max_sequence_length));
    std::vector<uint8_t> mask(t.attention_mask.begin(), t.attention_mask.end());
    return p_->models->encode(t.ids, mask);
}

GenerateResult ZImagePipeline::generate(const GenerateOptions& o,
                                        const std::function<void(int, int, double)>& progress) const {
    check(o);
    GenerateResult r;
    const bool cfg = o.guidance > 0;  // diffusers: do_classifier_free_guidance = guidance_scale > 0

    auto t0 = std::chrono::steady_clock::now();
    Tensor pos = encode_prompt(o.prompt, o.max_sequence_length);
    Tensor neg = cfg ? encode_prompt(o.negative_prompt, o.max_sequence_length) : Tensor();
    if (p_->opt.offload_text_encoder) p_->models->release_text_encoder();  // the embeddings are on the host
    r.load_seconds = p_->models->take_load_seconds();
    r.text_seconds = seconds_since(t0) - r.load_seconds;
    p_->models->load_transformer();
    r.load_seconds += p_->models->take_load_seconds();

    const int64_t s = p_->vae.spatial_scale();
    const int64_t C = latent_channels(), h = o.height / s, w = o.width / s;
    Tensor latents = o.latents.defined() ? o.latents.to(DType::F32).view({1, C, h, w})
                                         : seeded_noise({1, C, h, w}, o.seed);

    const FlowMatchEulerScheduler sched = schedule(p_->scheduler, o.steps, h, w);
    t0 = std::chrono::steady_clock::now();
    // The loop runs on the transformer's token layout (an elementwise step commutes with it): the
    // latents are patchified once, kept on the loop's device as F32 (x) and in the transformer's
    // dtype (x_in, written by each step), and unpatchified once at the end. The prompt embeddings
    // are cast and moved there once.
    const ops::Context ctx = p_->models->loop_context();
    const DType dt = p_->models->loop_dtype();
    const int64_t patch = p_->dit.all_patch_size[0], f_patch = p_->dit.all_f_patch_size[0];
    const Shape latent_shape{C, 1, h, w};
    const std::array<int64_t, 3> grid{1 / f_patch, h / patch, w / patch};
    const Tensor tokens = zimage::patchify(latents.view(latent_shape), patch, f_patch);
    Tensor x = ops::to_device(tokens, ctx), x_in = ops::to_device(tokens.to(dt), ctx);
    std::vector<Tensor> caps = {ops::to_device(pos.to(dt), ctx)};
    if (cfg) caps.push_back(ops::to_device(neg.to(dt), ctx));
    for (int i = 0; i < sched.steps(); ++i) {
        auto ts = std::chrono::steady_clock::now();
        const float t = (1000.0f - sched.timesteps()[size_t(i)]) / 1000.0f;
        std::vector<Tensor> v;
        for (const Tensor& c : caps) v.push_back(p_->models->transformer(x_in, grid, c, t));
        // noise_pred = -(pos + g·(pos − neg)) in f32, then the Euler step.
        ops::euler_step(x, v[0], cfg ? v[1] : Tensor(), o.guidance, sched.delta(i), &x_in, ctx);
        ops::synchronize(ctx);  // the step's time is its own
        if (progress) progress(i + 1, sched.steps(), seconds_since(ts));
    }
    latents = zimage::unpatchify(ops::to_host(x, ctx), latent_shape, patch, f_patch).view({1, C, h, w});
    r.denoise_seconds = seconds_since(t0);
    r.latents = latents;

    t0 = std::chrono::steady_clock::now();
    r.image = p_->models->decode(latents);
    r.vae_seconds = seconds_since(t0);
    r.record_device_memory(ops::Context{p_->opt.device});
    return r;
}

}  // namespace qdit
