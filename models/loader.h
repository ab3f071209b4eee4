// A model folder opened for loading: its transformer's config, parameter
// spec, checkpoint (validated against the spec) and quantization plan.
// Nothing here reads weight data; load_linear does, one layer at a time.
#pragma once
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "models/model_spec.h"
#include "nn/linear_group.h"
#include "nn/load.h"
#include "quant/plan.h"

namespace qdit {

struct ModelFolder {
    std::string root;             // what the user named
    std::string transformer_dir;  // root itself, or root/transformer for a pipeline folder
    bool is_pipeline = false;     // root holds model_index.json
    std::string config_path;      // transformer_dir/config.json
    nlohmann::json config;
};

// Accepts a diffusers pipeline folder (model_index.json + transformer/) or a
// transformer folder (config.json + safetensors). IoError names what is missing.
ModelFolder locate_model(const std::string& path);

struct PreparedModel {
    ModelFolder folder;
    ModelSpec spec;
    std::unique_ptr<Checkpoint> checkpoint;
    std::optional<QuantConfig> stored_config;  // quantization_config of a pre-quantized checkpoint
    QuantPlan plan;
    std::vector<std::string> unused_keys;  // checkpoint keys of no module of the model: never read
};

// Opens the model, checks that the checkpoint holds every tensor the model
// needs with the right shapes (listing missing and unexpected keys: an
// unexpected key is one of a module the model has, e.g. a bias its config does
// not declare; keys of other modules are skipped with a warning on stderr and
// kept in unused_keys), and plans quantization. A pre-quantized checkpoint is detected from the
// quantization_config in its config.json and int8 weights with weight_scale
// tensors: its layers load as they are stored, without conversion.
PreparedModel prepare_model(const std::string& path, const QuantConfig& requested);

// Loads one Linear layer as the plan says: quantizing a high-precision weight
// at load time, taking a pre-quantized one as it is, or keeping it in
// `compute` (F32 or BF16) precision.
inline nn::Linear load_linear(const PreparedModel& m, const LayerPlan& layer, DType compute) {
    return nn::load_linear(*m.checkpoint, layer, compute);
}

// The weights of a prepared folder: its checkpoint and plan, named by the folder.
inline nn::ModelWeights model_weights(const PreparedModel& m) {
    return {m.plan, m.checkpoint.get(), 0, m.folder.root};
}

// What a transformer of the op layer is built from: its config and its weights. Either a prepared
// folder (Config::from_json of its config.json; implicit, so a model is made from a PreparedModel)
// or, for benchmarks at the real size, a config with random weights ~ N(0, 0.02) (norm weights
// ~ N(1, 0.02)) made on the GPU from `seed` under the default plan of `quant` (ignored_layers
// included) for model_spec(config), named "random <class>" in messages.
template <class Config>
struct ModelSource {
    Config config;
    nn::ModelWeights weights;

    ModelSource(const PreparedModel& m)
        : config(Config::from_json(m.folder.config, m.folder.config_path)), weights(model_weights(m)) {}
    ModelSource(const Config& c, const QuantConfig& quant, uint64_t seed) : config(c) {
        const ModelSpec spec = model_spec(c);
        weights = {make_quant_plan(spec, quant), nullptr, seed, "random " + spec.class_name};
    }
};

// Writes a pre-quantized copy of the model to `out_dir` (which must not exist
// or be empty): int8 weights with <name>.weight_scale F32 [out, 1] tensors and
// the quantization_config in config.json; a pipeline folder's other components
// are copied unchanged. Everything is written into a temporary folder beside
// `out_dir` and renamed at the end, so no partial output is left behind.
// `progress(done, total)` is called after each tensor.
void write_quantized(const PreparedModel& m, const std::string& out_dir,
                     const std::function<void(size_t, size_t)>& progress = {});

}  // namespace qdit
