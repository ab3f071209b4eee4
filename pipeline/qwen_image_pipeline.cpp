#include "pipeline/qwen_image_pipeline.h"

#include <chrono>
#include <cmath>
#include <filesystem>

#include "core/error.h"
#include "core/memory.h"
#include "io/files.h"
#include "models/loader.h"
#include "models/qwen_image/transformer.h"
#include "models/text/qwen25vl.h"
#include "ops/context.h"
#include "models/text/tokenizer.h"
#include "models/vae/autoencoder_kl.h"
#include "models/vae/autoencoder_kl_qwenimage.h"
#include "pipeline/qwen_image_prompt.h"
#include "pipeline/scheduler.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace qdit {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

constexpr int64_t kPack = 2;  // QwenImagePipeline packs 2x2 latent pixels into one token

// Rounds to the pipeline's dtype (the identity for F32).
inline float round_to(DType dt, float x) { return dt == DType::BF16 ? bf16_to_f32(f32_to_bf16(x)) : x; }

json read_model_index(const std::string& dir, std::string* index_path) {
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) raise<IoError>("model folder {} does not exist", dir);
    std::string index = (fs::path(dir) / "model_index.json").string();
    if (!fs::exists(index)) raise<IoError>("{} is missing: {} is not a diffusers pipeline folder", index, dir);
    json j = read_json_file(index);
    if (!j.is_object()) raise<ConfigError>("{}: expected a JSON object", index);
    if (index_path) *index_path = index;
    return j;
}

// model_index.json must name a QwenImagePipeline and every component must exist.
void check_pipeline_folder(const std::string& dir) {
    std::string index;
    const json j = read_model_index(dir, &index);
    std::string cls;
    read_config_field(j, index, "_class_name", &cls);
    if (cls != "QwenImagePipeline")
        raise<ConfigError>("{}: pipeline class '{}' is not a QwenImagePipeline", index, cls);
    for (const char* part : {"scheduler", "text_encoder", "tokenizer", "transformer", "vae"}) {
        std::vector<std::string> library_and_class;  // e.g. ["diffusers", "AutoencoderKLQwenImage"]
        read_config_field(j, index, part, &library_and_class);
        if (library_and_class.size() != 2)
            raise<ConfigError>("{}: field '{}' must name the component's library and class, as "
                               "[\"diffusers\", \"AutoencoderKLQwenImage\"] (got {})",
                               index, part, j.contains(part) ? j[part].dump() : "nothing");
        if (!fs::is_directory(fs::path(dir) / part))
            raise<IoError>("{}: component folder {}/ is missing", dir, part);
    }
}

}  // namespace

std::string pipeline_class(const std::string& dir) {
    std::string index;
    const json j = read_model_index(dir, &index);
    std::string cls;
    read_config_field(j, index, "_class_name", &cls);
    return cls;
}

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
    const int64_t C = s[1], h = s[2], w = s[3], hp = h / kPack, wp = w / kPack;
    const Tensor src = latents.to(DType::F32);
    Tensor out = Tensor::empty({1, hp * wp, C * kPack * kPack}, DType::F32);
    const float* x = src.data<float>();
    float* y = out.data<float>();
    for (int64_t i = 0; i < hp; ++i)
        for (int64_t j = 0; j < wp; ++j)
            for (int64_t c = 0; c < C; ++c)
                for (int64_t dy = 0; dy < kPack; ++dy)
                    for (int64_t dx = 0; dx < kPack; ++dx)
                        y[((i * wp + j) * C + c) * kPack * kPack + dy * kPack + dx] =
                            x[(c * h + i * kPack + dy) * w + j * kPack + dx];
    return out;
}

Tensor unpack_qwen_image_latents(const Tensor& packed, int64_t h, int64_t w) {
    const Shape& s = packed.shape();
    if (s.size() != 3 || s[0] != 1 || h % kPack || w % kPack || s[1] != (h / kPack) * (w / kPack) ||
        s[2] % (kPack * kPack) || !is_float(packed.dtype()))
        raise<ShapeError>("Qwen-Image unpacking needs float latents [1, {}, 4C] for a {}x{} latent, got {} {}",
                          (h / kPack) * (w / kPack), h, w, dtype_name(packed.dtype()), shape_str(s));
    const int64_t C = s[2] / (kPack * kPack), hp = h / kPack, wp = w / kPack;
    const Tensor src = packed.to(DType::F32);
    Tensor out = Tensor::empty({1, C, h, w}, DType::F32);
    const float* x = src.data<float>();
    float* y = out.data<float>();
    for (int64_t i = 0; i < hp; ++i)
        for (int64_t j = 0; j < wp; ++j)
            for (int64_t c = 0; c < C; ++c)
                for (int64_t dy = 0; dy < kPack; ++dy)
                    for (int64_t dx = 0; dx < kPack; ++dx)
                        y[(c * h + i * kPack + dy) * w + j * kPack + dx] =
                            x[((i * wp + j) * C + c) * kPack * kPack + dy * kPack + dx];
    return out;
}

