// Test helpers shared by the CPU and CUDA tests of the Qwen-Image VAE decoder: the committed fixture
// (tests/data/qwen_image_vae/, made by scripts/fixtures/make_qwen_image_vae_fixtures.py).
#pragma once
#include <filesystem>
#include <string>

#include "io/safetensors.h"
#include "tests/error_stats.h"

#ifndef QDIT_TEST_DATA
#define QDIT_TEST_DATA "tests/data"
#endif

namespace qdit::testutil {

inline const std::filesystem::path kQwenVaeData = std::filesystem::path(QDIT_TEST_DATA) / "qwen_image_vae";
inline const std::string kQwenVaeDir = (kQwenVaeData / "vae").string();

// "latents" (the unpacked pipeline latents, before the mean / std step), from inputs.safetensors.
inline Tensor qwen_vae_input(const std::string& name) {
    return SafetensorsFile((kQwenVaeData / "inputs.safetensors").string()).get(name);
}
// "z", "image", "image_u8" and their "bf16." twins, from reference.safetensors.
inline Tensor qwen_vae_reference(const std::string& name) {
    return SafetensorsFile((kQwenVaeData / "reference.safetensors").string()).get(name);
}

}  // namespace qdit::testutil
