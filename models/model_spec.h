// The spec of a model family, built from its config.json (quant/spec.h has
// the types): the registry of the classes qdit knows.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "quant/spec.h"

namespace qdit {

// Reads `<dir>/config.json` and builds the spec of the model class it names.
// ConfigError names the file and field when the class is unknown or a field
// is missing or invalid.
ModelSpec load_model_spec(const std::string& dir);
ModelSpec model_spec_from_config(const nlohmann::json& config, const std::string& where);

// The classes load_model_spec understands.
std::vector<std::string> supported_model_classes();

}  // namespace qdit
