// Which precision each Linear layer gets, decided once before any weight is
// read, and the report printed from it.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "quant/spec.h"
#include "quant/config.h"

namespace qdit {

// The ignored_layers rule: `pattern` matches `name` when it equals the whole
// name or a run of whole dotted components inside it. "feed_forward" matches
// "layers.3.feed_forward.w1"; "ff" does not match "feed_forward";
// "3.feed_forward" matches "layers.3.feed_forward.w1".
bool layer_matches(const std::string& pattern, const std::string& name);

// High: the stored dtype (or the compute dtype); Int8: W8A8 (int8 weights with per-row scales,
// activations quantized per token); Int8WeightOnly: the same int8 weights, activations kept in
// high precision.
enum class Precision { High, Int8, Int8WeightOnly };
inline bool int8_weights(Precision p) { return p != Precision::High; }

struct LayerPlan {
    LinearSpec spec;
    DType stored = DType::BF16;  // dtype of the weight in the checkpoint
    Precision precision = Precision::High;
    bool prequantized = false;   // int8 weight + weight_scale read from the checkpoint
    std::string kept_by;         // why it stays high precision: "ignored_layers: p" / "model default: p"
    size_t bytes_before = 0;     // weight + bias as stored in high precision
    size_t bytes_after = 0;      // what it occupies once loaded (int8 + f32 scale + bias)
};

struct QuantPlan {
    QuantConfig config;
    std::vector<LayerPlan> layers;
    std::map<std::string, int> pattern_hits;  // user pattern -> layers it kept
    std::vector<std::string> warnings;

    size_t bytes_before() const;
    size_t bytes_after() const;
    int quantized_count() const;
};

// `stored_dtype(name)` gives the checkpoint dtype of "<name>.weight" (the
// high-precision dtype for pre-quantized layers is their bias/scale dtype).
// Model defaults keep layers high precision unless `config` is disabled.
QuantPlan make_quant_plan(const ModelSpec& model, const QuantConfig& config,
                          const std::vector<DType>& stored_dtypes,
                          const std::vector<bool>& prequantized);
// The same for bf16 weights, none pre-quantized (the random weights of benchmarks).
QuantPlan make_quant_plan(const ModelSpec& model, const QuantConfig& config);

// The per-layer table and totals line printed by `qdit inspect`.
std::string format_plan(const QuantPlan& plan);

}  // namespace qdit
