// Qwen3 text model (transformers' Qwen3Model): Z-Image's text encoder, written once over ops/ and
// nn/ for every device. Modules are named like the checkpoint keys ("model." prefixed when the
// folder was saved from Qwen3ForCausalLM, as Z-Image's text_encoder/ is); every Linear is loaded
// as the quantization plan says (dense or int8 W8A8; the caller's QuantConfig decides, off by
// default). q_proj / k_proj / v_proj run as one Linear group, gate_proj / up_proj as another (on a
// GPU: one GEMM each per precision, padded to multiples of 16); q/k RMSNorm + rotate-half RoPE run
// on the fused output; each residual add is fused with the RMSNorm that follows it.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/tensor.h"
#include "models/loader.h"
#include "models/model_spec.h"
#include "nn/linear_group.h"
#include "ops/context.h"

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

class Qwen3TextModel {
public:
    // Loads every module of `m` (a text_encoder/ folder opened with prepare_model) onto ctx's
    // device with activations in `compute` (the CPU: F32 or BF16; a GPU: BF16). The embedding
    // table and norms are held in the compute dtype (an f32 table rounded to nearest even).
    Qwen3TextModel(const PreparedModel& m, DType compute, const ops::Context& ctx = {});

    const Qwen3Config& config() const { return cfg_; }
    DType compute_dtype() const { return dt_; }
    const ops::Context& context() const { return ctx_; }
    void set_attention(ops::AttentionImpl impl) { ctx_.attention = impl; }
    // Linear layers that run in int8 / in total.
    int int8_layers() const { return n_int8_; }
    int linear_layers() const { return 7 * int(cfg_.num_hidden_layers); }
    // Bytes held on the device by the weights (embedding table and norms included).
    size_t weight_bytes() const { return bytes_; }

    // transformers' Qwen3Model(input_ids, attention_mask, output_hidden_states=True)
    // .hidden_states[-from_end] for a batch: ids and mask [batch, L] row-major,
    // mask nonzero on real tokens. Positions are 0..L-1 whatever the padding;
    // attention is causal and skips masked keys (a query with no key left, a
    // left-padding token, gets a zero attention output). from_end 1 is the
    // final norm's output; from_end k >= 2 is the raw output of decoder layer
    // num_hidden_layers − k (0-based), k = num_hidden_layers + 1 the
    // embeddings. Returns [batch, L, hidden] in the compute dtype on the host, padded
    // rows included. A GPU runs unpadded batches only (a mask of all ones).
    Tensor hidden_states(const std::vector<int32_t>& ids, const std::vector<uint8_t>& mask,
                         int64_t batch, int from_end = 2) const;

    // ZImagePipeline._encode_prompt for one tokenized prompt: hidden_states
    // (from_end 2 by default) restricted to the rows where mask is nonzero →
    // [n_valid, hidden] on the host. Only those tokens are computed: with causal attention
    // and their original positions, padding cannot change them; an id under a zero mask value
    // is never read.
    Tensor encode(const std::vector<int32_t>& ids, const std::vector<uint8_t>& mask,
                  int from_end = 2) const;
    // The same, left on the model's device.
    Tensor encode_device(const std::vector<int32_t>& ids, const std::vector<uint8_t>& mask,
                         int from_end = 2) const;

private:
    struct Layer {
        nn::LinearGroup qkv, o, gate_up, down;
        Tensor input_norm, post_norm, q_norm, k_norm;  // [hidden] / [head_dim], compute dtype
    };
    // Tokens [B, L] with positions pos (B·L) → hidden_states[-from_end] [B·L, hidden] on the device.
    Tensor run(const std::vector<int32_t>& ids, const std::vector<int64_t>& pos, int64_t B,
               const Tensor& key_mask, int from_end) const;

    Qwen3Config cfg_;
    DType dt_ = DType::F32;
    ops::Context ctx_;
    std::string where_;  // the folder, for errors
    Tensor embed_tokens_;  // [vocab, hidden]
    std::vector<Layer> layers_;
    Tensor norm_;
    int n_int8_ = 0;
    size_t bytes_ = 0;
};

}  // namespace qdit::text
