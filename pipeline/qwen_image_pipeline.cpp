#include "pipeline/qwen_image_pipeline.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "core/error.h"
#include "models/qwen_image/transformer.h"
#include "models/text/qwen25vl.h"
#include "models/vae/autoencoder_kl_qwenimage.h"
#include "ops/elementwise.h"
#include "ops/image.h"
#include "pipeline/qwen_image_prompt.h"

namespace qdit {

namespace {

constexpr int64_t kPack = 2;  // QwenImagePipeline packs 2x2 latent pixels into one token

// Calls f(packed, unpacked) with the flat index of each element of a [1, C, h, w] latent in its packed
// [1, (h/2)(w/2), 4C] form and in its unpacked form.
template <typename F>
void for_each_packed(int64_t C, int64_t h, int64_t w, F f) {
    const int64_t hp = h / kPack, wp = w / kPack;
    for (int64_t i = 0; i < hp; ++i)
        for (int64_t j = 0; j < wp; ++j)
            for (int64_t c = 0; c < C; ++c)
                for (int64_t dy = 0; dy < kPack; ++dy)
                    for (int64_t dx = 0; dx < kPack; ++dx)
                        f(((i * wp + j) * C + c) * kPack * kPack + dy * kPack + dx,
                          (c * h + i * kPack + dy) * w + j * kPack + dx);
}

}  // namespace

std::vector<float> qwen_image_default_sigmas(int steps) {
    if (steps <= 0) raise<UsageError>("the number of steps must be positive (got {})", steps);
    // numpy.linspace(1.0, 1 / steps, steps): start + i·step in f64, the last entry exactly the end.
    const double start = 1.0, end = 1.0 / double(steps);
    const double step = steps > 1 ? (end - start) / double(steps - 1) : 0.0;
    std::vector<float> s(static_cast<size_t>(steps));
    for (int i = 0; i < steps; ++i) s[size_t(i)] = float(double(i) * step + start);
    if (steps > 1) s.back() = float(end);
    return s;
}

Tensor pack_qwen_image_latents(const Tensor& latents) {
    const Shape& s = latents.shape();
    if (s.size() != 4 || s[0] != 1 || s[2] % kPack || s[3] % kPack || !is_float(latents.dtype()))
        raise<ShapeError>("Qwen-Image packing needs float latents [1, C, h, w] with even h and w, got {} {}",
                          dtype_name(latents.dtype()), shape_str(s));
    const int64_t C = s[1], h = s[2], w = s[3];
    const Tensor src = latents.to(DType::F32);
    Tensor out = Tensor::empty({1, (h / kPack) * (w / kPack), C * kPack * kPack}, DType::F32);
    const float* x = src.data<float>();
    float* y = out.data<float>();
    for_each_packed(C, h, w, [&](int64_t packed, int64_t unpacked) { y[packed] = x[unpacked]; });
    return out;
}

Tensor unpack_qwen_image_latents(const Tensor& packed, int64_t h, int64_t w) {
    const Shape& s = packed.shape();
    if (s.size() != 3 || s[0] != 1 || h % kPack || w % kPack || s[1] != (h / kPack) * (w / kPack) ||
        s[2] % (kPack * kPack) || !is_float(packed.dtype()))
        raise<ShapeError>("Qwen-Image unpacking needs float latents [1, {}, 4C] for a {}x{} latent, got {} {}",
                          (h / kPack) * (w / kPack), h, w, dtype_name(packed.dtype()), shape_str(s));
    const int64_t C = s[2] / (kPack * kPack);
    const Tensor src = packed.to(DType::F32);
    Tensor out = Tensor::empty({1, C, h, w}, DType::F32);
    const float* x = src.data<float>();
    float* y = out.data<float>();
    for_each_packed(C, h, w, [&](int64_t packed, int64_t unpacked) { y[unpacked] = x[packed]; });
    return out;
}

QwenImageCfgBatch qwen_image_cfg_batch(const Tensor& pos, const Tensor& neg) {
    const Shape &a = pos.shape(), &b = neg.shape();
    auto on_host = [](const Tensor& t) { return t.device().type == DeviceType::CPU; };
    if (a.size() != 3 || b.size() != 3 || a[0] != 1 || b[0] != 1 || a[2] != b[2] || pos.dtype() != neg.dtype() ||
        !on_host(pos) || !on_host(neg))
        raise<ShapeError>("Qwen-Image true CFG: the prompt's and the negative prompt's embeddings must be [1, T, D] "
                          "on the host with one D and dtype, got {} {} and {} {}",
                          dtype_name(pos.dtype()), shape_str(a), dtype_name(neg.dtype()), shape_str(b));
    const int64_t T = std::max(a[1], b[1]), D = a[2];
    QwenImageCfgBatch r{Tensor::zeros({2, T, D}, pos.dtype()), Tensor::zeros({2, T}, DType::U8)};
    Tensor rows = r.embeds.view({2 * T, D});
    for (const auto& [item, e] : {std::pair<int64_t, const Tensor*>{0, &pos}, {1, &neg}}) {
        const int64_t n = e->size(1);
        ops::copy_rows(rows, item * T, e->view({n, D}), 0, n, ops::Context{});
        std::fill_n(r.mask.data<uint8_t>() + item * T, n, uint8_t(1));
    }
    return r;
}

struct QwenImagePipeline::Parts : PipelineFolder {
    ops::OwnedStream stream;  // a GPU's own stream (its CUDA graphs); destroyed after the models
    ops::Context ctx;
    PreparedModel vae_prepared;
    qwen_image::Config dit;
    vae::QwenImageVaeConfig vae_cfg;
    // The text encoder and the transformer, loaded when first asked for (offload_text_encoder:
    // in generate); get(&seconds) adds the time spent loading.
    Lazy<text::Qwen25VLTextModel> text;
    Lazy<qwen_image::QwenImageTransformer> transformer;
    std::unique_ptr<vae::AutoencoderKLQwenImage> vae;

