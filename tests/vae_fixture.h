// Test helpers shared by the CPU and CUDA VAE tests: the committed fixture (tests/data/vae/, made by
// scripts/fixtures/make_vae_fixtures.py), random f32 inputs, and the error measures both report.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <string>

#include <gtest/gtest.h>

#include "io/safetensors.h"
#include "tests/error_stats.h"
#include "tests/random_tensor.h"

#ifndef QDIT_TEST_DATA
#define QDIT_TEST_DATA "tests/data"
#endif

namespace qdit::testutil {

inline const std::filesystem::path kVaeData = std::filesystem::path(QDIT_TEST_DATA) / "vae";
inline const std::string kVaeDir = (kVaeData / "vae").string();

inline Tensor vae_reference(const std::string& name) {
    return SafetensorsFile((kVaeData / "reference.safetensors").string()).get(name);
}
inline Tensor vae_latents() { return SafetensorsFile((kVaeData / "inputs.safetensors").string()).get("latents"); }

// N(mean, stddev) in f32 from mt19937(seed).
inline Tensor random_tensor(Shape shape, uint32_t seed, float stddev = 1.0f, float mean = 0.0f) {
    return randn(std::move(shape), seed, mean, stddev, DType::F32);
}
}  // namespace qdit::testutil
