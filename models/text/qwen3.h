// Qwen3 text model (transformers' Qwen3Model): Z-Image's text encoder. The layer loop is the shared
// decoder LM (models/text/decoder_lm.h) with per-head q/k RMSNorm; keys are "model." prefixed when
// the folder was saved from Qwen3ForCausalLM, as Z-Image's text_encoder/ is.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/tensor.h"
#include "models/loader.h"
#include "models/model_spec.h"
#include "models/text/decoder_lm.h"
#include "ops/context.h"

namespace qdit::text {

// config.json of a Qwen3 checkpoint (transformers 4 or 5 layout). Missing
// fields take transformers' Qwen3Config defaults; anything this port does not
// implement (rope scaling, sliding windows, another activation) is refused.
struct Qwen3Config : DecoderLmConfig {
    std::string architecture = "Qwen3Model";  // "architectures"[0]: Qwen3Model or Qwen3ForCausalLM
    bool attention_bias = false;              // q/k/v and o biases
    bool tie_word_embeddings = false;

    Qwen3Config();  // transformers' Qwen3Config defaults; q/k RMSNorm; keys "model." prefixed for
                    // Qwen3ForCausalLM (from_json sets the prefix from the architecture)
    const DecoderLmConfig& lm() const { return *this; }

    static Qwen3Config from_json(const nlohmann::json& j, const std::string& where);
};

// Every tensor of the checkpoint; an untied Qwen3ForCausalLM also has
// lm_head.weight, which the encoder does not use and which is not planned as
// a Linear. No Linear is kept in high precision by default: quantizing the
// text encoder at all is the caller's choice.
ModelSpec model_spec(const Qwen3Config& c);

class Qwen3TextModel : public DecoderLM {
public:
    // Loads every module of `m` (a text_encoder/ folder opened with prepare_model) onto ctx's
    // device with activations in `compute` (the CPU: F32 or BF16; a GPU: BF16).
    Qwen3TextModel(const PreparedModel& m, DType compute, const ops::Context& ctx = {});

    const Qwen3Config& config() const { return cfg_; }

    // DecoderLM::hidden_states; from_end 2 (ZImagePipeline's hidden_states[-2]) by default.
    Tensor hidden_states(const std::vector<int32_t>& ids, const std::vector<uint8_t>& mask,
                         int64_t batch, int from_end = 2) const {
        return DecoderLM::hidden_states(ids, mask, batch, from_end);
    }
    // ZImagePipeline._encode_prompt for one tokenized prompt: hidden_states[-2] of the rows where
    // mask is nonzero → [n_valid, hidden] on the host (DecoderLM::encode).
    Tensor encode(const std::vector<int32_t>& ids, const std::vector<uint8_t>& mask, int from_end = 2) const {
        return DecoderLM::encode(ids, mask, from_end);
    }
    // The same, left on the model's device.
    Tensor encode_device(const std::vector<int32_t>& ids, const std::vector<uint8_t>& mask,
                         int from_end = 2) const {
        return DecoderLM::encode_device(ids, mask, from_end);
    }

private:
    Qwen3TextModel(Qwen3Config c, const PreparedModel& m, DType compute, const ops::Context& ctx);
    Qwen3Config cfg_;
};

}  // namespace qdit::text
