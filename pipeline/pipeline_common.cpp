#include "pipeline/pipeline_common.h"

#include <cmath>
#include <filesystem>
#include <random>
#include <vector>

#include "core/error.h"
#include "core/memory.h"
#include "io/files.h"
#include "ops/attention.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace qdit {

namespace {

// model_index.json of the pipeline folder `dir` (*index_path: its path), a JSON object.
json read_model_index(const std::string& dir, std::string* index_path) {
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) raise<IoError>("model folder {} does not exist", dir);
    std::string index = (fs::path(dir) / "model_index.json").string();
    if (!fs::exists(index)) raise<IoError>("{} is missing: {} is not a diffusers pipeline folder", index, dir);
    json j = read_json_file(index);
    if (!j.is_object()) raise<ConfigError>("{}: expected a JSON object", index);
    *index_path = index;
    return j;
}

// `dir`, once model_index.json names `pipeline` and every component exists (PipelineFolder).
const std::string& checked_pipeline_folder(const std::string& dir, const std::string& pipeline,
                                           const std::string& vae_class) {
    std::string index;
    const json j = read_model_index(dir, &index);
    std::string cls;
    read_config_field(j, index, "_class_name", &cls);
    if (cls != "ZImagePipeline" && cls != "QwenImagePipeline")
        raise<ConfigError>("{}: pipeline class '{}' is not supported (qdit runs ZImagePipeline and "
                           "QwenImagePipeline folders)",
                           index, cls);
    if (cls != pipeline) raise<ConfigError>("{}: pipeline class '{}' is not a {}", index, cls, pipeline);
    for (const char* part : {"scheduler", "text_encoder", "tokenizer", "transformer", "vae"}) {
        std::vector<std::string> library_and_class;  // e.g. ["diffusers", "AutoencoderKL"]
        read_config_field(j, index, part, &library_and_class);
        if (library_and_class.size() != 2)
            raise<ConfigError>("{}: field '{}' must name the component's library and class, as "
                               "[\"diffusers\", \"{}\"] (got {})",
                               index, part, vae_class, j.contains(part) ? j[part].dump() : "nothing");
        // diffusers builds the scheduler that model_index.json names (with scheduler_config.json's
        // values): another class would step differently.
        if (std::string(part) == "scheduler" && library_and_class[1] != "FlowMatchEulerDiscreteScheduler")
            raise<ConfigError>("{}: field 'scheduler' names {}; qdit's scheduler is FlowMatchEulerDiscreteScheduler",
                               index, library_and_class[1]);
        if (!fs::is_directory(fs::path(dir) / part))
            raise<IoError>("{}: component folder {}/ is missing", dir, part);
    }
    return dir;
}

}  // namespace

std::string pipeline_class(const std::string& dir) {
    std::string index;
    const json j = read_model_index(dir, &index);
    std::string cls;
    read_config_field(j, index, "_class_name", &cls);
    return cls;
}

void check_pipeline_dtype(const PipelineOptions& opt) {
    if (opt.dtype != DType::F32 && opt.dtype != DType::BF16)
        raise<UsageError>("the pipeline runs in f32 or bf16, not {}", dtype_name(opt.dtype));
    if (opt.device.type == DeviceType::CUDA && opt.dtype != DType::BF16)
        raise<UsageError>("on CUDA the pipeline runs in bf16 (got {})", dtype_name(opt.dtype));
}

void check_size_and_steps(int width, int height, int steps) {
    if (width <= 0 || height <= 0 || width > kMaxImageSide || height > kMaxImageSide)
        raise<UsageError>("--width and --height must be between 1 and {} (got {}x{})", kMaxImageSide, width,
                          height);
    if (steps <= 0 || steps > kMaxSteps)
        raise<UsageError>("--steps must be between 1 and {} (got {})", kMaxSteps, steps);
}

