// qdit: command-line front end. Exit status 0 on success, 2 on a usage error,
// 1 on any other error, which is printed as one line starting with "error:".
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <sys/resource.h>

#include "core/error.h"
#include "core/memory.h"
#include "io/files.h"
#include "io/png.h"
#include "io/safetensors.h"
#include "ops/attention.h"
#include "pipeline/frontend.h"
#include "pipeline/qwen_image_pipeline.h"
#include "pipeline/qwen_image_prompt.h"
#include "pipeline/zimage_pipeline.h"
#include "quant/config.h"
#include "models/loader.h"
#include "nn/load.h"
#ifdef QDIT_WITH_CUDA
#include "backend/cuda/plan_cache.h"
#endif
#include "server/server.h"

namespace {

using namespace qdit;

struct QuantFlags {
    std::string quantization, config, ignored;
    void add(CLI::App* cmd) {
        cmd->add_option("--quantization", quantization, "Quantization method: none, int8");
        cmd->add_option("--ignored-layers", ignored,
                        "Comma-separated layers kept in high precision; a name matches a layer "
                        "when it equals it or a run of its dotted components (feed_forward, "
                        "layers.3, layers.3.attention.to_q)");
        cmd->add_option("--quantization-config", config,
                        "Quantization config as inline JSON or a JSON file: {\"method\": "
                        "\"int8\", \"ignored_layers\": [...], \"activation_scheme\": \"dynamic\"}");
    }
    QuantConfig resolve() const {
        QuantArgs a{quantization, config, {}};
        if (!ignored.empty()) a.ignored_layers = split_layer_list(ignored, "--ignored-layers");
        std::vector<std::string> warnings;
        QuantConfig c = resolve_quant_config(a, &warnings);
        for (const std::string& w : warnings) fmt::print(stderr, "warning: {}\n", w);
        return c;
    }
};

void print_warnings(const QuantPlan& plan) {
    for (const std::string& w : plan.warnings) fmt::print(stderr, "warning: {}\n", w);
}

void print_pattern_hits(const QuantPlan& plan) {
    for (const std::string& p : plan.config.ignored_layers)
        fmt::print("ignored_layers '{}' kept {} layer(s)\n", p, plan.pattern_hits.at(p));
}

int cmd_inspect(const std::string& dir, const QuantFlags& q) {
    QuantConfig config = q.resolve();
    PreparedModel m = prepare_model(dir, config);
    fmt::print("model: {} ({})\n", m.spec.class_name, m.folder.transformer_dir);
    fmt::print("checkpoint: {} ({} file(s), {} tensors)\n", m.checkpoint->path(),
               m.checkpoint->files().size(), m.checkpoint->keys().size());
    fmt::print("parameters: {}\n", m.spec.parameter_count());
    fmt::print("quantization: {}{}\n", quant_method_name(m.plan.config.method),
               m.stored_config ? " (pre-quantized checkpoint)" : "");
    print_pattern_hits(m.plan);
    fmt::print("{}", format_plan(m.plan));
    print_warnings(m.plan);
    return 0;
}

int cmd_quantize(const std::string& dir, const std::string& out, const QuantFlags& q) {
    QuantConfig config = q.resolve();
    if (!config.enabled())
        throw UsageError("quantize needs a method: --quantization int8 (or a "
                         "--quantization-config with one)");
    auto t0 = std::chrono::steady_clock::now();
    PreparedModel m = prepare_model(dir, config);
    print_warnings(m.plan);
    print_pattern_hits(m.plan);
    fmt::print(stderr, "quantizing {} of {} Linear layers of {} to {}\n",
               m.plan.quantized_count(), m.plan.layers.size(), m.folder.root,
               quant_method_name(m.plan.config.method));
    const bool tty = ::isatty(2);
    size_t last_decile = 0;
    write_quantized(m, out, [&](size_t done, size_t total) {
        if (tty) {
            fmt::print(stderr, "\r  tensors {}/{}", done, total);
            if (done == total) fmt::print(stderr, "\n");
        } else if (done * 10 / total > last_decile || done == total) {
            last_decile = done * 10 / total;
            fmt::print(stderr, "  tensors {}/{}\n", done, total);
        }
    });
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    fmt::print("wrote {} ({} int8 layers; Linear weights {} -> {} bytes) in {:.1f} s\n", out,
               m.plan.quantized_count(), m.plan.bytes_before(), m.plan.bytes_after(), secs);
    return 0;
}

// --model, --device, --dtype, --quantize-text-encoder, --fp8-attention, --offload and the quantization flags: how
// generate and serve load the pipeline.
struct ModelFlags {
    std::string model, dtype = "bf16", device, offload;  // device empty: default_device_name
    bool quantize_text_encoder = false, fp8_attention = false;
    QuantFlags q;
    CLI::Option* device_opt = nullptr;

