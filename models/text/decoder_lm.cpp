#include "models/text/decoder_lm.h"

#include <algorithm>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "io/files.h"
#include "ops/attention.h"
#include "ops/embedding.h"
#include "ops/glu.h"
#include "ops/rope.h"
#include "ops/row.h"

namespace qdit::text {

// ---------------------------------------------------------------------------
// Config and parameter layout

std::string read_architecture(const nlohmann::json& j, const std::string& where, const std::string& family,
                              const std::vector<std::string>& allowed) {
    require_config(j.is_object(), where, "config must be a JSON object");
    std::string arch = allowed.at(0);
    if (j.contains("architectures")) {
        const nlohmann::json& a = j["architectures"];
        require_config(a.is_array() && !a.empty() && a[0].is_string(), where,
                       "field 'architectures' must be a non-empty list of class names");
        arch = a[0].get<std::string>();
    }
    require_config(std::find(allowed.begin(), allowed.end(), arch) != allowed.end(), where,
                   fmt::format("field 'architectures' names '{}'; a {} text encoder is {}", arch, family,
                               fmt::join(allowed, " or ")));
    return arch;
}

void read_decoder_lm_fields(const nlohmann::json& t, const std::string& where, DecoderLmConfig& c) {
    using namespace config_limits;
    read_config_field(t, where, "vocab_size", &c.vocab_size, {1, kVocab});
    read_config_field(t, where, "hidden_size", &c.hidden_size, {1, kWidth});
    read_config_field(t, where, "intermediate_size", &c.intermediate_size, {1, kFfnWidth});
    read_config_field(t, where, "num_hidden_layers", &c.num_hidden_layers, {1, kLayers});
    read_config_field(t, where, "num_attention_heads", &c.num_attention_heads, {1, kHeads});
    if (t.contains("num_key_value_heads") && t["num_key_value_heads"].is_null())
        c.num_key_value_heads = c.num_attention_heads;
    read_config_field(t, where, "num_key_value_heads", &c.num_key_value_heads, {1, kHeads});
    read_config_field(t, where, "rms_norm_eps", &c.rms_norm_eps, {1e-12, 1.0});

    std::string act = "silu";
    read_config_field(t, where, "hidden_act", &act);
    require_config(act == "silu", where, fmt::format("field 'hidden_act' is '{}'; only 'silu' (SwiGLU) is supported", act));
    bool sliding = false;
    read_config_field(t, where, "use_sliding_window", &sliding);
    require_config(!sliding, where,
                   "field 'use_sliding_window' is true; sliding-window attention is not supported (set it to false)");
    if (t.contains("layer_types") && !t["layer_types"].is_null()) {
        std::vector<std::string> types;
        read_config_field(t, where, "layer_types", &types);
        for (const std::string& type : types)
            require_config(type == "full_attention", where,
                           fmt::format("field 'layer_types' has '{}'; only 'full_attention' is supported", type));
    }
}

void check_decoder_lm_heads(const DecoderLmConfig& c, const std::string& where) {
    require_config(c.num_attention_heads % c.num_key_value_heads == 0, where,
                   fmt::format("num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                               c.num_attention_heads, c.num_key_value_heads));
    require_config(c.head_dim % 2 == 0, where, fmt::format("head_dim ({}) must be even", c.head_dim));
}

void add_lm_head_param(const DecoderLmConfig& c, ModelSpec& s) {
    s.optional_params.push_back({"lm_head.weight", {c.vocab_size, c.hidden_size}});
}

void add_decoder_lm_params(const DecoderLmConfig& c, ModelSpec& s) {
    const std::string& p = c.prefix;
    const int64_t D = c.hidden_size, hd = c.head_dim, I = c.intermediate_size;
    auto param = [&](const std::string& name, Shape shape) { s.params.push_back({name, shape}); };
    param(p + "embed_tokens.weight", {c.vocab_size, D});
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
        const std::string l = fmt::format("{}layers.{}.", p, i);
        param(l + "input_layernorm.weight", {D});
        s.add_linear(l + "self_attn.q_proj", c.num_attention_heads * hd, D, c.qkv_bias);
        s.add_linear(l + "self_attn.k_proj", c.num_key_value_heads * hd, D, c.qkv_bias);
        s.add_linear(l + "self_attn.v_proj", c.num_key_value_heads * hd, D, c.qkv_bias);
        s.add_linear(l + "self_attn.o_proj", D, c.num_attention_heads * hd, c.o_bias);
        if (c.qk_norm) {
            param(l + "self_attn.q_norm.weight", {hd});
            param(l + "self_attn.k_norm.weight", {hd});
        }
        param(l + "post_attention_layernorm.weight", {D});
        s.add_linear(l + "mlp.gate_proj", I, D, false);
        s.add_linear(l + "mlp.up_proj", I, D, false);
        s.add_linear(l + "mlp.down_proj", D, I, false);
    }
    param(p + "norm.weight", {D});
}

// ---------------------------------------------------------------------------
// Loading

DecoderLM::DecoderLM(const DecoderLmConfig& c, const PreparedModel& m, DType compute, const ops::Context& ctx)
    : lm_(c), dt_(compute), ctx_(ctx), where_(m.folder.root) {
    nn::WeightLoader w(model_weights(m), "the " + lm_.family + " text encoder", dt_, ctx_);
    const int64_t Ip = round_up(lm_.intermediate_size, 16);
    const std::string& p = lm_.prefix;
    // The embedding table stays in host memory (on a GPU too): a prompt reads a few of its rows,
    // which are looked up there and uploaded, so the device does not hold the whole table.
    embed_tokens_ = w.host_tensor(p + "embed_tokens.weight");
    for (int64_t i = 0; i < lm_.num_hidden_layers; ++i) {
        const std::string l = fmt::format("{}layers.{}.", p, i);
        Layer layer;
        layer.qkv = w.group({w.member(l + "self_attn.q_proj"), w.member(l + "self_attn.k_proj"),
                             w.member(l + "self_attn.v_proj")});
        layer.o = w.group({w.member(l + "self_attn.o_proj")});
        layer.gate_up = w.group({w.member(l + "mlp.gate_proj", Ip), w.member(l + "mlp.up_proj", Ip)});
        layer.down = w.group({w.member(l + "mlp.down_proj", 0, Ip)});
        layer.input_norm = w.tensor(l + "input_layernorm.weight");
        layer.post_norm = w.tensor(l + "post_attention_layernorm.weight");
        if (lm_.qk_norm) {
            layer.q_norm = w.tensor(l + "self_attn.q_norm.weight");
            layer.k_norm = w.tensor(l + "self_attn.k_norm.weight");
        }
        layers_.push_back(std::move(layer));
    }
    norm_ = w.tensor(p + "norm.weight");
    bytes_ = w.bytes();
    n_int8_ = w.int8_members();
}

// ---------------------------------------------------------------------------
// Forward

Tensor DecoderLM::run(const std::vector<int32_t>& ids, const std::vector<int64_t>& pos, int64_t B,
                      const Tensor& key_mask, int from_end) const {
    const int64_t N = lm_.num_hidden_layers, H = lm_.num_attention_heads, Hkv = lm_.num_key_value_heads,
                  hd = lm_.head_dim;
    const float eps = float(lm_.rms_norm_eps);
    if (from_end < 1 || from_end > N + 1)
        raise<ShapeError>("{}: hidden state -{} does not exist (the model has {} hidden states, choose 1..{})",
                          lm_.family, from_end, N + 1, N + 1);
    Tensor x;
    try {
        x = ops::to_device(ops::embedding(embed_tokens_, ids, ops::Context{}), ctx_);
    } catch (const ShapeError& e) {
        raise<ShapeError>("{}: {}", where_, e.what());
    }
    // hidden_states[-k] for k >= 2 is the output of the first N + 1 − k layers.
    const int64_t run_layers = from_end == 1 ? N : N + 1 - from_end;
    if (run_layers == 0) return x;
    const Tensor freqs = ops::to_device(ops::rope_half_table(lm_.rope_theta, hd, pos), ctx_);

    const ops::ActivationSpec none{false, false};
    ops::Activation qin = ops::add_rms_norm(x, Tensor(), layers_[0].input_norm, eps,
                                            layers_[0].qkv.input_spec(), ctx_);
    Tensor out;  // the final norm's output (from_end 1)
    for (int64_t li = 0; li < run_layers; ++li) {
        const Layer& L = layers_[size_t(li)];
        // Attention: q|k|v (+ biases) → [q/k RMSNorm +] RoPE → causal grouped-query SDPA → o_proj.
        Tensor qkv = L.qkv.forward(qin);
        qin = {};
        ops::qk_rms_norm_rope(qkv, H, Hkv, hd, L.q_norm, L.k_norm, eps, freqs, ops::RopeLayout::Half, ctx_);
        Tensor y = L.o.forward({ops::attention(qkv, B, H, Hkv, hd, /*causal=*/true, key_mask, ctx_), {}, {}});
        qkv = Tensor();
        // x += attention; post_attention_layernorm → gate|up → SwiGLU → down_proj.
        Tensor h = L.gate_up.forward(ops::add_rms_norm(x, y, L.post_norm, eps, L.gate_up.input_spec(), ctx_));
        y = L.down.forward(ops::swiglu(h, L.gate_up.column(1), L.down.input_spec(), ctx_));
        h = Tensor();
        // x += mlp, fused with the next RMSNorm: the next layer's input_layernorm, the final norm
        // when hidden_states[-1] is asked for, or none.
        if (li + 1 < run_layers) {
            const Layer& next = layers_[size_t(li + 1)];
            qin = ops::add_rms_norm(x, y, next.input_norm, eps, next.qkv.input_spec(), ctx_);
        } else if (from_end == 1) {
            out = ops::add_rms_norm(x, y, norm_, eps, {true, false, lm_.hidden_size, lm_.hidden_size}, ctx_).x;
        } else {
            ops::add_rms_norm(x, y, Tensor(), eps, none, ctx_);
        }
    }
    return from_end == 1 ? out : x;
}

Tensor DecoderLM::hidden_states(const std::vector<int32_t>& ids, const std::vector<uint8_t>& mask, int64_t batch,
                                int from_end) const {
    if (batch <= 0 || ids.empty() || ids.size() % size_t(batch) != 0 || mask.size() != ids.size())
        raise<ShapeError>("{}: {} ids and {} mask values do not form a batch of {} sequences", lm_.family,
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
    return ops::to_host(run(ids, pos, batch, key_mask, from_end), ctx_).view({batch, L, lm_.hidden_size});
}

Tensor DecoderLM::encode_device(const std::vector<int32_t>& ids, const std::vector<uint8_t>& mask,
                                int from_end) const {
    if (mask.size() != ids.size())
        raise<ShapeError>("{}: {} ids but {} mask values", lm_.family, ids.size(), mask.size());
    std::vector<int32_t> kept;
    std::vector<int64_t> pos;
    for (size_t i = 0; i < ids.size(); ++i)
        if (mask[i]) {
            kept.push_back(ids[i]);
            pos.push_back(int64_t(i));
        }
    if (kept.empty()) raise<ShapeError>("{}: the attention mask selects no token", lm_.family);
    return run(kept, pos, 1, Tensor(), from_end);
}

Tensor DecoderLM::encode(const std::vector<int32_t>& ids, const std::vector<uint8_t>& mask, int from_end) const {
    return ops::to_host(encode_device(ids, mask, from_end), ctx_);
}

}  // namespace qdit::text
