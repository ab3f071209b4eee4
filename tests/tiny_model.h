// Test helpers: a tiny Z-Image transformer folder with random weights.
#pragma once
#include <unistd.h>

#include <filesystem>
#include <random>
#include <string>

#include <nlohmann/json.hpp>

#include "io/files.h"
#include "io/safetensors.h"
#include "models/model_spec.h"

namespace qdit::testutil {

namespace fs = std::filesystem;
using nlohmann::json;

inline fs::path fresh_dir(const std::string& name) {
    fs::path d = fs::temp_directory_path() / ("qdit_" + name + "_" + std::to_string(::getpid()));
    fs::remove_all(d);
    fs::create_directories(d);
    return d;
}

inline json tiny_config() {
    return json{{"_class_name", "ZImageTransformer2DModel"},
                {"all_patch_size", {2}},
                {"all_f_patch_size", {1}},
                {"in_channels", 4},
                {"dim", 96},
                {"n_layers", 2},
                {"n_refiner_layers", 1},
                {"n_heads", 3},
                {"n_kv_heads", 3},
                {"cap_feat_dim", 40},
                {"axes_dims", {8, 12, 12}},
                {"axes_lens", {64, 32, 32}}};
}

// A transformer folder with random bf16 weights laid out as the spec says.
// `drop` leaves a key out, `extra` adds one.
inline fs::path write_tiny(const std::string& name, const std::string& drop = "",
                    const std::string& extra = "") {
    fs::path d = fresh_dir(name);
    json cfg = tiny_config();
    ModelSpec spec = model_spec_from_config(cfg, "tiny");
    std::mt19937 rng(42);
    std::normal_distribution<float> dist(0.f, 0.1f);
    std::vector<std::pair<std::string, Tensor>> ts;
    for (const ParamSpec& p : spec.params) {
        if (p.name == drop) continue;
        Tensor f = Tensor::empty(p.shape, DType::F32);
        for (int64_t i = 0; i < f.numel(); ++i) f.data<float>()[i] = dist(rng);
        ts.emplace_back(p.name, f.to(DType::BF16));
    }
    if (!extra.empty()) ts.emplace_back(extra, Tensor::zeros({2}, DType::BF16));
    write_checkpoint(d.string(), "diffusion_pytorch_model", ts, 40000);  // several shards
    write_file_atomic((d / "config.json").string(), cfg.dump(2));
    return d;
}
}  // namespace qdit::testutil