    void add(CLI::App* cmd) {
        cmd->add_option("--model", model,
                        "Diffusers pipeline folder (model_index.json, scheduler/, text_encoder/, tokenizer/, "
                        "transformer/, vae/); model_index.json's _class_name picks the pipeline: ZImagePipeline "
                        "or QwenImagePipeline; default: a built-in tiny random-weight model "
                        "(generate: the one --pipeline names; serve: Z-Image)");
        cmd->add_option("--dtype", dtype, "Activation precision: bf16 or f32 (cuda: bf16)")->capture_default_str();
        device_opt = cmd->add_option("--device", device,
                                     "Where the text encoder, transformer and VAE run: cpu, cuda (GPU 0) or "
                                     "cuda:N (needs a build with the CUDA backend); default: cuda when this build "
                                     "has the CUDA backend, a GPU is visible and --dtype is bf16, else cpu");
        cmd->add_flag("--quantize-text-encoder", quantize_text_encoder,
                      "Also quantize the text encoder's Linear layers with the chosen method");
        cmd->add_flag("--fp8-attention", fp8_attention,
                      "Run the transformer's attention in FP8 (E4M3 q, k, v and probabilities; cuDNN) on a Hopper or "
                      "Blackwell GPU: faster, at the accuracy cost measured in docs/quantization.md; sequence-"
                      "parallel runs keep bf16 attention");
        cmd->add_option("--offload", offload,
                        "What to keep off the GPU, comma-separated, or none: text-encoder (the text encoder is "
                        "loaded for each prompt, encodes it and is freed; in a one-image run before the "
                        "transformer is loaded, so the two never share the device's memory), modulation "
                        "(Qwen-Image: the transformer's img_mod / txt_mod weights, a third of it, stay in pinned "
                        "host memory and are uploaded when a new schedule's modulation is computed; the "
                        "denoising steps do not read them). A list replaces the default, which is modulation "
                        "for Qwen-Image and nothing for Z-Image. On the CPU every value is accepted and changes "
                        "nothing but the loads");
        q.add(cmd);
    }

