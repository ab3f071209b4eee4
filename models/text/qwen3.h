// Qwen3 text model (transformers' Qwen3Model) on the CPU: Z-Image's text
// encoder. Modules are named like the checkpoint keys ("model." prefixed when
// the folder was saved from Qwen3ForCausalLM, as Z-Image's text_encoder/ is);
// every Linear is loaded as the quantization plan says (dense F32/BF16 or
// int8 W8A8; the caller's QuantConfig decides, off by default).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/tensor.h"
#include "models/model_spec.h"
#include "nn/feed_forward.h"
#include "nn/linear.h"
#include "nn/norm.h"
#include "nn/rope_half.h"
#include "models/loader.h"

namespace qdit::text {

// config.json of a Qwen3 checkpoint (transformers 4 or 5 layout). Missing
// fields take transformers' Qwen3Config defaults; anything this port does not
// implement (rope scaling, sliding windows, another activation) is refused.
struct Qwen3Config {
    std::string architecture = "Qwen3Model";  // "architectures"[0]: Qwen3Model or Qwen3ForCausalLM
    int64_t vocab_size = 151936;
    int64_t hidden_size = 4096;
    int64_t intermediate_size = 22016;
    int64_t num_hidden_layers = 32;
    int64_t num_attention_heads = 32;
    int64_t num_key_value_heads = 32;
    int64_t head_dim = 128;
    double rms_norm_eps = 1e-6;
    double rope_theta = 10000.0;
    bool attention_bias = false;
    bool tie_word_embeddings = false;

    // Prefix of every key of the base model: "model." for Qwen3ForCausalLM.
    std::string prefix() const { return architecture == "Qwen3ForCausalLM" ? "model." : ""; }

    static Qwen3Config from_json(const nlohmann::json& j, const std::string& where);
};

// Every tensor of the checkpoint; an untied Qwen3ForCausalLM also has
// lm_head.weight, which the encoder does not use and which is not planned as
// a Linear. No Linear is kept in high precision by default: quantizing the
// text encoder at all is the caller's choice.
ModelSpec model_spec(const Qwen3Config& c);

// <layer>.self_attn: q/k/v projections, per-head RMSNorm of q and k, rotate-
// half RoPE, causal grouped-query SDPA, o_proj.
struct Qwen3Attention {
    nn::Linear q_proj, k_proj, v_proj, o_proj;
    nn::RMSNorm q_norm, k_norm;
    int64_t heads = 0, kv_heads = 0, head_dim = 0;

    // x [B, L, hidden]; key_mask U8 [B, L] or undefined; freqs [B, L, head_dim/2, 2].
    Tensor forward(const Tensor& x, const Tensor& key_mask, const Tensor& freqs) const;
};

// One Qwen3DecoderLayer: pre-norm attention and SwiGLU MLP, each added to the
// residual stream. The MLP is gate_proj / up_proj / down_proj, held as
// FeedForward's w1 / w3 / w2.
struct Qwen3DecoderLayer {
    nn::RMSNorm input_layernorm, post_attention_layernorm;
    Qwen3Attention self_attn;
    nn::FeedForward mlp;

    Tensor forward(const Tensor& x, const Tensor& key_mask, const Tensor& freqs) const;
};

class Qwen3TextModel {
public:
    // Loads every module of `m` (a text_encoder/ folder opened with
    // prepare_model) with activations in `compute` (F32 or BF16).
    Qwen3TextModel(const PreparedModel& m, DType compute);

    const Qwen3Config& config() const { return cfg_; }
    DType compute_dtype() const { return dt_; }

    // transformers' Qwen3Model(input_ids, attention_mask, output_hidden_states=True)
    // .hidden_states[-from_end] for a batch: ids and mask [batch, L] row-major,
    // mask nonzero on real tokens. Positions are 0..L-1 whatever the padding;
    // attention is causal and skips masked keys (a query with no key left, a
    // left-padding token, gets a zero attention output). from_end 1 is the
    // final norm's output; from_end k >= 2 is the raw output of decoder layer
    // num_hidden_layers − k (0-based), k = num_hidden_layers + 1 the
    // embeddings. Returns [batch, L, hidden] in the compute dtype, padded
    // rows included.
    Tensor hidden_states(const std::vector<int32_t>& ids, const std::vector<uint8_t>& mask,
                         int64_t batch, int from_end = 2) const;

    // ZImagePipeline._encode_prompt for one tokenized prompt: hidden_states
    // (from_end 2 by default) restricted to the rows where mask is nonzero →
    // [n_valid, hidden]. Only those tokens are computed: with causal attention
    // and their original positions, padding cannot change them.
    Tensor encode(const std::vector<int32_t>& ids, const std::vector<uint8_t>& mask,
                  int from_end = 2) const;

private:
    // Tokens [B, L] with positions pos (B·L) → hidden_states[-from_end].
    Tensor run(const std::vector<int32_t>& ids, const std::vector<int64_t>& pos, int64_t B,
               int64_t L, const Tensor& key_mask, int from_end) const;
    Tensor embed(const std::vector<int32_t>& ids) const;

    Qwen3Config cfg_;
    DType dt_ = DType::F32;
    std::string where_;     // the folder, for errors
    Tensor embed_tokens_;   // [vocab, hidden] as stored (rows are converted when gathered)
    std::vector<Qwen3DecoderLayer> layers_;
    nn::RMSNorm norm_;
    nn::RotaryHalf rope_;
};

}  // namespace qdit::text
