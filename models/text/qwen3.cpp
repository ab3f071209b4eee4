#include "models/text/qwen3.h"

#include <algorithm>
#include <map>

#include <fmt/format.h>

#include "core/threads.h"
#include "io/files.h"
#include "nn/attention.h"
#include "nn/elementwise.h"

using nlohmann::json;

namespace qdit::text {

namespace {

void require(bool ok, const std::string& where, const std::string& what) {
    if (!ok) raise<ConfigError>("{}: {}", where, what);
}

// x ← x + y elementwise, rounded once for BF16 like torch's residual add.
void add_inplace(Tensor& x, const Tensor& y) {
    QDIT_CHECK(x.shape() == y.shape() && x.dtype() == y.dtype(), "add: {} vs {}",
               shape_str(x.shape()), shape_str(y.shape()));
    nn::dispatch_float(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        T* a = x.data<T>();
        const T* b = y.data<T>();
        parallel_for(x.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
            for (int64_t i = begin; i < end; ++i) nn::store(a, i, nn::load(a, i) + nn::load(b, i));
        });
    });
}

}  // namespace

// ---------------------------------------------------------------------------
// Config and parameter layout

Qwen3Config Qwen3Config::from_json(const json& j, const std::string& where) {
    using namespace config_limits;
    Qwen3Config c;
    require(j.is_object(), where, "config must be a JSON object");
    if (j.contains("architectures")) {
        const json& a = j["architectures"];
        require(a.is_array() && !a.empty() && a[0].is_string(), where,
                "field 'architectures' must be a non-empty list of class names");
        c.architecture = a[0].get<std::string>();
    }
    require(c.architecture == "Qwen3Model" || c.architecture == "Qwen3ForCausalLM", where,
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
    require(act == "silu", where,
            fmt::format("field 'hidden_act' is '{}'; only 'silu' (SwiGLU) is supported", act));
    bool sliding = false;
    read_config_field(j, where, "use_sliding_window", &sliding);
    require(!sliding, where, "field 'use_sliding_window' is true; sliding-window attention is not "
                             "supported (set it to false)");
    if (j.contains("layer_types") && !j["layer_types"].is_null()) {
        std::vector<std::string> types;
        read_config_field(j, where, "layer_types", &types);
        for (const std::string& t : types)
            require(t == "full_attention", where,
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
            require(rs.is_object(), where, "field 'rope_scaling' must be an object or null");
            // Older configs spell the key "type".
            const char* key = rs.contains("rope_type") ? "rope_type" : "type";
            read_config_field(rs, where + " rope_scaling", key, &rope_type);
        }
    }
    require(rope_type == "default", where,
            fmt::format("rope type '{}' is not supported (only 'default')", rope_type));

    require(c.num_attention_heads % c.num_key_value_heads == 0, where,
            fmt::format("num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                        c.num_attention_heads, c.num_key_value_heads));
    require(c.head_dim % 2 == 0, where, fmt::format("head_dim ({}) must be even", c.head_dim));
    return c;
}

ModelSpec model_spec(const Qwen3Config& c) {
    ModelSpec s;
    s.class_name = c.architecture;
    const std::string p = c.prefix();
    const int64_t D = c.hidden_size, hd = c.head_dim, I = c.intermediate_size;
    auto linear = [&](const std::string& name, int64_t out, int64_t in, bool bias) {
        s.linears.push_back({name, out, in, bias});
        s.params.push_back({name + ".weight", {out, in}});
        if (bias) s.params.push_back({name + ".bias", {out}});
    };
    auto param = [&](const std::string& name, Shape shape) { s.params.push_back({name, shape}); };
    param(p + "embed_tokens.weight", {c.vocab_size, D});
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
        const std::string l = fmt::format("{}layers.{}.", p, i);
        param(l + "input_layernorm.weight", {D});
        linear(l + "self_attn.q_proj", c.num_attention_heads * hd, D, c.attention_bias);
        linear(l + "self_attn.k_proj", c.num_key_value_heads * hd, D, c.attention_bias);
        linear(l + "self_attn.v_proj", c.num_key_value_heads * hd, D, c.attention_bias);
        linear(l + "self_attn.o_proj", D, c.num_attention_heads * hd, c.attention_bias);
        param(l + "self_attn.q_norm.weight", {hd});
        param(l + "self_attn.k_norm.weight", {hd});
        param(l + "post_attention_layernorm.weight", {D});
        linear(l + "mlp.gate_proj", I, D, false);
        linear(l + "mlp.up_proj", I, D, false);
        linear(l + "mlp.down_proj", D, I, false);
    }
    param(p + "norm.weight", {D});
    if (c.architecture == "Qwen3ForCausalLM") {
        if (c.tie_word_embeddings)  // tied: some exports still write the (unused) copy
            s.optional_params.push_back({"lm_head.weight", {c.vocab_size, D}});
        else
            param("lm_head.weight", {c.vocab_size, D});
    }
    return s;
}

// ---------------------------------------------------------------------------
// Modules

Tensor Qwen3Attention::forward(const Tensor& x, const Tensor& key_mask, const Tensor& freqs) const {
    const int64_t B = x.size(0), L = x.size(1);
    Tensor q = q_norm.forward(q_proj.forward(x).view({B, L, heads, head_dim}));
    Tensor k = k_norm.forward(k_proj.forward(x).view({B, L, kv_heads, head_dim}));
    Tensor v = v_proj.forward(x).view({B, L, kv_heads, head_dim});
    nn::apply_rope_half(q, freqs);
    nn::apply_rope_half(k, freqs);
    Tensor o = nn::scaled_dot_product_attention(q, k, v, key_mask, /*causal=*/true);
    return o_proj.forward(o.view({B, L, heads * head_dim}));
}

Tensor Qwen3DecoderLayer::forward(const Tensor& x_in, const Tensor& key_mask,
                                  const Tensor& freqs) const {
    Tensor x = x_in.to(x_in.dtype());  // the residual stream is updated in place below
    add_inplace(x, self_attn.forward(input_layernorm.forward(x), key_mask, freqs));
    add_inplace(x, mlp.forward(post_attention_layernorm.forward(x)));
    return x;
}

// ---------------------------------------------------------------------------
// Loading

Qwen3TextModel::Qwen3TextModel(const PreparedModel& m, DType compute)
    : cfg_(Qwen3Config::from_json(m.folder.config, m.folder.config_path)),
      dt_(compute),
      where_(m.folder.root) {
    if (compute != DType::F32 && compute != DType::BF16)
        raise<ConfigError>("the Qwen3 text encoder runs in F32 or BF16, not {}",
                           dtype_name(compute));
    std::map<std::string, const LayerPlan*> plans;
    for (const LayerPlan& l : m.plan.layers) plans[l.spec.name] = &l;
    auto linear = [&](const std::string& name) {
        auto it = plans.find(name);
        if (it == plans.end())
            raise<ShapeError>("{}: no Linear layer '{}' in the model plan", where_, name);
        return load_linear(m, *it->second, dt_);
    };
    auto rms = [&](const std::string& name) {
        return nn::RMSNorm(name, m.checkpoint->get_as(name + ".weight", dt_),
                           float(cfg_.rms_norm_eps));
    };
    const std::string p = cfg_.prefix();
    embed_tokens_ = m.checkpoint->get(p + "embed_tokens.weight");
    for (int64_t i = 0; i < cfg_.num_hidden_layers; ++i) {
        const std::string l = fmt::format("{}layers.{}.", p, i);
        Qwen3DecoderLayer layer;
        layer.input_layernorm = rms(l + "input_layernorm");
        layer.post_attention_layernorm = rms(l + "post_attention_layernorm");
        Qwen3Attention& a = layer.self_attn;
        a.q_proj = linear(l + "self_attn.q_proj");
        a.k_proj = linear(l + "self_attn.k_proj");
        a.v_proj = linear(l + "self_attn.v_proj");
        a.o_proj = linear(l + "self_attn.o_proj");
        a.q_norm = rms(l + "self_attn.q_norm");
        a.k_norm = rms(l + "self_attn.k_norm");
        a.heads = cfg_.num_attention_heads;
        a.kv_heads = cfg_.num_key_value_heads;
        a.head_dim = cfg_.head_dim;
        layer.mlp = {linear(l + "mlp.gate_proj"), linear(l + "mlp.down_proj"),
                     linear(l + "mlp.up_proj")};
        layers_.push_back(std::move(layer));
    }
    norm_ = rms(p + "norm");
    rope_ = nn::RotaryHalf(cfg_.rope_theta, cfg_.head_dim);
}

// ---------------------------------------------------------------------------
// Forward

// Rows of embed_tokens in the compute dtype (a bf16 table is widened exactly,
// an f32 one rounded to nearest even, as loading it in that dtype would).
Tensor Qwen3TextModel::embed(const std::vector<int32_t>& ids) const {
    const int64_t D = cfg_.hidden_size, n = int64_t(ids.size());
    Tensor out = Tensor::empty({n, D}, dt_);
    std::vector<float> row(static_cast<size_t>(D));
    const size_t in_row = size_t(D) * dtype_size(embed_tokens_.dtype()),
                 out_row = size_t(D) * dtype_size(dt_);
    for (int64_t i = 0; i < n; ++i) {
        const int32_t id = ids[size_t(i)];
        if (id < 0 || id >= cfg_.vocab_size)
            raise<ShapeError>("{}: token id {} at position {} is outside the vocabulary [0, {})",
                              where_, id, i, cfg_.vocab_size);
        convert_to_f32(static_cast<const uint8_t*>(embed_tokens_.raw()) + size_t(id) * in_row,
                       embed_tokens_.dtype(), row.data(), D);
        convert_from_f32(row.data(), static_cast<uint8_t*>(out.raw()) + size_t(i) * out_row, dt_,
                         D);
    }
    return out;
}

Tensor Qwen3TextModel::run(const std::vector<int32_t>& ids, const std::vector<int64_t>& pos,
                           int64_t B, int64_t L, const Tensor& key_mask, int from_end) const {
    const int64_t N = cfg_.num_hidden_layers;
    if (from_end < 1 || from_end > N + 1)
        raise<ShapeError>("Qwen3: hidden state -{} does not exist (the model has {} hidden states, "
                          "choose 1..{})",
                          from_end, N + 1, N + 1);
    const Tensor freqs = rope_.freqs(pos).view({B, L, cfg_.head_dim / 2, 2});
    // hidden_states[-k] for k >= 2 is the output of the first N + 1 − k layers.
    const int64_t run_layers = from_end == 1 ? N : N + 1 - from_end;
    Tensor x = embed(ids).view({B, L, cfg_.hidden_size});
    for (int64_t i = 0; i < run_layers; ++i) x = layers_[size_t(i)].forward(x, key_mask, freqs);
    return from_end == 1 ? norm_.forward(x) : x;
}

Tensor Qwen3TextModel::hidden_states(const std::vector<int32_t>& ids,
                                     const std::vector<uint8_t>& mask, int64_t batch,
                                     int from_end) const {
    if (batch <= 0 || ids.empty() || ids.size() % size_t(batch) != 0 || mask.size() != ids.size())
        raise<ShapeError>("Qwen3: {} ids and {} mask values do not form a batch of {} sequences",
                          ids.size(), mask.size(), batch);
    const int64_t L = int64_t(ids.size()) / batch;
    std::vector<int64_t> pos(ids.size());
    for (size_t i = 0; i < pos.size(); ++i) pos[i] = int64_t(i) % L;
    // An all-ones mask changes nothing; skip the gather of keys then.
    Tensor key_mask;
    if (std::any_of(mask.begin(), mask.end(), [](uint8_t v) { return v == 0; })) {
        key_mask = Tensor::empty({batch, L}, DType::U8);
        for (size_t i = 0; i < mask.size(); ++i) key_mask.data<uint8_t>()[i] = mask[i] ? 1 : 0;
    }
    return run(ids, pos, batch, L, key_mask, from_end);
}

Tensor Qwen3TextModel::encode(const std::vector<int32_t>& ids, const std::vector<uint8_t>& mask,
                              int from_end) const {
    if (mask.size() != ids.size())
        raise<ShapeError>("Qwen3: {} ids but {} mask values", ids.size(), mask.size());
    std::vector<int32_t> kept;
    std::vector<int64_t> pos;
    for (size_t i = 0; i < ids.size(); ++i)
        if (mask[i]) {
            kept.push_back(ids[i]);
            pos.push_back(int64_t(i));
        }
    if (kept.empty()) raise<ShapeError>("Qwen3: the attention mask selects no token");
    const int64_t n = int64_t(kept.size());
    return run(kept, pos, 1, n, Tensor(), from_end).view({n, cfg_.hidden_size});
}

}  // namespace qdit::text
