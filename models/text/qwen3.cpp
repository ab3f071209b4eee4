#include "models/text/qwen3.h"

#include <fmt/format.h>

#include "io/files.h"

using nlohmann::json;

namespace qdit::text {

// ---------------------------------------------------------------------------
// Config and parameter layout

Qwen3Config::Qwen3Config() {
    family = "Qwen3";
    vocab_size = 151936;
    hidden_size = 4096;
    intermediate_size = 22016;
    num_hidden_layers = 32;
    num_attention_heads = num_key_value_heads = 32;
    head_dim = 128;
    rms_norm_eps = 1e-6;
    rope_theta = 10000.0;
    qk_norm = true;
}

Qwen3Config Qwen3Config::from_json(const json& j, const std::string& where) {
    Qwen3Config c;
    c.architecture = read_architecture(j, where, c.family, {"Qwen3Model", "Qwen3ForCausalLM"});
    c.prefix = c.architecture == "Qwen3ForCausalLM" ? "model." : "";
    read_decoder_lm_fields(j, where, c);
    read_config_field(j, where, "head_dim", &c.head_dim, {2, config_limits::kWidth});
    read_config_field(j, where, "attention_bias", &c.attention_bias);
    c.qkv_bias = c.o_bias = c.attention_bias;

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
    check_decoder_lm_heads(c, where);
    return c;
}

ModelSpec model_spec(const Qwen3Config& c) {
    ModelSpec s;
    s.class_name = c.architecture;
    add_decoder_lm_params(c, s);
    if (c.architecture == "Qwen3ForCausalLM") add_lm_head_param(c, s);
    return s;
}

Qwen3Config Qwen3Config::from_model(const PreparedModel& m) {
    return from_json(m.folder.config, m.folder.config_path);
}

}  // namespace qdit::text
