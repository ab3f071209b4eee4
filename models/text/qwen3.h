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

    Qwen3Config();  // transformers' Qwen3Config defaults; q/k RMSNorm; keys "model." prefixed for
                    // Qwen3ForCausalLM (from_json sets the prefix from the architecture)

    static Qwen3Config from_json(const nlohmann::json& j, const std::string& where);
    // The config of a text_encoder/ folder opened with prepare_model.
    static Qwen3Config from_model(const PreparedModel& m);
};

// Every tensor of the checkpoint; a Qwen3ForCausalLM may also have
// lm_head.weight (optional: the encoder does not use it, and it is not planned
// as a Linear). No Linear is kept in high precision by default: quantizing the
// text encoder at all is the caller's choice.
ModelSpec model_spec(const Qwen3Config& c);

// The text encoder; encode gives hidden_states[-2] by default (ZImagePipeline._encode_prompt: the
// rows of the prompt's valid tokens, [n_valid, hidden]).
using Qwen3TextModel = DecoderTextEncoder<Qwen3Config, 2>;

}  // namespace qdit::text
