// The committed Qwen2.5-VL text-encoder fixtures (tests/data/qwen25vl/<name>/, written by transformers:
// scripts/fixtures/make_qwen25vl_fixtures.py), shared by the CPU and CUDA encoder tests. They have
// the layout of the Qwen3 fixtures (tests/qwen3_fixture.h): inputs.safetensors, reference.safetensors
// (<tag>.hidden_states.<i>, <tag>.embeds.<b> for fp32 / bf16 / w8a8), text_encoder/.
#pragma once
#include <filesystem>
#include <string>

#include "tests/test_data.h"
#include "io/safetensors.h"
#include "tests/qwen3_fixture.h"

namespace qdit::testutil {

// nested_fp32: transformers 5.24's config layout, fp32, right padding; flat_bf16: Qwen-Image's
// (transformers 4.5x) top-level config, bf16 weights, left padding. lm_keys: nested_fp32's weights
// under model.language_model.* / model.visual.* keys (nested_fp32's references apply).
inline const char* const kQwen25VLFixtures[] = {"nested_fp32", "flat_bf16"};

inline std::filesystem::path qwen25vl_dir(const std::string& name) { return fixture_dir("qwen25vl", name); }
inline std::string qwen25vl_encoder_dir(const std::string& name) {
    return (qwen25vl_dir(name) / "text_encoder").string();
}

// The fixture's token ids and attention mask [batch, len], and a reference tensor as F32.
inline Qwen3Inputs qwen25vl_inputs(const std::string& name) { return encoder_fixture_inputs(qwen25vl_dir(name)); }
inline Tensor qwen25vl_reference(const std::string& name, const std::string& key) {
    return encoder_fixture_reference(qwen25vl_dir(name), key);
}

// A tensor of the prompt fixture's references (prompt/reference.safetensors), as stored.
inline bool qwen_image_prompt_has(const std::string& key) {
    return SafetensorsFile((qwen25vl_dir("prompt") / "reference.safetensors").string()).contains(key);
}
inline Tensor qwen_image_prompt_reference(const std::string& key) {
    SafetensorsFile f((qwen25vl_dir("prompt") / "reference.safetensors").string());
    return f.get(key);
}

}  // namespace qdit::testutil
