// What a model family declares about itself without touching its weights:
// every parameter (name and shape, named exactly like the checkpoint keys),
// which of them are Linear layers, and which Linear layers it keeps in high
// precision by default when quantizing.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/tensor.h"

namespace qdit {

struct LinearSpec {
    std::string name;  // module name, e.g. "layers.3.attention.to_q"
    int64_t out_features = 0, in_features = 0;
    bool bias = false;
};

struct ParamSpec {
    std::string name;  // full key, e.g. "layers.3.attention.to_q.weight"
    Shape shape;
};

struct ModelSpec {
    std::string class_name;  // config.json "_class_name"
    std::vector<ParamSpec> params;
    // Tensors a checkpoint may hold without the model reading them (e.g. a
    // tied lm_head saved anyway): accepted when present, shape-checked.
    std::vector<ParamSpec> optional_params;
    std::vector<LinearSpec> linears;
    // Patterns (same rule as ignored_layers) kept in high precision by default.
    std::vector<std::string> keep_high_precision;

    int64_t parameter_count() const;
};

// Reads `<dir>/config.json` and builds the spec of the model class it names.
// ConfigError names the file and field when the class is unknown or a field
// is missing or invalid.
ModelSpec load_model_spec(const std::string& dir);
ModelSpec model_spec_from_config(const nlohmann::json& config, const std::string& where);

// The classes load_model_spec understands.
std::vector<std::string> supported_model_classes();

}  // namespace qdit
