// The committed Z-Image transformer fixtures (tests/data/zimage/<name>/, written by diffusers:
// scripts/fixtures/make_zimage_fixtures.py), shared by the model tests on every device, the CUDA
// graph test and the split-model tests.
#pragma once
#include <filesystem>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "tests/test_data.h"
#include "io/safetensors.h"
#include "models/loader.h"
#include "models/zimage/transformer.h"
#include "tests/error_stats.h"

namespace qdit::testutil {

// h5_b2: a batch of two with different caption lengths; h2_l3_sharded: a sharded checkpoint.
inline const char* const kZImageFixtures[] = {"h3_b1", "h5_b2", "h2_l3_sharded"};

inline std::filesystem::path zimage_fixture_dir(const std::string& name) { return fixture_dir("zimage", name); }
inline std::string zimage_transformer(const std::string& name) {
    return (zimage_fixture_dir(name) / "transformer").string();
}
inline std::string zimage_transformer_bf16(const std::string& name) { return transformer_bf16(zimage_fixture_dir(name)); }

// Every batch item's latent and caption features, and the timesteps.
struct ZImageInputs {
    std::vector<Tensor> x, cap;
    Tensor t;
};

inline ZImageInputs zimage_inputs(const std::string& name) {
    SafetensorsFile f((zimage_fixture_dir(name) / "inputs.safetensors").string());
    ZImageInputs in;
    for (int i = 0; f.contains(fmt::format("x.{}", i)); ++i) {
        in.x.push_back(f.get(fmt::format("x.{}", i)));
        in.cap.push_back(f.get(fmt::format("cap_feats.{}", i)));
    }
    in.t = f.get("t");
    return in;
}

// Reference `tag` (fp32, bf16, w8a8, w8a8_all) of every item.
inline std::vector<Tensor> zimage_reference(const std::string& name, const std::string& tag) {
    SafetensorsFile f((zimage_fixture_dir(name) / "reference.safetensors").string());
    std::vector<Tensor> out;
    for (int i = 0; f.contains(fmt::format("{}.{}", tag, i)); ++i) out.push_back(f.get(fmt::format("{}.{}", tag, i)));
    return out;
}

// The model's output per item (host) on ctx's device.
inline std::vector<Tensor> run_zimage(const PreparedModel& m, DType dt, const ZImageInputs& in,
                                      const ops::Context& ctx = {}) {
    return zimage::ZImageTransformer(m, dt, ctx).forward(in.x, in.t, in.cap);
}

// Error statistics over all items (the same number of items, each the same shape).
inline Err compare(const std::vector<Tensor>& test, const std::vector<Tensor>& ref) {
    EXPECT_EQ(test.size(), ref.size());
    Err e;
    for (size_t i = 0; i < std::min(test.size(), ref.size()); ++i) e.add(compare(test[i], ref[i]));
    return e;
}

}  // namespace qdit::testutil
