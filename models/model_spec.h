// The spec of a model family, built from its config.json (quant/spec.h has
// the types): the registry of the classes qdit knows.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "quant/spec.h"

namespace qdit {

// Reads `<dir>/config.json` and builds the spec of the model class it names.
// ConfigError names the file and field when the class is unknown or a field
// is missing or invalid.
ModelSpec load_model_spec(const std::string& dir);

// Whether the checkpoint holds a key (its header, no data): lets a family whose checkpoints come in
// several key layouts (Qwen2.5-VL: "model.layers.*" or "model.language_model.layers.*") build the
// spec of the one at hand. Without it, the layout transformers writes is assumed.
using HasKey = std::function<bool(const std::string&)>;
ModelSpec model_spec_from_config(const nlohmann::json& config, const std::string& where,
                                 const HasKey& has_key = {});

// The classes load_model_spec understands.
std::vector<std::string> supported_model_classes();

// A config's RoPE axes, field `field`: even dims summing to the head dim (`head`: how the config
// names it). ConfigError naming `where` otherwise.
void check_rope_axes(const std::vector<int64_t>& dims, int64_t head_dim, const std::string& where,
                     const std::string& field, const std::string& head);

}  // namespace qdit