struct QwenImagePipeline::Parts {
    std::string dir;
    PipelineOptions opt;
    ops::OwnedStream stream;  // a GPU's own stream (its CUDA graphs); destroyed after the models
    ops::Context ctx;
    FlowMatchConfig scheduler;
    text::BpeTokenizer tokenizer;
    PreparedModel text_prepared, transformer_prepared, vae_prepared;
    qwen_image::Config dit;
    vae::QwenImageVaeConfig vae_cfg;
    std::unique_ptr<text::Qwen25VLTextModel> text;
    std::unique_ptr<qwen_image::QwenImageTransformer> transformer;
    std::unique_ptr<vae::AutoencoderKLQwenImage> vae;

    Parts(const std::string& d, const PipelineOptions& o)
        : dir(d),
          opt(o),
          stream(o.device),
          ctx{o.device, stream.get()},
          scheduler(FlowMatchConfig::from_json(
              read_json_file((fs::path(d) / "scheduler" / "scheduler_config.json").string()),
              (fs::path(d) / "scheduler" / "scheduler_config.json").string())),
          tokenizer(text::BpeTokenizer::from_dir((fs::path(d) / "tokenizer").string())) {}

    int64_t scale() const { return vae_cfg.spatial_scale(); }

    // The text encoder and the transformer, loaded when absent (offload_text_encoder); *seconds
    // gets the time spent loading.
    const text::Qwen25VLTextModel& text_encoder(double* seconds = nullptr) {
        if (!text) {
            const auto t0 = std::chrono::steady_clock::now();
            text = std::make_unique<text::Qwen25VLTextModel>(text_prepared, opt.dtype, ctx);
            if (seconds) *seconds += seconds_since(t0);
        }
        return *text;
    }
    const qwen_image::QwenImageTransformer& dit_model(double* seconds) {
        if (!transformer) {
            const auto t0 = std::chrono::steady_clock::now();
            transformer = std::make_unique<qwen_image::QwenImageTransformer>(transformer_prepared, opt.dtype, ctx);
            transformer->set_cuda_graph(true);  // a no-op on the CPU
            *seconds += seconds_since(t0);
        }
        return *transformer;
    }
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
    if (opt.dtype != DType::F32 && opt.dtype != DType::BF16)
        raise<UsageError>("the pipeline runs in f32 or bf16, not {}", dtype_name(opt.dtype));
    if (opt.device.type == DeviceType::CUDA && opt.dtype != DType::BF16)
        raise<UsageError>("on CUDA the pipeline runs in bf16 (got {})", dtype_name(opt.dtype));
    if (opt.gpus != 1)
        raise<UsageError>("--gpus {}: the Qwen-Image pipeline runs on one device (split runs are Z-Image's)",
                          opt.gpus);
    if (opt.device.type == DeviceType::CUDA && opt.device.index >= ops::cuda_devices())
        raise<UsageError>("--device cuda:{}: {}", opt.device.index,
                          ops::cuda_devices() == 0
                              ? std::string("no CUDA GPU is usable here (or this qdit was built without the "
                                            "CUDA backend: configure with -DQDIT_CUDA=ON)")
                              : fmt::format("only {} CUDA GPU(s) are usable here", ops::cuda_devices()));
    check_pipeline_folder(dir);
    p_ = std::make_unique<Parts>(dir, opt);
    // Every component's config, keys and shapes (and the quantization plans) before any weight is read.
    p_->text_prepared = prepare_model((fs::path(dir) / "text_encoder").string(), opt.text_encoder_quant);
    p_->transformer_prepared = prepare_model((fs::path(dir) / "transformer").string(), opt.transformer_quant);
    p_->vae_prepared = prepare_model((fs::path(dir) / "vae").string(), QuantConfig{});
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
    const uint64_t text_bytes = weight_bytes(p_->text_prepared, opt.dtype),
                   dit_bytes = weight_bytes(p_->transformer_prepared, opt.dtype),
                   vae_bytes = weight_bytes(p_->vae_prepared, opt.dtype);
    uint64_t budget = opt.memory_budget;
    std::string budget_name = "the memory budget";
    if (budget == 0 && opt.device.type == DeviceType::CPU) {
        budget = physical_memory_bytes();
        budget_name = "the machine's physical memory";
    }
    require_memory(text_bytes + dit_bytes + vae_bytes, budget,
                   fmt::format("the weights of {} (text encoder {}, transformer {}, VAE {}, in {})", p_->dir,
                               format_bytes(text_bytes), format_bytes(dit_bytes), format_bytes(vae_bytes),
                               dtype_name(opt.dtype)),
                   budget_name);
    // With offload_text_encoder the text encoder and the transformer wait for generate: the encoder
    // first, freed before the transformer comes.
    if (!opt.offload_text_encoder) {
        p_->text_encoder();
        double unused = 0;
        p_->dit_model(&unused);
    }
    p_->vae = std::make_unique<vae::AutoencoderKLQwenImage>(p_->vae_prepared, opt.dtype, p_->ctx);
}