    Parts(const std::string& d, const PipelineOptions& o)
        : PipelineFolder(d, o, "QwenImagePipeline", "AutoencoderKLQwenImage"),
          stream(o.device),
          ctx{o.device, stream.get()},
          text([this] { return std::make_unique<text::Qwen25VLTextModel>(text_prepared, opt.dtype, ctx); }),
          transformer([this] {
              auto t = std::make_unique<qwen_image::QwenImageTransformer>(
                  transformer_prepared, opt.dtype, ctx, qwen_image::Placement{opt.offload_modulation.value_or(true)});
              t->set_cuda_graph(true);  // a no-op on the CPU
              if (opt.fp8_attention) t->set_attention(ops::AttentionImpl::Fp8);
              return t;
          }) {}

    int64_t scale() const { return vae_cfg.spatial_scale(); }
};

QwenImagePipeline::QwenImagePipeline(const std::string& dir, const PipelineOptions& opt) {
    open(dir, opt);
    load();
}

QwenImagePipeline::QwenImagePipeline(const std::string& dir, const PipelineOptions& opt,
                                     const QwenImageGenerateOptions& planned) {
    check_limits(planned);
    open(dir, opt);
    check(planned);
    load();
}

QwenImagePipeline::~QwenImagePipeline() = default;

void QwenImagePipeline::open(const std::string& dir, const PipelineOptions& opt) {
    check_pipeline_dtype(opt);
    if (opt.gpus != 1)
        raise<UsageError>("--gpus {}: the Qwen-Image pipeline runs on one device (split runs are Z-Image's)",
                          opt.gpus);
    if (opt.device.type == DeviceType::CUDA && opt.device.index >= ops::cuda_devices())
        raise<UsageError>("--device cuda:{}: {}", opt.device.index,
                          ops::cuda_devices() == 0
                              ? std::string("no CUDA GPU is usable here (or this qdit was built without the "
                                            "CUDA backend: configure with -DQDIT_CUDA=ON)")
                              : fmt::format("only {} CUDA GPU(s) are usable here", ops::cuda_devices()));
    // Every component's config, keys and shapes (and the quantization plans) before any weight is read.
    p_ = std::make_unique<Parts>(dir, opt);
    p_->vae_prepared = prepare_model(p_->path("vae"), QuantConfig{});
    const auto text_cfg = text::Qwen25VLConfig::from_json(p_->text_prepared.folder.config,
                                                          p_->text_prepared.folder.config_path);
    p_->dit = qwen_image::Config::from_json(p_->transformer_prepared.folder.config,
                                            p_->transformer_prepared.folder.config_path);
    p_->vae_cfg = vae::QwenImageVaeConfig::from_json(p_->vae_prepared.folder.config,
                                                     p_->vae_prepared.folder.config_path);
    const std::string& tcfg = p_->transformer_prepared.folder.config_path;
    if (text_cfg.hidden_size != p_->dit.joint_attention_dim)
        raise<ShapeError>("{}: the text encoder's hidden size {} differs from the transformer's "
                          "joint_attention_dim {} ({})",
                          dir, text_cfg.hidden_size, p_->dit.joint_attention_dim, tcfg);
    if (p_->dit.in_channels % (kPack * kPack) || p_->dit.out_features() != p_->dit.in_channels)
        raise<ShapeError>("{}: the transformer takes {} features per token and returns {}; the pipeline packs "
                          "2x2 latent pixels per token and needs both to be 4 x the latent channels",
                          tcfg, p_->dit.in_channels, p_->dit.out_features());
    if (p_->vae_cfg.z_dim * kPack * kPack != p_->dit.in_channels)
        raise<ShapeError>("{}: the VAE has {} latent channels but the transformer takes {} (4 x {}) per token", dir,
                          p_->vae_cfg.z_dim, p_->dit.in_channels, p_->dit.in_channels / 4);
}

void QwenImagePipeline::load() {
    const PipelineOptions& opt = p_->opt;
    p_->require_weight_memory(weight_bytes(p_->vae_prepared, opt.dtype));
    // With offload_text_encoder the text encoder and the transformer wait for generate: the encoder
    // first, freed before the transformer comes.
    if (!opt.offload_text_encoder) {
        p_->text.get();
        p_->transformer.get();
    }
    p_->vae = std::make_unique<vae::AutoencoderKLQwenImage>(p_->vae_prepared, opt.dtype, p_->ctx);
}

bool QwenImagePipeline::text_encoder_loaded() const { return p_->text.loaded(); }

int QwenImagePipeline::transformer_int8_layers() const { return p_->transformer_prepared.plan.quantized_count(); }
int QwenImagePipeline::text_encoder_int8_layers() const { return p_->text_prepared.plan.quantized_count(); }
int64_t QwenImagePipeline::latent_channels() const { return p_->vae_cfg.z_dim; }
DType QwenImagePipeline::dtype() const { return p_->opt.dtype; }

void QwenImagePipeline::check_limits(const QwenImageGenerateOptions& o) {
    check_size_and_steps(o.width, o.height, o.steps);
    if (o.max_sequence_length <= 0 || o.max_sequence_length > kQwenImageMaxSequenceLength)
        raise<UsageError>("--max-sequence-length must be between 1 and {} for Qwen-Image (got {})",
                          kQwenImageMaxSequenceLength, o.max_sequence_length);
    if (!std::isfinite(o.true_cfg_scale) || o.true_cfg_scale < 0)
        raise<UsageError>("--true-cfg-scale must be a number >= 0 (got {})", o.true_cfg_scale);
    check_latents_dtype(o.latents);
}

namespace {

// The injected latents as [1, C, h, w] F32, or undefined when their shape does not fit.
Tensor unpacked_latents(const Tensor& l, int64_t C, int64_t h, int64_t w) {
    Shape s = l.shape();
    if (s.size() == 3 && s[0] == 1 && s[1] == (h / kPack) * (w / kPack) && s[2] == C * kPack * kPack)
        return unpack_qwen_image_latents(l, h, w);
    const bool fits = (s.size() == 3 && s == Shape{C, h, w}) || (s.size() == 4 && s == Shape{1, C, h, w}) ||
                      (s.size() == 5 && (s == Shape{1, 1, C, h, w} || s == Shape{1, C, 1, h, w}));
    return fits ? l.to(DType::F32).view({1, C, h, w}) : Tensor();
}

// The scheduler of `steps` steps for h x w latents (their packed token count sets the shift), as
// diffusers' QwenImagePipeline builds it.
FlowMatchEulerScheduler schedule(const FlowMatchConfig& c, int steps, int64_t h, int64_t w) {
    return FlowMatchEulerScheduler(c, qwen_image_default_sigmas(steps), calculate_shift((h / kPack) * (w / kPack), c));
}

}  // namespace

void QwenImagePipeline::check(const QwenImageGenerateOptions& o) const {
    check_limits(o);
    const int64_t multiple = p_->scale() * kPack;
    if (o.width % multiple || o.height % multiple)
        raise<UsageError>("--width and --height must be multiples of {} (the VAE's scale {} x the 2x2 packing of "
                          "the latents; got {}x{})",
                          multiple, p_->scale(), o.width, o.height);
    const int64_t h = o.height / p_->scale(), w = o.width / p_->scale();
    if (o.latents.defined()) {
        const int64_t C = latent_channels();
        if (!unpacked_latents(o.latents, C, h, w).defined())
            raise<ShapeError>("the initial latents have shape {}, but {}x{} needs [1, {}, {}, {}] (or packed [1, {}, "
                              "{}])",
                              shape_str(o.latents.shape()), o.width, o.height, C, h, w, (h / 2) * (w / 2), C * 4);
    }
    schedule(p_->scheduler, o.steps, h, w);  // refuses what the scheduler's config cannot run
}

int64_t QwenImagePipeline::prompt_tokens(const std::string& prompt) const {
    return int64_t(p_->tokenizer.encode(render_qwen_image_prompt(prompt)).size());
}

Tensor QwenImagePipeline::encode_prompt(const std::string& prompt, int max_sequence_length) const {
    QwenImagePromptEmbeds e =
        encode_qwen_image_prompts(p_->text.get(), p_->tokenizer, {prompt}, max_sequence_length);
    return e.embeds;  // one prompt: never padded, so no mask
}

GenerateResult QwenImagePipeline::generate(const QwenImageGenerateOptions& o,
                                           const std::function<void(int, int, double)>& progress) const {
    check(o);
    GenerateResult r;
    const DType dt = p_->opt.dtype;
    const bool cfg = o.true_cfg();

    auto t0 = std::chrono::steady_clock::now();
    p_->text.get(&r.load_seconds);
    const Tensor pos = encode_prompt(o.prompt, o.max_sequence_length);
    const Tensor neg = cfg ? encode_prompt(*o.negative_prompt, o.max_sequence_length) : Tensor();
    if (p_->opt.offload_text_encoder) p_->text.release();  // the embeddings are on the host
    r.text_seconds = seconds_since(t0) - r.load_seconds;
    const qwen_image::QwenImageTransformer& transformer = p_->transformer.get(&r.load_seconds);

    const int64_t s = p_->scale(), C = latent_channels(), h = o.height / s, w = o.width / s;
    const int64_t hp = h / kPack, wp = w / kPack, L = hp * wp, F = C * kPack * kPack;
    // The latents in the prompt embeddings' dtype: F32 storage holding values of dt.
    Tensor latents = pack_qwen_image_latents(o.latents.defined() ? unpacked_latents(o.latents, C, h, w)
                                                                 : seeded_noise({1, C, h, w}, o.seed));
    float* xs = latents.data<float>();
    for (int64_t k = 0; k < latents.numel(); ++k) xs[k] = round_to_dtype(xs[k], dt);

    const FlowMatchEulerScheduler sched = schedule(p_->scheduler, o.steps, h, w);
    const std::array<int64_t, 3> grid{1, hp, wp};
    t0 = std::chrono::steady_clock::now();
    // The latents stay on the transformer's device between steps: as F32 holding values of dt (x)
    // and in dt (x_in, the transformer's input, written by each step). With true CFG the transformer
    // runs the prompt and the negative prompt as one batch of 2 (qwen_image_cfg_batch): x_in holds
    // the latents once per item, the step writes item 0's rows and item 1 gets a copy. The prompt
    // embeddings (and the text mask, on the host) are cast and moved there once.
    const ops::Context& ctx = p_->ctx;
    const int64_t B = cfg ? 2 : 1;
    const QwenImageCfgBatch text = cfg ? qwen_image_cfg_batch(pos, neg) : QwenImageCfgBatch{pos, Tensor()};
    const Tensor text_d = ops::to_device(text.embeds.to(dt), ctx);
    Tensor x = ops::to_device(latents, ctx), x_in = ops::empty({B * L, F}, dt, ctx);
    Tensor x2 = x.view({L, F}), x_in0 = x_in.slice_rows(0, L);
    const Tensor start = ops::to_device(latents.to(dt), ctx).view({L, F});
    for (int64_t b = 0; b < B; ++b) ops::copy_rows(x_in, b * L, start, 0, L, ctx);
    // timestep = t.expand(B).to(latents.dtype) / 1000, in that dtype. The modulation of every
    // step is computed before the loop and kept for the next image: one with the same schedule
    // (same steps and size) reuses it, another replaces it.
    std::vector<float> sigmas(size_t(sched.steps()));
    for (size_t i = 0; i < sigmas.size(); ++i)
        sigmas[i] = round_to_dtype(round_to_dtype(sched.timesteps()[i], dt) / 1000.0f, dt);
    transformer.set_timesteps(sigmas);
    for (int i = 0; i < sched.steps(); ++i) {
        auto ts = std::chrono::steady_clock::now();
        Tensor sigma = Tensor::empty({B}, DType::F32);
        std::fill_n(sigma.data<float>(), B, sigmas[size_t(i)]);
        // Item 0: the prompt's velocity; item 1: the negative prompt's.
        const Tensor v = transformer.forward(x_in.view({B, L, F}), text_d, text.mask, sigma, grid).view({B * L, F});
        // True CFG with the norm rescale, then scheduler.step: the sample upcast to f32, dt·v in the
        // velocity's dtype, the sum back to it.
        ops::true_cfg_euler_step(x2, v.slice_rows(0, L), cfg ? v.slice_rows(L, 2 * L) : Tensor(), o.true_cfg_scale,
                                 sched.delta(i), dt, &x_in0, ctx);
        if (cfg) ops::copy_rows(x_in, L, x_in, 0, L, ctx);  // item 1 reads the same latents
        ops::synchronize(ctx);  // the step's time is its own
        if (progress) progress(i + 1, sched.steps(), seconds_since(ts));
    }
    latents = ops::to_host(x, ctx);
    r.denoise_seconds = seconds_since(t0);
    r.latents = latents;

    t0 = std::chrono::steady_clock::now();
    const Tensor z = p_->vae->denormalize_latents(unpack_qwen_image_latents(latents, h, w));
    Tensor image = ops::image_to_u8(p_->opt.vae_tiling ? p_->vae->decode_tiled(z) : p_->vae->decode(z), {});
    r.image = image.view({image.size(1), image.size(2), image.size(3)});
    r.vae_seconds = seconds_since(t0);
    r.record_device_memory(p_->ctx);
    return r;
}

}  // namespace qdit