    // gpus > 1 (generate --gpus N) runs on CUDA GPUs 0..N-1; --device may then be left out or name GPU 0.
    PipelineOptions resolve(int gpus) {
        if (dtype != "bf16" && dtype != "f32")
            throw UsageError(fmt::format("--dtype {}: allowed values are bf16, f32", dtype));
        PipelineOptions po;
        if (device.empty()) device = default_device_name(dtype == "bf16" ? DType::BF16 : DType::F32);
        po.device = parse_device(device);
        if (gpus < 1) throw UsageError(fmt::format("--gpus {}: the number of GPUs must be 1 or more", gpus));
        if (gpus > 1) {
            if (device_opt->count() > 0 && !(po.device.type == DeviceType::CUDA && po.device.index == 0))
                throw UsageError(fmt::format("--gpus {} runs on CUDA GPUs 0..{} (choose them with "
                                             "CUDA_VISIBLE_DEVICES), not with --device {}",
                                             gpus, gpus - 1, device));
            po.device = Device{DeviceType::CUDA, 0};
            device = "cuda";
        }
        po.gpus = gpus;
        if (po.device.type == DeviceType::CUDA && dtype != "bf16")
            throw UsageError(fmt::format("--device {} runs in bf16 (got --dtype {})", device, dtype));
        po.dtype = dtype == "bf16" ? DType::BF16 : DType::F32;
        po.fp8_attention = fp8_attention;
        for (size_t b = 0; !offload.empty() && offload != "none" && b <= offload.size();) {
            const size_t e = std::min(offload.find(',', b), offload.size());
            const std::string what = offload.substr(b, e - b);
            if (what == "text-encoder")
                po.offload_text_encoder = true;
            else if (what == "modulation")
                po.offload_modulation = true;
            else
                throw UsageError(fmt::format("--offload {}: '{}' is not one of text-encoder, modulation (or none "
                                             "alone)",
                                             offload, what));
            b = e + 1;
        }
        if (!offload.empty() && !po.offload_modulation) po.offload_modulation = false;  // the list replaces the default
        if (fp8_attention && !ops::fp8_attention_available(ops::Context{po.device}))
            throw UsageError(fmt::format("--fp8-attention runs on a GPU of compute capability 9.x or 10.x (Hopper or "
                                         "Blackwell) with cuDNN 9, not on --device {}",
                                         device));
        po.transformer_quant = q.resolve();
        if (quantize_text_encoder) {
            if (!po.transformer_quant.enabled())
                throw UsageError("--quantize-text-encoder needs a method (--quantization int8)");
            po.text_encoder_quant.method = po.transformer_quant.method;
        }
        return po;
    }
};

struct GenerateArgs {
    std::string prompt, negative_prompt, latents, output = "qdit.png", parallel = "tensor", pipeline = "zimage";
    bool vae_tiling = false;
    int steps = 9, width = 1024, height = 1024, max_sequence_length = 512, gpus = 1;
    uint64_t seed = 0;
    float guidance = 0.0f, true_cfg_scale = 4.0f;
    bool verbose = false;
    ModelFlags m;
    // Flags whose default or meaning depends on the pipeline: whether they were given.
    CLI::Option *steps_opt = nullptr, *guidance_opt = nullptr, *true_cfg_opt = nullptr, *negative_opt = nullptr,
                *parallel_opt = nullptr, *pipeline_opt = nullptr;
};

// The note that the built-in tiny model runs.
void note_tiny_model(TinyPipeline p, const std::string& dir) {
    fmt::print(stderr,
               "note: no --model given: using the built-in tiny {} pipeline at {}; its weights are random, so the "
               "image is noise\n",
               tiny_pipeline_title(p), dir);
}

double peak_rss_gib() {
    struct rusage ru {};
    getrusage(RUSAGE_SELF, &ru);
    return double(ru.ru_maxrss) / (1024.0 * 1024.0);  // ru_maxrss is in KiB on Linux
}

// The progress bar on stderr, one update per denoising step; each step's seconds go to *steps.
std::function<void(int, int, double)> progress_bar(std::vector<double>* steps = nullptr) {
    const bool tty = ::isatty(2);
    return [tty, steps](int step, int total, double secs) {
        if (steps) steps->push_back(secs);
        const int width = 30, filled = width * step / total;
        std::string bar = std::string(size_t(filled), '#') + std::string(size_t(width - filled), '.');
        fmt::print(stderr, "{}denoise [{}] {}/{} {:.2f} s/it{}", tty ? "\r" : "", bar, step, total, secs,
                   tty && step < total ? "" : "\n");
    };
}

// generate --verbose: where the time went, on stdout before the summary lines.
void print_time_report(double load_s, const GenerateResult& r, const std::vector<double>& steps) {
    const nn::LoadStats ls = nn::load_stats();
    fmt::print("load: {:.2f} s\n", load_s);
    if (ls.bytes > 0)
        fmt::print("  GPU weights: {:.2f} GB in {:.2f} s ({:.2f} GB/s): read {:.2f} s, waiting for uploads {:.2f} s, "
                   "convert / quantize on the GPU {:.2f} s; {} pinned staging\n",
                   double(ls.bytes) / 1e9, ls.wall_s, ls.wall_s > 0 ? double(ls.bytes) / 1e9 / ls.wall_s : 0.0,
                   ls.read_s, ls.wait_s, ls.convert_s, format_bytes(ls.staging_bytes));
#ifdef QDIT_WITH_CUDA
    const cuda::CudnnPlanStats stats = cuda::cudnn_plan_stats();
    const cuda::PlanCounts ps = stats.total();
    if (ps.built + ps.cached + ps.rejected > 0)
        fmt::print("plans: {} cuDNN plans built in {:.2f} s, {} read from the plan cache in {:.2f} s (convolution {} "
                   "built / {} read, attention {} built / {} read){}{}\n",
                   ps.built, ps.build_s, ps.cached, ps.load_s, stats.conv.built, stats.conv.cached,
                   stats.attention.built, stats.attention.cached,
                   ps.rejected ? fmt::format("; {} cache entries unusable", ps.rejected) : std::string(),
                   ps.unstored ? fmt::format("; {} built plans not stored", ps.unstored) : std::string());
#endif
    fmt::print("text encoder: {:.2f} s\n", r.text_seconds);
    for (size_t i = 0; i < steps.size(); ++i) fmt::print("denoise step {}: {:.3f} s\n", i + 1, steps[i]);
    fmt::print("denoise: {:.2f} s\n", r.denoise_seconds);
    fmt::print("vae: {:.2f} s\n", r.vae_seconds);
}

std::string gib(size_t bytes) { return fmt::format("{:.2f} GiB", double(bytes) / double(1ull << 30)); }

// The summary's memory part: the host's peak and, on a GPU, the weights held at the end, the
// activations' peak and the peak of both (summed over the GPUs when there are several).
std::string memory_summary(const GenerateResult& r, const PipelineOptions& po) {
    std::string s = fmt::format("peak memory {:.2f} GiB", peak_rss_gib());
    if (po.device.type == DeviceType::CUDA)
        s += fmt::format("; GPU{}: weights {}, activations {} (peak), peak {}",
                         po.gpus > 1 ? fmt::format(" (sum over {} GPUs)", po.gpus) : std::string(),
                         gib(r.device_weight_bytes), gib(r.device_activation_peak_bytes), gib(r.device_peak_bytes));
    return s;
}

// Generates with a loaded pipeline and writes the PNG (its metadata names `device`), then the
// "wrote" line (ending with `wrote_extra`), the --verbose report and the summary lines.
template <class Pipe, class Options>
int generate_and_write(const GenerateArgs& a, Pipe& pipe, const PipelineOptions& po, const Options& go,
                       const std::string& model, const std::string& device, const std::string& wrote_extra,
                       double load_s, std::chrono::steady_clock::time_point t_start) {
    std::vector<double> steps;
    const GenerateResult r = pipe.generate(go, progress_bar(&steps));
    const std::string quant = quant_method_name(po.transformer_quant.method);
    write_png(a.output, r.image.data<uint8_t>(), int(r.image.size(1)), int(r.image.size(0)),
              image_metadata(go, model, quant, device));
    const double total_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    fmt::print("wrote {} ({}x{}, {} steps, seed {}{})\n", a.output, go.width, go.height, go.steps, go.seed, wrote_extra);
    if (a.verbose) print_time_report(load_s + r.load_seconds, r, steps);
    fmt::print("time: load {:.2f} s, text encoder {:.2f} s, denoise {:.2f} s ({:.2f} s/step), vae {:.2f} s, total "
               "{:.2f} s\n",
               load_s + r.load_seconds, r.text_seconds, r.denoise_seconds, r.denoise_seconds / go.steps,
               r.vae_seconds, total_s);
    fmt::print("quantization: transformer {} ({} int8 Linear layers{}), text encoder {} int8 Linear layers; {}\n",
               quant, pipe.transformer_int8_layers(), po.fp8_attention ? ", FP8 attention" : "",
               pipe.text_encoder_int8_layers(), memory_summary(r, po));
    return 0;
}

// generate with a QwenImagePipeline folder: --true-cfg-scale instead of --guidance, 50 steps by
// default, one device.
int generate_qwen_image(const GenerateArgs& a, const PipelineOptions& po, const Tensor& latents,
                        std::chrono::steady_clock::time_point t_start) {
    if (a.guidance_opt->count() > 0)
        throw UsageError("--guidance is Z-Image's classifier-free guidance; a Qwen-Image pipeline takes "
                         "--true-cfg-scale (with --negative-prompt)");
    if (a.parallel_opt->count() > 0 || a.gpus != 1)
        throw UsageError(fmt::format("--gpus {} / --parallel: the Qwen-Image pipeline runs on one device", a.gpus));
    QwenImageGenerateOptions go;
    go.prompt = a.prompt;
    if (a.negative_opt->count() > 0) go.negative_prompt = a.negative_prompt;
    go.steps = a.steps_opt->count() > 0 ? a.steps : QwenImageGenerateOptions{}.steps;
    go.width = a.width;
    go.height = a.height;
    go.seed = a.seed;
    go.true_cfg_scale = a.true_cfg_scale;
    go.max_sequence_length = a.max_sequence_length;
    go.latents = latents;
    QwenImagePipeline::check_limits(go);
    bool tiny = false;
    const std::string model = resolve_model_dir(a.m.model, &tiny, TinyPipeline::QwenImage);
    if (tiny) note_tiny_model(TinyPipeline::QwenImage, model);
    const LoadProgress load_progress(model, ::isatty(2));
    auto t0 = std::chrono::steady_clock::now();
    QwenImagePipeline pipe(model, po, go);  // checks go before reading any weight
    const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (a.true_cfg_opt->count() > 0 && go.true_cfg_scale > 1 && !go.negative_prompt)
        fmt::print(stderr, "warning: --true-cfg-scale {} has no effect without --negative-prompt (as in diffusers, "
                           "true CFG runs with a negative prompt, even \" \")\n", go.true_cfg_scale);
    else if (go.true_cfg_scale <= 1 && go.negative_prompt)
        fmt::print(stderr, "warning: --negative-prompt is not used: true CFG runs only when --true-cfg-scale > 1\n");
    for (bool negative : {false, true}) {
        if (negative && !go.true_cfg()) continue;
        const int64_t n = pipe.prompt_tokens(negative ? *go.negative_prompt : go.prompt) - kQwenImageDropTokens;
        if (n > go.max_sequence_length)
            fmt::print(stderr,
                       "warning: the {} is {} tokens (after the template's first {}); only the first {} are used "
                       "(--max-sequence-length)\n",
                       negative ? "negative prompt" : "prompt", n, kQwenImageDropTokens, go.max_sequence_length);
    }
    return generate_and_write(a, pipe, po, go, model, a.m.device,
                              fmt::format(", true CFG {}", go.true_cfg() ? fmt::format("{}", go.true_cfg_scale) : "off"),
                              load_s, t_start);
}

int cmd_generate(GenerateArgs a) {
    namespace fs = std::filesystem;
    auto t_start = std::chrono::steady_clock::now();
    // Refuse a bad output path and out-of-range numbers before any work.
    check_output_file(a.output);
    if (fs::path(a.output).extension() != ".png")
        throw UsageError(fmt::format("-o {}: the output must be a .png file", a.output));
    if (a.parallel != "tensor" && a.parallel != "sequence")
        throw UsageError(fmt::format("--parallel {}: allowed values are tensor, sequence", a.parallel));
    PipelineOptions po = a.m.resolve(a.gpus);
    po.sequence_parallel = a.parallel == "sequence";
    po.vae_tiling = a.vae_tiling;
    GenerateOptions go;
    go.prompt = a.prompt;
    go.negative_prompt = a.negative_prompt;
    go.steps = a.steps;
    go.width = a.width;
    go.height = a.height;
    go.seed = a.seed;
    go.guidance = a.guidance;
    go.max_sequence_length = a.max_sequence_length;
    if (!a.latents.empty()) {
        SafetensorsFile f(a.latents);
        if (f.keys().size() != 1 && !f.contains("latents"))
            throw ShapeError(fmt::format("{} holds {} tensors: name the initial noise 'latents'",
                                         a.latents, f.keys().size()));
        go.latents = f.get(f.contains("latents") ? "latents" : f.keys()[0]);
    }
    const TinyPipeline builtin = parse_tiny_pipeline(a.pipeline);
    if (!a.m.model.empty()) {
        if (a.pipeline_opt->count() > 0)
            throw UsageError(fmt::format("--pipeline {} picks a built-in tiny model and cannot go with --model: the "
                                         "folder's model_index.json picks its pipeline",
                                         a.pipeline));
        // model_index.json's _class_name picks the pipeline; a folder whose index cannot be read goes
        // the Z-Image way, which reports what is wrong with it.
        std::string cls;
        try {
            cls = pipeline_class(a.m.model);
        } catch (const Error&) {
        }
        if (cls == "QwenImagePipeline") return generate_qwen_image(a, po, go.latents, t_start);
    } else if (builtin == TinyPipeline::QwenImage) {
        return generate_qwen_image(a, po, go.latents, t_start);
    }
    if (a.true_cfg_opt->count() > 0)
        throw UsageError("--true-cfg-scale is Qwen-Image's true CFG; a Z-Image pipeline takes --guidance");
    ZImagePipeline::check_limits(go);
    bool tiny = false;
    const std::string model = resolve_model_dir(a.m.model, &tiny);
    if (tiny) note_tiny_model(TinyPipeline::ZImage, model);
    const LoadProgress load_progress(model, ::isatty(2));
    auto t0 = std::chrono::steady_clock::now();
    ZImagePipeline pipe(model, po, go);  // checks go before reading any weight
    double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    for (bool negative : {false, true}) {
        if (negative && go.guidance <= 0) continue;
        const int64_t n = pipe.prompt_tokens(negative ? go.negative_prompt : go.prompt);
        if (n > go.max_sequence_length)
            fmt::print(stderr,
                       "warning: the {} is {} tokens after the chat template; only the first {} are used "
                       "(--max-sequence-length)\n",
                       negative ? "negative prompt" : "prompt", n, go.max_sequence_length);
    }

    return generate_and_write(a, pipe, po, go, model,
                              a.gpus > 1 ? fmt::format("cuda x {} ({} parallel)", a.gpus, a.parallel) : a.m.device,
                              "", load_s, t_start);
}

struct ServeArgs {
    std::string host = "127.0.0.1", api_key;
    int port = 8000, max_queue = 16;
    ModelFlags m;
};

int cmd_serve(ServeArgs a) {
    server::ServerOptions so;
    so.pipeline = a.m.resolve(1);
    so.model = a.m.model;
    so.device = a.m.device;
    so.host = a.host;
    if (a.port < 0 || a.port > 65535) throw UsageError(fmt::format("--port {}: must be from 0 to 65535", a.port));
    so.port = a.port;
    so.api_key = a.api_key;
    if (so.api_key.empty())
        if (const char* k = std::getenv("QDIT_API_KEY")) so.api_key = k;
    so.max_queue = a.max_queue;
    return server::serve(so);
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"qdit: diffusion-transformer inference with online W8A8 quantization"};
    app.require_subcommand(1);
    app.set_help_all_flag("--help-all", "Help for every command");

