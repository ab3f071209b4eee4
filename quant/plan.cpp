#include "quant/plan.h"

#include <algorithm>
#include <cctype>

#include <fmt/format.h>

#include "core/error.h"
#include "core/memory.h"

namespace qdit {

namespace {

std::vector<std::string> split_dots(const std::string& s) {
    std::vector<std::string> out;
    size_t start = 0;
    for (;;) {
        size_t dot = s.find('.', start);
        out.push_back(s.substr(start, dot == std::string::npos ? std::string::npos : dot - start));
        if (dot == std::string::npos) return out;
        start = dot + 1;
    }
}

}  // namespace

bool layer_matches(const std::string& pattern, const std::string& name) {
    if (pattern == name) return true;
    std::vector<std::string> p = split_dots(pattern), n = split_dots(name);
    if (p.size() > n.size()) return false;
    for (size_t i = 0; i + p.size() <= n.size(); ++i)
        if (std::equal(p.begin(), p.end(), n.begin() + long(i))) return true;
    return false;
}

size_t QuantPlan::bytes_before() const {
    size_t b = 0;
    for (const LayerPlan& l : layers) b += l.bytes_before;
    return b;
}
size_t QuantPlan::bytes_after() const {
    size_t b = 0;
    for (const LayerPlan& l : layers) b += l.bytes_after;
    return b;
}
int QuantPlan::quantized_count() const {
    return int(std::count_if(layers.begin(), layers.end(),
                             [](const LayerPlan& l) { return int8_weights(l.precision); }));
}

QuantPlan make_quant_plan(const ModelSpec& model, const QuantConfig& config,
                          const std::vector<DType>& stored_dtypes,
                          const std::vector<bool>& prequantized) {
    QDIT_CHECK(stored_dtypes.size() == model.linears.size() &&
                   prequantized.size() == model.linears.size(),
               "plan needs one dtype and flag per Linear layer");
    QuantPlan plan;
    plan.config = config;
    for (const std::string& p : config.ignored_layers) plan.pattern_hits[p] = 0;

    for (size_t i = 0; i < model.linears.size(); ++i) {
        LayerPlan l;
        l.spec = model.linears[i];
        l.stored = stored_dtypes[i];
        l.prequantized = prequantized[i];
        const int64_t out = l.spec.out_features, in = l.spec.in_features;
        const size_t hp = dtype_size(l.stored);
        const size_t bias = l.spec.bias ? size_t(out) * hp : 0;
        l.bytes_before = size_t(out * in) * hp + bias;

        auto first_match = [&](const std::vector<std::string>& patterns) {
            for (const std::string& p : patterns)
                if (layer_matches(p, l.spec.name)) return p;
            return std::string();
        };
        const std::string user = first_match(config.ignored_layers), dflt = first_match(model.keep_high_precision);
        const Precision int8 = first_match(model.weight_only_int8).empty() ? Precision::Int8 : Precision::Int8WeightOnly;
        if (!user.empty()) plan.pattern_hits[user]++;

        if (l.prequantized) {
            if (!user.empty())
                raise<ConfigError>(
                    "layer '{}' is stored as int8 in the checkpoint, so ignored_layers pattern "
                    "'{}' cannot keep it in high precision (quantize again from the original "
                    "weights)",
                    l.spec.name, user);
            l.precision = int8;
        } else if (!config.enabled()) {
            l.precision = Precision::High;
        } else if (!user.empty()) {
            l.kept_by = "ignored_layers: " + user;
        } else if (!dflt.empty()) {
            l.kept_by = "model default: " + dflt;
        } else {
            l.precision = int8;
        }
        l.bytes_after = int8_weights(l.precision)
                            ? size_t(out * in) + size_t(out) * sizeof(float) + bias
                            : l.bytes_before;
        plan.layers.push_back(std::move(l));
    }
    for (const std::string& p : config.ignored_layers)
        if (plan.pattern_hits[p] == 0)
            plan.warnings.push_back(
                fmt::format("ignored_layers pattern '{}' matched no Linear layer", p));
    return plan;
}

std::string format_plan(const QuantPlan& plan) {
    size_t w = 5;
    for (const LayerPlan& l : plan.layers) w = std::max(w, l.spec.name.size());
    std::string out = fmt::format("{:<{}}  {:>14}  {:>5}  {:<9}  {:>10}  {:>10}  {}\n", "layer", w,
                                  "shape", "bias", "precision", "bytes", "loaded", "note");
    for (const LayerPlan& l : plan.layers) {
        std::string shape = fmt::format("[{}, {}]", l.spec.out_features, l.spec.in_features);
        std::string prec = l.precision == Precision::Int8           ? "int8"
                           : l.precision == Precision::Int8WeightOnly ? "int8-w"
                                                                      : dtype_name(l.stored);
        for (char& c : prec) c = char(std::tolower(static_cast<unsigned char>(c)));
        std::string note = l.prequantized ? "pre-quantized" : l.kept_by;
        if (l.precision == Precision::Int8WeightOnly) note += std::string(note.empty() ? "" : "; ") + "weight-only";
        out += fmt::format("{:<{}}  {:>14}  {:>5}  {:<9}  {:>10}  {:>10}  {}\n", l.spec.name, w,
                           shape, l.spec.bias ? "yes" : "no", prec, l.bytes_before, l.bytes_after,
                           note);
    }
    size_t before = plan.bytes_before(), after = plan.bytes_after();
    int q = plan.quantized_count();
    const auto wo = std::count_if(plan.layers.begin(), plan.layers.end(),
                                  [](const LayerPlan& l) { return l.precision == Precision::Int8WeightOnly; });
    out += fmt::format(
        "total: {} Linear layers, {} int8{}, {} high precision; Linear weights {} -> {} ({:.3f}x)\n",
        plan.layers.size(), q, wo ? fmt::format(" ({} weight-only)", wo) : std::string(),
        int(plan.layers.size()) - q, format_bytes(before), format_bytes(after),
        before ? double(after) / double(before) : 1.0);
    return out;
}

QuantPlan make_quant_plan(const ModelSpec& model, const QuantConfig& config) {
    return make_quant_plan(model, config, std::vector<DType>(model.linears.size(), DType::BF16),
                           std::vector<bool>(model.linears.size(), false));
}

}  // namespace qdit
