#include "models/text/qwen25vl.h"

#include <numeric>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "io/files.h"

using nlohmann::json;

namespace qdit::text {

namespace {

// A rope type this port runs: transformers reads "mrope" as "default" (text-only positions make
// the sections equal), and writes both spellings.
void check_rope_type(const json& rope, const std::string& where) {
    for (const char* key : {"rope_type", "type"}) {
        std::string t = "default";
        read_config_field(rope, where, key, &t);
        require_config(t == "default" || t == "mrope", where,
                       fmt::format("field '{}' is '{}'; only 'default' / 'mrope' RoPE is supported", key, t));
    }
}

}  // namespace

Qwen25VLConfig::Qwen25VLConfig() {
    family = "Qwen2.5-VL";
    prefix = "model.";
    vocab_size = 152064;
    hidden_size = 8192;
    intermediate_size = 29568;
    num_hidden_layers = 80;
    num_attention_heads = 64;
    num_key_value_heads = 8;
    head_dim = hidden_size / num_attention_heads;
    rms_norm_eps = 1e-5;
    rope_theta = 1000000.0;
    qkv_bias = true;
}

Qwen25VLConfig Qwen25VLConfig::from_json(const json& j, const std::string& where) {
    Qwen25VLConfig c;
    read_architecture(j, where, c.family, {"Qwen2_5_VLForConditionalGeneration"});
    std::string model_type = "qwen2_5_vl";
    read_config_field(j, where, "model_type", &model_type);
    require_config(model_type == "qwen2_5_vl", where,
                   fmt::format("field 'model_type' is '{}'; expected 'qwen2_5_vl'", model_type));

    // transformers 5 nests the language model under "text_config"; 4.x wrote it at the top level.
    c.nested = j.contains("text_config") && !j["text_config"].is_null();
    if (c.nested) require_config(j["text_config"].is_object(), where, "field 'text_config' must be an object");
    const json& t = c.nested ? j["text_config"] : j;
    const std::string tw = c.nested ? where + " text_config" : where;

    read_decoder_lm_fields(t, tw, c);

    // RoPE: rope_scaling (4.x; it wins in transformers too) or rope_parameters (5.x), each with
    // the type and mrope_section; rope_theta inside either or at the text config's level.
    read_config_field(t, tw, "rope_theta", &c.rope_theta, {1.0, 1e12});
    const char* rope_key = nullptr;
    for (const char* k : {"rope_scaling", "rope_parameters"})
        if (t.contains(k) && !t[k].is_null()) {
            rope_key = k;
            break;
        }
    if (rope_key) {
        const json& rope = t[rope_key];
        const std::string rw = fmt::format("{} {}", tw, rope_key);
        require_config(rope.is_object(), tw, fmt::format("field '{}' must be an object or null", rope_key));
        check_rope_type(rope, rw);
        read_config_field(rope, rw, "rope_theta", &c.rope_theta, {1.0, 1e12});
        read_config_field(rope, rw, "mrope_section", &c.mrope_section, {0, config_limits::kWidth});
    }

    require_config(c.hidden_size % c.num_attention_heads == 0, tw,
                   fmt::format("hidden_size ({}) must be a multiple of num_attention_heads ({})", c.hidden_size,
                               c.num_attention_heads));
    const int64_t hd = c.head_dim = c.hidden_size / c.num_attention_heads;
    // Qwen2.5-VL's attention always uses hidden_size / heads; a different head_dim would give
    // transformers rope tables of another width.
    int64_t head_dim = hd;
    read_config_field(t, tw, "head_dim", &head_dim, {1, config_limits::kWidth});
    require_config(head_dim == hd, tw,
                   fmt::format("field 'head_dim' is {}, but hidden_size / num_attention_heads is {}", head_dim, hd));
    check_decoder_lm_heads(c, tw);
    const int64_t sections = std::accumulate(c.mrope_section.begin(), c.mrope_section.end(), int64_t(0));
    require_config(sections == hd / 2, tw,
                   fmt::format("field 'mrope_section' {} sums to {}, but a head has {} rotary pairs (head_dim {} / 2)",
                               c.mrope_section, sections, hd / 2, hd));
    return c;
}

void Qwen25VLConfig::detect_key_layout(const HasKey& has_key) {
    if (has_key("model.language_model.embed_tokens.weight")) {
        prefix = "model.language_model.";
        visual_prefix = "model.visual.";
    } else {
        prefix = "model.";
        visual_prefix = "visual.";
    }
}

ModelSpec model_spec(const Qwen25VLConfig& c) {
    ModelSpec s;
    s.class_name = "Qwen2_5_VLForConditionalGeneration";
    add_decoder_lm_params(c, s);
    add_lm_head_param(c, s);
    s.ignored_prefixes.push_back(c.visual_prefix);
    return s;
}

Qwen25VLConfig Qwen25VLConfig::from_model(const PreparedModel& m) {
    Qwen25VLConfig c = from_json(m.folder.config, m.folder.config_path);
    c.detect_key_layout([&](const std::string& k) { return m.checkpoint->contains(k); });
    return c;
}

}  // namespace qdit::text
