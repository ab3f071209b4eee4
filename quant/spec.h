// What a model family declares about itself without touching its weights:
// every parameter (name and shape, named exactly like the checkpoint keys),
// which of them are Linear layers, and which Linear layers it keeps in high
// precision by default when quantizing. The model families fill it in
// (models/model_spec.h); quantization plans are made from it.
#pragma once
#include <string>
#include <vector>

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
    // Key prefixes of parts of the checkpoint the model does not run (Qwen2.5-VL's vision tower,
    // "visual."): their tensors are accepted as they are, never read and not shape-checked.
    std::vector<std::string> ignored_prefixes;
    std::vector<LinearSpec> linears;
    // Patterns (same rule as ignored_layers) kept in high precision by default.
    std::vector<std::string> keep_high_precision;
    // Patterns whose layers get int8 weights but keep their activations in high precision
    // (weight-only int8) when the model is quantized: layers that read a conditioning vector.
    std::vector<std::string> weight_only_int8;

    int64_t parameter_count() const;
    // Appends Linear layer `name` (weight [out, in], and bias [out] when `bias`) to linears and params.
    void add_linear(const std::string& name, int64_t out, int64_t in, bool bias);
};

}  // namespace qdit