void check_latents_dtype(const Tensor& latents) {
    if (latents.defined() && !is_float(latents.dtype()))
        raise<ShapeError>("the initial latents are {}; they must be floating point (f32, bf16 or f16)",
                          dtype_name(latents.dtype()));
}

// Options that the device cannot run are refused before any weight is read.
static const PipelineOptions& checked_options(const PipelineOptions& o) {
    if (o.fp8_attention && !ops::fp8_attention_available(ops::Context{o.device}))
        raise<UsageError>("FP8 attention runs on a GPU of compute capability 9.x or 10.x (Hopper or Blackwell) with "
                          "cuDNN 9; {} is not one",
                          o.device.str());
    return o;
}

PipelineFolder::PipelineFolder(const std::string& d, const PipelineOptions& o, const std::string& pipeline,
                               const std::string& vae_class)
    : dir(checked_pipeline_folder(d, pipeline, vae_class)),
      opt(checked_options(o)),
      scheduler(FlowMatchConfig::from_json(read_json_file(path("scheduler/scheduler_config.json")),
                                           path("scheduler/scheduler_config.json"))),
      tokenizer(text::BpeTokenizer::from_dir(path("tokenizer"))),
      text_prepared(prepare_model(path("text_encoder"), o.text_encoder_quant)),
      transformer_prepared(prepare_model(path("transformer"), o.transformer_quant)) {}

std::string PipelineFolder::path(const std::string& component) const {
    return (fs::path(dir) / component).string();
}

void PipelineFolder::require_weight_memory(uint64_t vae_bytes) const {
    const uint64_t text_bytes = weight_bytes(text_prepared, opt.dtype),
                   dit_bytes = weight_bytes(transformer_prepared, opt.dtype);
    uint64_t budget = opt.memory_budget;
    std::string budget_name = "the memory budget";
    if (budget == 0 && opt.device.type == DeviceType::CPU) {
        budget = physical_memory_bytes();
        budget_name = "the machine's physical memory";
    }
    require_memory(text_bytes + dit_bytes + vae_bytes, budget,
                   fmt::format("the weights of {} (text encoder {}, transformer {}, VAE {}, in {})", dir,
                               format_bytes(text_bytes), format_bytes(dit_bytes), format_bytes(vae_bytes),
                               dtype_name(opt.dtype)),
                   budget_name);
}

void GenerateResult::record_device_memory(const ops::Context& ctx) {
    const ops::DeviceMemory mem = ops::device_memory(ctx);
    device_peak_bytes = mem.peak;
    device_weight_bytes = mem.weights;
    device_activation_peak_bytes = mem.peak_activations;
}

uint64_t weight_bytes(const PreparedModel& m, DType compute) {
    const uint64_t c = dtype_size(compute);
    uint64_t b = uint64_t(m.spec.parameter_count()) * c;
    for (const LayerPlan& l : m.plan.layers)
        if (int8_weights(l.precision)) {
            const uint64_t w = uint64_t(l.spec.out_features) * uint64_t(l.spec.in_features);
            b = b - w * c + w + uint64_t(l.spec.out_features) * sizeof(float);
        }
    return b;
}

Tensor seeded_noise(const Shape& shape, uint64_t seed) {
    Tensor t = Tensor::empty(shape, DType::F32);
    std::mt19937_64 rng(seed);
    float* p = t.data<float>();
    const double two_pi = 6.283185307179586;
    for (int64_t i = 0; i < t.numel(); i += 2) {
        // Box-Muller on two uniforms in (0, 1].
        double u1 = (double(rng() >> 11) + 1.0) * 0x1.0p-53, u2 = double(rng() >> 11) * 0x1.0p-53;
        double r = std::sqrt(-2.0 * std::log(u1));
        p[i] = float(r * std::cos(two_pi * u2));
        if (i + 1 < t.numel()) p[i + 1] = float(r * std::sin(two_pi * u2));
    }
    return t;
}


}  // namespace qdit
