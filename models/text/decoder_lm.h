// The decoder language model of the Qwen family (Llama-style: RMSNorm → attention with rotate-half
// RoPE → residual → RMSNorm → SwiGLU → residual, a final RMSNorm), written once over ops/ and nn/
// for every device and shared by the text encoders that run it: Qwen3 (Z-Image: q/k RMSNorm, no
// biases) and the language model of Qwen2.5-VL (Qwen-Image: q/k/v biases, no q/k norm). Modules
// are named like the checkpoint keys (under the family's key prefix); every Linear is loaded as the
// quantization plan says (dense or int8 W8A8; the caller's QuantConfig decides, off by default).
// q_proj / k_proj / v_proj run as one Linear group, gate_proj / up_proj as another (on a GPU: one
// GEMM each per precision, padded to multiples of 16); the optional q/k RMSNorm + RoPE run on the
// fused output; each residual add is fused with the RMSNorm that follows it.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/tensor.h"
#include "models/loader.h"
#include "nn/linear_group.h"
#include "ops/context.h"

namespace qdit::text {

// What the layer loop needs; each family's config.json reader fills it in.
struct DecoderLmConfig {
    std::string family;  // in messages: "Qwen3", "Qwen2.5-VL"
    std::string prefix;  // of every key of the language model: "", "model.", "model.language_model."
    int64_t vocab_size = 0, hidden_size = 0, intermediate_size = 0, num_hidden_layers = 0;
    int64_t num_attention_heads = 0, num_key_value_heads = 0, head_dim = 0;
    double rms_norm_eps = 1e-6, rope_theta = 10000.0;
    bool qkv_bias = false;  // q_proj, k_proj, v_proj
    bool o_bias = false;    // o_proj
    bool qk_norm = false;   // per-head q_norm / k_norm RMSNorm before RoPE (Qwen3)
};

// The model class a transformers config.json names ("architectures"[0]; allowed[0] when the field
// is absent), which must be one of `allowed`. ConfigError naming `where` and the field otherwise,
// or when the config is not a JSON object; `family` names the text encoder in the message.
std::string read_architecture(const nlohmann::json& j, const std::string& where, const std::string& family,
                              const std::vector<std::string>& allowed);

// Reads the fields every decoder LM config shares, under transformers' names, from `t` (named
// `where` in errors) into c: vocab_size, hidden_size, intermediate_size, num_hidden_layers,
// num_attention_heads, num_key_value_heads (null: num_attention_heads, as transformers reads None),
// rms_norm_eps; and refuses what the decoder LM does not run: a hidden_act other than 'silu', a
// sliding window, a layer type other than full attention. Absent fields keep c's values.
void read_decoder_lm_fields(const nlohmann::json& t, const std::string& where, DecoderLmConfig& c);
// Checks the head layout read: num_attention_heads a multiple of num_key_value_heads, an even
// head_dim.
void check_decoder_lm_heads(const DecoderLmConfig& c, const std::string& where);

// Appends lm_head.weight [vocab, hidden] to s's optional parameters: an encoder never reads it and it
// is not a Linear of the plan, so an export without it loads (transformers loads one too, with a new
// head), tied or not; when present its shape is checked.
void add_lm_head_param(const DecoderLmConfig& c, ModelSpec& s);

// Appends the language model's parameters (embed_tokens, layers.*, norm under the prefix) and its
// Linear layers (7 per layer) to s.
void add_decoder_lm_params(const DecoderLmConfig& c, ModelSpec& s);

class DecoderLM {
public:
    // Loads every module of the language model in `m` (a folder opened with prepare_model) onto
    // ctx's device with activations in `compute` (the CPU: F32 or BF16; a GPU: BF16). The embedding
    // table and norms are held in the compute dtype (an f32 table rounded to nearest even); the
    // embedding table in host memory whatever the device (a prompt's rows are looked up there and
    // uploaded).
    DecoderLM(const DecoderLmConfig& c, const PreparedModel& m, DType compute, const ops::Context& ctx = {});

    const DecoderLmConfig& lm_config() const { return lm_; }
    DType compute_dtype() const { return dt_; }
    const ops::Context& context() const { return ctx_; }
    void set_attention(ops::AttentionImpl impl) { ctx_.attention = impl; }
    // Linear layers that run in int8 / in total.
    int int8_layers() const { return n_int8_; }
    int linear_layers() const { return 7 * int(lm_.num_hidden_layers); }
    // Bytes held on the device by the weights (norms included; the embedding table on the CPU only).
    size_t weight_bytes() const { return bytes_; }

