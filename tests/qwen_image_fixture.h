// The committed Qwen-Image transformer fixtures (tests/data/qwen_image/<name>/, written by
// diffusers: scripts/fixtures/make_qwen_image_fixtures.py), shared by the CPU and CUDA tests.
#pragma once
#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>

#include <gtest/gtest.h>

#include "tests/test_data.h"
#include "io/safetensors.h"
#include "tests/error_stats.h"
#include "models/loader.h"
#include "models/qwen_image/transformer.h"

namespace qdit::testutil {

inline const char* const kQwenImageFixtures[] = {"h3_b1", "h2_b2_mask", "h2_sharded"};

inline std::filesystem::path qwen_image_fixture_dir(const std::string& name) { return fixture_dir("qwen_image", name); }
inline std::string qwen_image_transformer(const std::string& name) {
    return (qwen_image_fixture_dir(name) / "transformer").string();
}
inline std::string qwen_image_transformer_bf16(const std::string& name) {
    return transformer_bf16(qwen_image_fixture_dir(name));
}

struct QwenImageInputs {
    Tensor hidden_states, encoder_hidden_states, mask, timestep, timestep_bf16;
    std::array<int64_t, 3> grid{};
};

inline QwenImageInputs qwen_image_inputs(const std::string& name) {
    SafetensorsFile f((qwen_image_fixture_dir(name) / "inputs.safetensors").string());
    QwenImageInputs in{f.get("hidden_states"), f.get("encoder_hidden_states"), f.get("encoder_hidden_states_mask"),
                       f.get("timestep"), f.get("timestep_bf16"), {}};
    const Tensor shapes = f.get("img_shapes").to(DType::F32);
    for (int i = 0; i < 3; ++i) in.grid[size_t(i)] = int64_t(shapes.data<float>()[i]);
    return in;
}

inline Tensor qwen_image_reference(const std::string& name, const std::string& tag) {
    return SafetensorsFile((qwen_image_fixture_dir(name) / "reference.safetensors").string()).get(tag).to(DType::F32);
}

// The model's output (F32, host) on ctx's device; the bf16 pipeline's timestep when asked.
inline Tensor run_qwen_image(const PreparedModel& m, DType dt, const QwenImageInputs& in, bool bf16_timestep = false,
                             const ops::Context& ctx = {}) {
    qwen_image::QwenImageTransformer model(m, dt, ctx);
    return model
        .forward(in.hidden_states, in.encoder_hidden_states, in.mask, bf16_timestep ? in.timestep_bf16 : in.timestep,
                 in.grid)
        .to(DType::F32);
}

// W8A8 runs against the simulated references with the same layer sets: the int8 arithmetic is the
// reference's, so we reproduce its quantization noise (distance ≤ 0.25 × its distance to fp32)
// and its SQNR (within 0.25 dB), as the Z-Image test argues. `tag` names the
// reference of out's layer sets.
inline void expect_reproduces_w8a8(const Tensor& out, const std::string& name, const std::string& tag) {
    const Tensor ref = qwen_image_reference(name, tag), ref32 = qwen_image_reference(name, "fp32");
    const Err e = compare(out, ref), vs32 = compare(out, ref32), ref_vs32 = compare(ref, ref32);
    std::printf("[ %-10s ] %s: rel L2 %.3g (%.3f of the quantization noise); SQNR vs fp32 %.2f dB, reference %.2f dB\n",
                name.c_str(), tag.c_str(), e.rel_l2(), e.rel_l2() / ref_vs32.rel_l2(), vs32.sqnr_db(),
                ref_vs32.sqnr_db());
    EXPECT_LE(e.rel_l2(), 0.25 * ref_vs32.rel_l2());
    EXPECT_NEAR(vs32.sqnr_db(), ref_vs32.sqnr_db(), 0.25);
}

}  // namespace qdit::testutil
