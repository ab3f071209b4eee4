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

Qwen25VLConfig Qwen25VLConfig::from_json(const json& j, const std::string& where) {
    using namespace config_limits;
    Qwen25VLConfig c;
    require_config(j.is_object(), where, "config must be a JSON object");
    if (j.contains("architectures")) {
        const json& a = j["architectures"];
        require_config(a.is_array() && !a.empty() && a[0].is_string(), where,
                       "field 'architectures' must be a non-empty list of class names");
        const std::string arch = a[0].get<std::string>();
        require_config(arch == "Qwen2_5_VLForConditionalGeneration", where,
                       fmt::format("field 'architectures' names '{}'; a Qwen2.5-VL text encoder is "
                                   "Qwen2_5_VLForConditionalGeneration",
                                   arch));
    }
    std::string model_type = "qwen2_5_vl";
    read_config_field(j, where, "model_type", &model_type);
    require_config(model_type == "qwen2_5_vl", where,
                   fmt::format("field 'model_type' is '{}'; expected 'qwen2_5_vl'", model_type));

    // transformers 5 nests the language model under "text_config"; 4.x wrote it at the top level.
    c.nested = j.contains("text_config") && !j["text_config"].is_null();
    if (c.nested) require_config(j["text_config"].is_object(), where, "field 'text_config' must be an object");
    const json& t = c.nested ? j["text_config"] : j;
    const std::string tw = c.nested ? where + " text_config" : where;

    read_config_field(t, tw, "vocab_size", &c.vocab_size, {1, kVocab});
    read_config_field(t, tw, "hidden_size", &c.hidden_size, {1, kWidth});
    read_config_field(t, tw, "intermediate_size", &c.intermediate_size, {1, kFfnWidth});
    read_config_field(t, tw, "num_hidden_layers", &c.num_hidden_layers, {1, kLayers});
    read_config_field(t, tw, "num_attention_heads", &c.num_attention_heads, {1, kHeads});
    if (t.contains("num_key_value_heads") && t["num_key_value_heads"].is_null())
        c.num_key_value_heads = c.num_attention_heads;  // transformers: None means MHA
    read_config_field(t, tw, "num_key_value_heads", &c.num_key_value_heads, {1, kHeads});
    read_config_field(t, tw, "rms_norm_eps", &c.rms_norm_eps, {1e-12, 1.0});
    // The tie flag is the outer config's; pre-5 saves may hold it in text_config (transformers
    // forwards a true one).
    read_config_field(j, where, "tie_word_embeddings", &c.tie_word_embeddings);
    if (c.nested && !c.tie_word_embeddings) read_config_field(t, tw, "tie_word_embeddings", &c.tie_word_embeddings);

    std::string act = "silu";
    read_config_field(t, tw, "hidden_act", &act);
    require_config(act == "silu", tw, fmt::format("field 'hidden_act' is '{}'; only 'silu' (SwiGLU) is supported", act));
    bool sliding = false;
    read_config_field(t, tw, "use_sliding_window", &sliding);
    require_config(!sliding, tw, "field 'use_sliding_window' is true; sliding-window attention is not supported (set it "
                                 "to false)");
    if (t.contains("layer_types") && !t["layer_types"].is_null()) {
        std::vector<std::string> types;
        read_config_field(t, tw, "layer_types", &types);
        for (const std::string& s : types)
            require_config(s == "full_attention", tw,
                           fmt::format("field 'layer_types' has '{}'; only 'full_attention' is supported", s));
    }

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
        read_config_field(rope, rw, "mrope_section", &c.mrope_section, {0, kWidth});
    }

    require_config(c.hidden_size % c.num_attention_heads == 0, tw,
                   fmt::format("hidden_size ({}) must be a multiple of num_attention_heads ({})", c.hidden_size,
                               c.num_attention_heads));
    const int64_t hd = c.head_dim();
    require_config(hd % 2 == 0, tw, fmt::format("head_dim = hidden_size / num_attention_heads ({}) must be even", hd));
    // Qwen2.5-VL's attention always uses hidden_size / heads; a different head_dim would give
    // transformers rope tables of another width.
    int64_t head_dim = hd;
    read_config_field(t, tw, "head_dim", &head_dim, {1, kWidth});
    require_config(head_dim == hd, tw,
                   fmt::format("field 'head_dim' is {}, but hidden_size / num_attention_heads is {}", head_dim, hd));
    require_config(c.num_attention_heads % c.num_key_value_heads == 0, tw,
                   fmt::format("num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                               c.num_attention_heads, c.num_key_value_heads));
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

DecoderLmConfig Qwen25VLConfig::lm() const {
    DecoderLmConfig l;
    l.family = "Qwen2.5-VL";
    l.prefix = prefix;
    l.vocab_size = vocab_size;
    l.hidden_size = hidden_size;
    l.intermediate_size = intermediate_size;
    l.num_hidden_layers = num_hidden_layers;
    l.num_attention_heads = num_attention_heads;
    l.num_key_value_heads = num_key_value_heads;
    l.head_dim = head_dim();
    l.rms_norm_eps = rms_norm_eps;
    l.rope_theta = rope_theta;
    l.qkv_bias = true;
    l.o_bias = false;
    l.qk_norm = false;
    return l;
}

ModelSpec model_spec(const Qwen25VLConfig& c) {
    ModelSpec s;
    s.class_name = "Qwen2_5_VLForConditionalGeneration";
    add_decoder_lm_params(c.lm(), s);
    if (c.tie_word_embeddings)  // tied: some exports still write the (unused) copy
        s.optional_params.push_back({"lm_head.weight", {c.vocab_size, c.hidden_size}});
    else
        s.params.push_back({"lm_head.weight", {c.vocab_size, c.hidden_size}});
    s.ignored_prefixes.push_back(c.visual_prefix);
    return s;
}

Qwen25VLTextModel::Qwen25VLTextModel(const PreparedModel& m, DType compute, const ops::Context& ctx)
    : Qwen25VLTextModel(Qwen25VLConfig::from_json(m.folder.config, m.folder.config_path), m, compute, ctx) {}

Qwen25VLTextModel::Qwen25VLTextModel(Qwen25VLConfig c, const PreparedModel& m, DType compute,
                                     const ops::Context& ctx)
    : DecoderLM((c.detect_key_layout([&](const std::string& k) { return m.checkpoint->contains(k); }), c.lm()),
                m, compute, ctx),
      cfg_(std::move(c)) {}

}  // namespace qdit::text