    // transformers' forward(input_ids, attention_mask, output_hidden_states=True)
    // .hidden_states[-from_end] for a batch: ids and mask [batch, L] row-major,
    // mask nonzero on real tokens. Positions are 0..L-1 whatever the padding (as transformers
    // gives them for Qwen3 and for text-only Qwen2.5-VL); attention is causal and skips masked
    // keys (a query with no key left, a left-padding token, gets a zero attention output).
    // from_end 1 is the final norm's output; from_end k >= 2 is the raw output of decoder layer
    // num_hidden_layers − k (0-based), k = num_hidden_layers + 1 the embeddings. Returns
    // [batch, L, hidden] in the compute dtype on the host, padded rows included. A GPU runs
    // unpadded batches only (a mask of all ones).
    Tensor hidden_states(const std::vector<int32_t>& ids, const std::vector<uint8_t>& mask,
                         int64_t batch, int from_end) const;

    // One tokenized prompt: hidden_states[-from_end] restricted to the rows where mask is
    // nonzero → [n_valid, hidden] on the host. Only those tokens are computed: with causal
    // attention and their original positions, padding cannot change them; an id under a zero
    // mask value is never read.
    Tensor encode(const std::vector<int32_t>& ids, const std::vector<uint8_t>& mask, int from_end) const;
    // The same, left on the model's device.
    Tensor encode_device(const std::vector<int32_t>& ids, const std::vector<uint8_t>& mask,
                         int from_end) const;

private:
    struct Layer {
        nn::LinearGroup qkv, o, gate_up, down;
        Tensor input_norm, post_norm, q_norm, k_norm;  // [hidden] / [head_dim], compute dtype (q/k: may be undefined)
    };
    // Tokens [B, L] with positions pos (B·L) → hidden_states[-from_end] [B·L, hidden] on the device.
    Tensor run(const std::vector<int32_t>& ids, const std::vector<int64_t>& pos, int64_t B,
               const Tensor& key_mask, int from_end) const;

    DecoderLmConfig lm_;
    DType dt_ = DType::F32;
    ops::Context ctx_;
    std::string where_;  // the folder, for errors
    Tensor embed_tokens_;  // [vocab, hidden], in host memory
    std::vector<Layer> layers_;
    Tensor norm_;
    int n_int8_ = 0;
    size_t bytes_ = 0;
};

// A text encoder that runs the decoder LM: its family's config `Config` (a DecoderLmConfig;
// Config::from_model reads it from a prepared text_encoder/ folder) and the hidden state its
// pipeline takes, hidden_states[-kFromEnd], as the default of every call.
template <class Config, int kFromEnd>
class DecoderTextEncoder : public DecoderLM {
public:
    // Loads every module of `m` (a text_encoder/ folder opened with prepare_model) onto ctx's
    // device with activations in `compute` (the CPU: F32 or BF16; a GPU: BF16).
    DecoderTextEncoder(const PreparedModel& m, DType compute, const ops::Context& ctx = {})
        : DecoderTextEncoder(Config::from_model(m), m, compute, ctx) {}

    const Config& config() const { return cfg_; }

    // DecoderLM::hidden_states, encode and encode_device with from_end kFromEnd by default.
    Tensor hidden_states(const std::vector<int32_t>& ids, const std::vector<uint8_t>& mask, int64_t batch,
                         int from_end = kFromEnd) const {
        return DecoderLM::hidden_states(ids, mask, batch, from_end);
    }
    Tensor encode(const std::vector<int32_t>& ids, const std::vector<uint8_t>& mask, int from_end = kFromEnd) const {
        return DecoderLM::encode(ids, mask, from_end);
    }
    Tensor encode_device(const std::vector<int32_t>& ids, const std::vector<uint8_t>& mask,
                         int from_end = kFromEnd) const {
        return DecoderLM::encode_device(ids, mask, from_end);
    }

private:
    DecoderTextEncoder(Config c, const PreparedModel& m, DType compute, const ops::Context& ctx)
        : DecoderLM(c, m, compute, ctx), cfg_(std::move(c)) {}
    Config cfg_;
};

}  // namespace qdit::text