bool QwenImagePipeline::text_encoder_loaded() const { return p_->text != nullptr; }

int QwenImagePipeline::transformer_int8_layers() const { return p_->transformer_prepared.plan.quantized_count(); }
int QwenImagePipeline::text_encoder_int8_layers() const { return p_->text_prepared.plan.quantized_count(); }
int64_t QwenImagePipeline::latent_channels() const { return p_->vae_cfg.z_dim; }
DType QwenImagePipeline::dtype() const { return p_->opt.dtype; }

void QwenImagePipeline::check_limits(const QwenImageGenerateOptions& o) {
    if (o.width <= 0 || o.height <= 0 || o.width > kMaxImageSide || o.height > kMaxImageSide)
        raise<UsageError>("--width and --height must be between 1 and {} (got {}x{})", kMaxImageSide, o.width,
                          o.height);
    if (o.steps <= 0 || o.steps > kMaxSteps)
        raise<UsageError>("--steps must be between 1 and {} (got {})", kMaxSteps, o.steps);
    if (o.max_sequence_length <= 0 || o.max_sequence_length > kQwenImageMaxSequenceLength)
        raise<UsageError>("--max-sequence-length must be between 1 and {} for Qwen-Image (got {})",
                          kQwenImageMaxSequenceLength, o.max_sequence_length);
    if (!std::isfinite(o.true_cfg_scale) || o.true_cfg_scale < 0)
        raise<UsageError>("--true-cfg-scale must be a number >= 0 (got {})", o.true_cfg_scale);
    if (o.latents.defined() && !is_float(o.latents.dtype()))
        raise<ShapeError>("the initial latents are {}; they must be floating point (f32, bf16 or f16)",
                          dtype_name(o.latents.dtype()));
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

}  // namespace

void QwenImagePipeline::check(const QwenImageGenerateOptions& o) const {
    check_limits(o);
    const int64_t multiple = p_->scale() * kPack;
    if (o.width % multiple || o.height % multiple)
        raise<UsageError>("--width and --height must be multiples of {} (the VAE's scale {} x the 2x2 packing of "
                          "the latents; got {}x{})",
                          multiple, p_->scale(), o.width, o.height);
    if (o.latents.defined()) {
        const int64_t C = latent_channels(), h = o.height / p_->scale(), w = o.width / p_->scale();
        if (!unpacked_latents(o.latents, C, h, w).defined())
            raise<ShapeError>("the initial latents have shape {}, but {}x{} needs [1, {}, {}, {}] (or packed [1, {}, "
                              "{}])",
                              shape_str(o.latents.shape()), o.width, o.height, C, h, w, (h / 2) * (w / 2), C * 4);
    }
}

int64_t QwenImagePipeline::prompt_tokens(const std::string& prompt) const {
    return int64_t(p_->tokenizer.encode(render_qwen_image_prompt(prompt)).size());
}

Tensor QwenImagePipeline::encode_prompt(const std::string& prompt, int max_sequence_length) const {
    QwenImagePromptEmbeds e =
        encode_qwen_image_prompts(p_->text_encoder(), p_->tokenizer, {prompt}, max_sequence_length);
    return e.embeds;  // one prompt: never padded, so no mask
}

