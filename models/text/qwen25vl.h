// The language model of Qwen2.5-VL (transformers' Qwen2_5_VLForConditionalGeneration): Qwen-Image's
// text encoder. The layer loop is the shared decoder LM (models/text/decoder_lm.h) with q/k/v
// biases, no o_proj bias and no q/k norm; head_dim = hidden_size / num_attention_heads. Its
// multimodal RoPE ("mrope_section") rotates the t/h/w sections of each head by the token's
// temporal / height / width positions; for text alone the three are the same 1-D position, so it
// is rotate-half RoPE over the whole head (the fixtures check this against transformers).
//
// Checkpoints (text_encoder/ of a Qwen-Image folder) come in several layouts, all accepted:
//   - config.json: the language-model fields at the top level with rope_theta and
//     rope_scaling {"type": "mrope", "mrope_section": [...]} (transformers 4.5x, which wrote
//     Qwen/Qwen-Image's), or nested under "text_config" with rope_parameters (transformers 5);
//   - keys: "model.layers.*", "model.embed_tokens.weight", "model.norm.weight", "visual.*"
//     (what transformers 4.5x and 5 write), or "model.language_model.*" and "model.visual.*" (the
//     in-memory module names); "lm_head.weight" in both.
// The vision tower's tensors are recognised by their prefix and never read.
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

struct Qwen25VLConfig : DecoderLmConfig {
    std::vector<int64_t> mrope_section = {16, 24, 24};
    bool nested = false;  // the config had a "text_config"
    // Prefix of the vision tower's keys (the language model's: DecoderLmConfig::prefix).
    std::string visual_prefix = "visual.";

    // The language model (text_config, or the top level) as transformers' Qwen2_5_VLTextConfig
    // defaults it: q/k/v biases, no o bias, no q/k norm, head_dim = hidden_size / heads.
    Qwen25VLConfig();
    // Picks the key layout the checkpoint holds ("model.language_model.embed_tokens.weight":
    // the in-memory names; else transformers' saved names).
    void detect_key_layout(const HasKey& has_key);

    static Qwen25VLConfig from_json(const nlohmann::json& j, const std::string& where);
    // The config of a text_encoder/ folder opened with prepare_model, with the key layout its
    // checkpoint holds.
    static Qwen25VLConfig from_model(const PreparedModel& m);
};

// The language model's tensors and lm_head.weight (optional; never read, not a Linear of the
// plan); the vision tower's prefix is ignored. No Linear is kept in high precision by
// default: quantizing the text encoder at all is the caller's choice.
ModelSpec model_spec(const Qwen25VLConfig& c);

// The text encoder; hidden_states and encode give hidden_states[-1] (the final norm's output,
// QwenImagePipeline's) by default.
using Qwen25VLTextModel = DecoderTextEncoder<Qwen25VLConfig, 1>;

}  // namespace qdit::text
