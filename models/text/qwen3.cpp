#include "models/text/qwen3.h"

#include <fmt/format.h>

#include "io/files.h"

using nlohmann::json;

namespace qdit::text {

// ---------------------------------------------------------------------------
// Config and parameter layout

Qwen3Config Qwen3Config::from_json(const json& j, const std::string& where) {
    using namespace config_limits;
    Qwen3Config c;
    require_config(j.is_object(), where, "config must be a JSON object");
    if (j.contains("architectures")) {
        const json& a = j["architectures"];
        require_config(a.is_array() && !a.empty() && a[0].is_string(), where,
                       "field 'architectures' must be a non-empty list of class names");
        c.architecture = a[0].get<std::string>();
    }
    require_config(c.architecture == "Qwen3Model" || c.architecture == "Qwen3ForCausalLM", where,
                   fmt::format("field 'architectures' names '{}'; a Qwen3 text encoder is Qwen3Model or "
                               "Qwen3ForCausalLM",
                               c.architecture));
    read_config_field(j, where, "vocab_size", &c.vocab_size, {1, kVocab});
    read_config_field(j, where, "hidden_size", &c.hidden_size, {1, kWidth});
    read_config_field(j, where, "intermediate_size", &c.intermediate_size, {1, kFfnWidth});
    read_config_field(j, where, "num_hidden_layers", &c.num_hidden_layers, {1, kLayers});
    read_config_field(j, where, "num_attention_heads", &c.num_attention_heads, {1, kHeads});
    c.num_key_value_heads = c.num_attention_heads;  // transformers: None means MHA
    read_config_field(j, where, "num_key_value_heads", &c.num_key_value_heads, {1, kHeads});
    read_config_field(j, where, "head_dim", &c.head_dim, {2, kWidth});
    read_config_field(j, where, "rms_norm_eps", &c.rms_norm_eps, {1e-12, 1.0});
    read_config_field(j, where, "attention_bias", &c.attention_bias);
    read_config_field(j, where, "tie_word_embeddings", &c.tie_word_embeddings);

    std::string act = "silu";
    read_config_field(j, where, "hidden_act", &act);
    require_config(act == "silu", where,
                   fmt::format("field 'hidden_act' is '{}'; only 'silu' (SwiGLU) is supported", act));
    bool sliding = false;
    read_config_field(j, where, "use_sliding_window", &sliding);
    require_config(!sliding, where, "field 'use_sliding_window' is true; sliding-window attention is not "
                                    "supported (set it to false)");
    if (j.contains("layer_types") && !j["layer_types"].is_null()) {
        std::vector<std::string> types;
        read_config_field(j, where, "layer_types", &types);
        for (const std::string& t : types)
            require_config(t == "full_attention", where,
                           fmt::format("field 'layer_types' has '{}'; only 'full_attention' is supported",
                                       t));
    }

    // transformers 5 writes rope_parameters {rope_type, rope_theta}; 4.x wrote
    // rope_theta and rope_scaling at the top level.
    std::string rope_type = "default";
    if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) {
        const json& rp = j["rope_parameters"];
        read_config_field(rp, where + " rope_parameters", "rope_type", &rope_type);
        read_config_field(rp, where + " rope_parameters", "rope_theta", &c.rope_theta, {1.0, 1e12});
    } else {
        read_config_field(j, where, "rope_theta", &c.rope_theta, {1.0, 1e12});
        if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
            const json& rs = j["rope_scaling"];
            require_config(rs.is_object(), where, "field 'rope_scaling' must be an object or null");
            // Older configs spell the key "type".
            const char* key = rs.contains("rope_type") ? "rope_type" : "type";
            read_config_field(rs, where + " rope_scaling", key, &rope_type);
        }
    }
    require_config(rope_type == "default", where,
                   fmt::format("rope type '{}' is not supported (only 'default')", rope_type));

    require_config(c.num_attention_heads % c.num_key_value_heads == 0, where,
                   fmt::format("num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                               c.num_attention_heads, c.num_key_value_heads));
    require_config(c.head_dim % 2 == 0, where, fmt::format("head_dim ({}) must be even", c.head_dim));
    return c;
}

DecoderLmConfig Qwen3Config::lm() const {
    DecoderLmConfig l;
    l.family = "Qwen3";
    l.prefix = prefix();
    l.vocab_size = vocab_size;
    l.hidden_size = hidden_size;
    l.intermediate_size = intermediate_size;
    l.num_hidden_layers = num_hidden_layers;
    l.num_attention_heads = num_attention_heads;
    l.num_key_value_heads = num_key_value_heads;
    l.head_dim = head_dim;
    l.rms_norm_eps = rms_norm_eps;
    l.rope_theta = rope_theta;
    l.qkv_bias = l.o_bias = attention_bias;
    l.qk_norm = true;
    return l;
}

ModelSpec model_spec(const Qwen3Config& c) {
    ModelSpec s;
    s.class_name = c.architecture;
    add_decoder_lm_params(c.lm(), s);
    if (c.architecture == "Qwen3ForCausalLM") {
        if (c.tie_word_embeddings)  // tied: some exports still write the (unused) copy
            s.optional_params.push_back({"lm_head.weight", {c.vocab_size, c.hidden_size}});
        else
            s.params.push_back({"lm_head.weight", {c.vocab_size, c.hidden_size}});
    }
    return s;
}

Qwen3TextModel::Qwen3TextModel(const PreparedModel& m, DType compute, const ops::Context& ctx)
    : Qwen3TextModel(Qwen3Config::from_json(m.folder.config, m.folder.config_path), m, compute, ctx) {}

Qwen3TextModel::Qwen3TextModel(Qwen3Config c, const PreparedModel& m, DType compute, const ops::Context& ctx)
    : DecoderLM(c.lm(), m, compute, ctx), cfg_(std::move(c)) {}

}  // namespace qdit::text