GenerateResult QwenImagePipeline::generate(const QwenImageGenerateOptions& o,
                                           const std::function<void(int, int, double)>& progress) const {
    check(o);
    GenerateResult r;
    const DType dt = p_->opt.dtype;
    const bool cfg = o.true_cfg();

    auto t0 = std::chrono::steady_clock::now();
    p_->text_encoder(&r.load_seconds);
    const Tensor pos = encode_prompt(o.prompt, o.max_sequence_length);
    const Tensor neg = cfg ? encode_prompt(*o.negative_prompt, o.max_sequence_length) : Tensor();
    if (p_->opt.offload_text_encoder) p_->text.reset();  // the embeddings are on the host
    r.text_seconds = seconds_since(t0) - r.load_seconds;
    const qwen_image::QwenImageTransformer& transformer = p_->dit_model(&r.load_seconds);

    const int64_t s = p_->scale(), C = latent_channels(), h = o.height / s, w = o.width / s;
    const int64_t hp = h / kPack, wp = w / kPack, L = hp * wp, F = C * kPack * kPack;
    // The latents in the prompt embeddings' dtype: F32 storage holding values of dt.
    Tensor latents = pack_qwen_image_latents(o.latents.defined() ? unpacked_latents(o.latents, C, h, w)
                                                                 : seeded_noise({1, C, h, w}, o.seed));
    float* x = latents.data<float>();
    for (int64_t k = 0; k < latents.numel(); ++k) x[k] = round_to(dt, x[k]);

    FlowMatchEulerScheduler sched(p_->scheduler, qwen_image_default_sigmas(o.steps), calculate_shift(L, p_->scheduler));
    const std::array<int64_t, 3> grid{1, hp, wp};
    const float scale = o.true_cfg_scale;
    t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < sched.steps(); ++i) {
        auto ts = std::chrono::steady_clock::now();
        // timestep = t.expand(B).to(latents.dtype) / 1000, in that dtype.
        Tensor sigma = Tensor::empty({1}, DType::F32);
        sigma.data<float>()[0] = round_to(dt, round_to(dt, sched.timesteps()[size_t(i)]) / 1000.0f);
        Tensor v = transformer.forward(latents, pos, Tensor(), sigma, grid).to(DType::F32);
        float* vp = v.data<float>();
        if (cfg) {
            const Tensor n = transformer.forward(latents, neg, Tensor(), sigma, grid).to(DType::F32);
            const float* np = n.data<float>();
            for (int64_t tok = 0; tok < L; ++tok) {
                float* c = vp + tok * F;
                const float* u = np + tok * F;
                std::vector<float> comb(static_cast<size_t>(F));
                double cond_sq = 0, comb_sq = 0;
                for (int64_t f = 0; f < F; ++f) {
                    const float d = round_to(dt, c[f] - u[f]);
                    comb[size_t(f)] = round_to(dt, u[f] + round_to(dt, scale * d));
                    cond_sq += double(c[f]) * double(c[f]);
                    comb_sq += double(comb[size_t(f)]) * double(comb[size_t(f)]);
                }
                const float cond_norm = round_to(dt, float(std::sqrt(cond_sq))),
                            comb_norm = round_to(dt, float(std::sqrt(comb_sq)));
                const float ratio = round_to(dt, cond_norm / comb_norm);
                for (int64_t f = 0; f < F; ++f) c[f] = round_to(dt, comb[size_t(f)] * ratio);
            }
        }
        // scheduler.step: the sample upcast to f32, dt·v in the velocity's dtype, the sum back to it.
        const float step = sched.sigmas()[size_t(i) + 1] - sched.sigmas()[size_t(i)];
        for (int64_t k = 0; k < latents.numel(); ++k) x[k] = round_to(dt, x[k] + round_to(dt, step * vp[k]));
        if (progress) progress(i + 1, sched.steps(), seconds_since(ts));
    }
    r.denoise_seconds = seconds_since(t0);
    r.latents = latents;

    t0 = std::chrono::steady_clock::now();
    const Tensor z = p_->vae->denormalize_latents(unpack_qwen_image_latents(latents, h, w));
    Tensor image = vae::postprocess_to_u8(p_->opt.vae_tiling ? p_->vae->decode_tiled(z) : p_->vae->decode(z));
    r.image = image.view({image.size(1), image.size(2), image.size(3)});
    r.vae_seconds = seconds_since(t0);
    const ops::DeviceMemory mem = ops::device_memory(p_->ctx);
    r.device_peak_bytes = mem.peak;
    r.device_weight_bytes = mem.weights;
    r.device_activation_peak_bytes = mem.peak_activations;
    return r;
}

}  // namespace qdit
