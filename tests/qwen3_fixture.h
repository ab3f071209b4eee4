// The committed Qwen3 text-encoder fixtures (tests/data/qwen3/<name>/, written by transformers:
// scripts/fixtures/), shared by the CPU and CUDA encoder tests.
#pragma once
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "tests/test_data.h"
#include "core/tensor.h"
#include "io/safetensors.h"

namespace qdit::testutil {

inline const char* const kQwen3Fixtures[] = {"causal_lm", "model_bias_bf16"};

inline std::filesystem::path qwen3_fixture_dir(const std::string& name) { return fixture_dir("qwen3", name); }
inline std::string qwen3_encoder_dir(const std::string& name) {
    return (qwen3_fixture_dir(name) / "text_encoder").string();
}

// The fixture's token ids and attention mask [batch, len].
struct Qwen3Inputs {
    std::vector<int32_t> ids;
    std::vector<uint8_t> mask;
    int64_t batch = 0, len = 0;

    // Row b of ids / mask.
    std::vector<int32_t> ids_of(int64_t b) const { return {ids.begin() + b * len, ids.begin() + (b + 1) * len}; }
    std::vector<uint8_t> mask_of(int64_t b) const { return {mask.begin() + b * len, mask.begin() + (b + 1) * len}; }
};

// Rows of item b of a [B, L, D] reference (F32) where the mask keeps the token → [n_valid, D]: what
// encode() of that item gives.
inline Tensor valid_rows(const Tensor& ref, const Qwen3Inputs& in, int64_t b) {
    const int64_t L = ref.size(1), D = ref.size(2);
    std::vector<int64_t> keep;
    for (int64_t j = 0; j < L; ++j)
        if (in.mask[size_t(b * L + j)]) keep.push_back(j);
    Tensor out = Tensor::empty({int64_t(keep.size()), D}, DType::F32);
    for (size_t i = 0; i < keep.size(); ++i)
        std::memcpy(out.data<float>() + i * size_t(D), ref.data<float>() + (b * L + keep[i]) * D, size_t(D) * 4);
    return out;
}

// The token ids and attention mask of a text-encoder fixture folder (its inputs.safetensors).
inline Qwen3Inputs encoder_fixture_inputs(const std::filesystem::path& dir) {
    SafetensorsFile f((dir / "inputs.safetensors").string());
    Tensor ids = f.get("input_ids"), mask = f.get("attention_mask");
    Qwen3Inputs in;
    in.batch = ids.size(0);
    in.len = ids.size(1);
    in.ids.assign(ids.data<int32_t>(), ids.data<int32_t>() + ids.numel());
    in.mask.assign(mask.data<uint8_t>(), mask.data<uint8_t>() + mask.numel());
    return in;
}
// A reference tensor of a text-encoder fixture folder (its reference.safetensors), as F32.
inline Tensor encoder_fixture_reference(const std::filesystem::path& dir, const std::string& key) {
    SafetensorsFile f((dir / "reference.safetensors").string());
    return f.get(key).to(DType::F32);
}

inline Qwen3Inputs qwen3_inputs(const std::string& name) { return encoder_fixture_inputs(qwen3_fixture_dir(name)); }
inline Tensor qwen3_reference(const std::string& name, const std::string& key) {
    return encoder_fixture_reference(qwen3_fixture_dir(name), key);
}

}  // namespace qdit::testutil