    QuantFlags inspect_q, quantize_q;
    std::string inspect_dir, quantize_dir, quantize_out;

    CLI::App* inspect = app.add_subcommand(
        "inspect", "List each Linear layer (name, shape, precision it would get) and the weight "
                   "bytes before and after quantization, without running the model");
    inspect->add_option("model_dir", inspect_dir,
                        "Diffusers pipeline folder or transformer folder")
        ->required();
    inspect_q.add(inspect);

    CLI::App* quantize = app.add_subcommand(
        "quantize", "Write a pre-quantized copy of a model (int8 weights + per-channel "
                    "weight_scale tensors, quantization_config in config.json)");
    quantize->add_option("model_dir", quantize_dir, "Diffusers pipeline folder or transformer folder")
        ->required();
    quantize->add_option("-o,--output", quantize_out, "Output folder (must not exist or be empty)")
        ->required();
    quantize_q.add(quantize);

    GenerateArgs gen;
    CLI::App* generate = app.add_subcommand(
        "generate", "Generate an image from a prompt with a diffusers ZImagePipeline or QwenImagePipeline "
                    "folder (a built-in tiny random-weight model when no --model is given, see --pipeline)");
    generate->add_option("--prompt", gen.prompt, "The prompt")->required();
    gen.negative_opt = generate->add_option(
        "--negative-prompt", gen.negative_prompt,
        "Negative prompt (Z-Image: used when --guidance > 0; Qwen-Image: given, even empty, it turns on true CFG "
        "when --true-cfg-scale > 1)");
    gen.steps_opt = generate->add_option(
        "--steps", gen.steps,
        fmt::format("Denoising steps, 1 to {}; at least 2 when the scheduler sets shift_terminal, as Qwen-Image's does "
                    "(default: 9 for Z-Image, 50 for Qwen-Image)",
                    kMaxSteps));
    generate->add_option("--width", gen.width,
                         fmt::format("Image width, a multiple of 16 up to {} (and within the "
                                     "transformer's RoPE table, axes_lens[2] x 16)",
                                     kMaxImageSide))
        ->capture_default_str();
    generate->add_option("--height", gen.height,
                         fmt::format("Image height, a multiple of 16 up to {} (and within the "
                                     "transformer's RoPE table, axes_lens[1] x 16)",
                                     kMaxImageSide))
        ->capture_default_str();
    generate->add_option("--seed", gen.seed, "Seed of the initial noise")->capture_default_str();
    gen.guidance_opt = generate->add_option("--guidance", gen.guidance,
                                            "Z-Image only: classifier-free guidance scale; CFG runs when > 0 "
                                            "(Z-Image-Turbo: 0)")
                           ->capture_default_str();
    gen.true_cfg_opt = generate->add_option("--true-cfg-scale", gen.true_cfg_scale,
                                            "Qwen-Image only: true CFG scale; true CFG runs when > 1 and "
                                            "--negative-prompt is given (as diffusers' true_cfg_scale)")
                           ->capture_default_str();
    generate->add_option("--max-sequence-length", gen.max_sequence_length,
                         fmt::format("Prompt tokens kept after the chat template, 1 to {} (longer "
                                     "prompts are cut); the prompt must also fit the transformer's "
                                     "RoPE table (axes_lens[0] of transformer/config.json). Qwen-Image: "
                                     "tokens kept after the template's first {}, 1 to {}",
                                     kMaxSequenceLength, kQwenImageDropTokens, kQwenImageMaxSequenceLength))
        ->capture_default_str();
    generate->add_option("--latents", gen.latents,
                         "Initial noise from a safetensors file (one floating-point tensor, or one "
                         "named 'latents', of shape [1, 16, H/8, W/8]; Qwen-Image also takes the packed "
                         "[1, H/16 x W/16, 64]) instead of the seeded noise");
    generate->add_option("--gpus", gen.gpus,
                         "Z-Image only: GPUs for the transformer: N > 1 splits it over NCCL on CUDA GPUs 0..N-1 (text "
                         "encoder and VAE on GPU 0; implies --device cuda; needs a build with NCCL and "
                         "libnccl.so.2 at run time, see docs/usage.md)")
        ->capture_default_str();
    gen.parallel_opt = generate->add_option("--parallel", gen.parallel,
                         "Z-Image only: how --gpus N > 1 splits the transformer: tensor (weights split, two all-reduces "
                         "per block) or sequence (Ulysses: tokens split, whole weights on every GPU, two "
                         "all-to-alls per block; N must divide the token counts: 2, 4 or 8)")
        ->capture_default_str();
    generate->add_option("-o,--output", gen.output,
                         "Output PNG (written atomically; its folder must exist and be writable, "
                         "checked before any work)")
        ->capture_default_str();
    generate->add_flag("-v,--verbose", gen.verbose,
                       "Say where the time went: the load (GPU weights: read, waiting for uploads, convert / "
                       "quantize), cuDNN plans built or read from the plan cache, the text encoder, each "
                       "denoising step, the VAE");
    generate->add_flag("--vae-tiling", gen.vae_tiling,
                       "Qwen-Image only: decode the latents in tiles of 256x256 pixels every 192 (diffusers' "
                       "enable_tiling), so the VAE's memory is that of one tile; seams blended over 64 pixels "
                       "(docs/qwen_image_vae.md gives the error)");
    gen.pipeline_opt = generate->add_option("--pipeline", gen.pipeline,
                                            fmt::format("Without --model: the built-in tiny random-weight pipeline "
                                                        "to run, {} (with --model, model_index.json picks it)",
                                                        kTinyPipelineNames))
                           ->capture_default_str();
    gen.m.add(generate);

