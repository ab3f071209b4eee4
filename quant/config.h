// What the user asks for: the quantization method, the layers to keep in high
// precision, and the activation scheme. See docs/quantization.md.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace qdit {

enum class QuantMethod { None, Int8, Fp8 };
const char* quant_method_name(QuantMethod m);  // "none", "int8", "fp8"

struct QuantConfig {
    QuantMethod method = QuantMethod::None;
    std::vector<std::string> ignored_layers;
    std::string activation_scheme = "dynamic";

    bool enabled() const { return method != QuantMethod::None; }
    // The JSON written into a pre-quantized checkpoint's config.json.
    nlohmann::json to_json() const;
};

// Parses a quantization config object. `where` names its source in errors
// ("--quantization-config", "model/transformer/config.json"...).
// Fields: method (or its alias quant_method), ignored_layers, activation_scheme.
QuantConfig parse_quant_config(const nlohmann::json& j, const std::string& where);

// What the command line gave: `--quantization NAME`, `--quantization-config
// JSON_OR_FILE` and `--ignored-layers a,b`; empty strings mean "not given".
struct QuantArgs {
    std::string shorthand;
    std::string config;  // inline JSON (starts with '{') or a file path
    std::vector<std::string> ignored_layers;
};

// Combines the three: the config's method wins over the shorthand (with a
// warning when they differ); --ignored-layers extends the config's list.
// Validates everything before any weight is read.
QuantConfig resolve_quant_config(const QuantArgs& args, std::vector<std::string>* warnings);

// Splits "a,b, c" into {"a","b","c"}; empty items are a UsageError.
std::vector<std::string> split_layer_list(const std::string& s, const std::string& flag);

}  // namespace qdit
