// ZImageTransformer2DModel config.json (diffusers) and the parameter layout it implies.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "models/model_spec.h"

namespace qdit::zimage {

struct Config {
    std::vector<int64_t> all_patch_size{2};
    std::vector<int64_t> all_f_patch_size{1};
    int64_t in_channels = 16;
    int64_t dim = 3840;
    int64_t n_layers = 30;
    int64_t n_refiner_layers = 2;
    int64_t n_heads = 30;
    int64_t n_kv_heads = 30;
    double norm_eps = 1e-5;
    bool qk_norm = true;
    int64_t cap_feat_dim = 2560;
    double rope_theta = 256.0;
    double t_scale = 1000.0;
    std::vector<int64_t> axes_dims{32, 48, 48};
    std::vector<int64_t> axes_lens{1024, 512, 512};
    int64_t siglip_feat_dim = 0;  // 0: absent (no Omni SigLIP branch)

    static constexpr int64_t kAdalnEmbedDim = 256;  // ADALN_EMBED_DIM in diffusers
    static constexpr int64_t kTimestepFreqDim = 256;
    static constexpr int64_t kTimestepHidden = 1024;

    int64_t head_dim() const { return dim / n_heads; }
    int64_t ffn_hidden() const { return int64_t(double(dim) / 3.0 * 8.0); }  // int(dim / 3 * 8)

    static Config from_json(const nlohmann::json& j, const std::string& where);
};

ModelSpec model_spec(const Config& c);

}  // namespace qdit::zimage