    ServeArgs srv;
    CLI::App* serve = app.add_subcommand(
        "serve", "Load a model once and serve it over HTTP: POST /v1/images/generations (OpenAI's images "
                 "API), async jobs under /v1/jobs with progress events, /v1/models, /health, /metrics");
    serve->add_option("--host", srv.host, "Address to listen on (loopback unless told otherwise)")
        ->capture_default_str();
    serve->add_option("--port", srv.port, "TCP port (0: any free port, printed at start)")->capture_default_str();
    serve->add_option("--api-key", srv.api_key,
                      "Require 'Authorization: Bearer KEY' on every endpoint but /health (default: "
                      "$QDIT_API_KEY when set, else no key)");
    serve->add_option("--max-queue", srv.max_queue,
                      "Accepted jobs that may wait for the worker; one more is refused with 429")
        ->capture_default_str();
    srv.m.add(serve);

    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp&) {
        std::cout << app.help();
        return 0;
    } catch (const CLI::CallForAllHelp&) {
        std::cout << app.help("", CLI::AppFormatMode::All);
        return 0;
    } catch (const CLI::ParseError& e) {
        fmt::print(stderr, "error: {} (see qdit --help)\n", e.what());
        return 2;
    }

    try {
        if (inspect->parsed()) return cmd_inspect(inspect_dir, inspect_q);
        if (quantize->parsed()) return cmd_quantize(quantize_dir, quantize_out, quantize_q);
        if (generate->parsed()) return cmd_generate(gen);
        if (serve->parsed()) return cmd_serve(srv);
    } catch (const UsageError& e) {
        fmt::print(stderr, "error: {}\n", e.what());
        return 2;
    } catch (const std::exception& e) {
        fmt::print(stderr, "error: {}\n", e.what());
        return 1;
    }
    return 2;
}
