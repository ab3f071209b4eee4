#include "models/zimage/zimage_config.h"

#include <numeric>

#include <fmt/format.h>

#include "core/error.h"
#include "io/files.h"

using nlohmann::json;

namespace qdit::zimage {

Config Config::from_json(const json& j, const std::string& where) {
    using namespace config_limits;
    Config c;
    read_config_field(j, where, "all_patch_size", &c.all_patch_size, {1, 16});
    read_config_field(j, where, "all_f_patch_size", &c.all_f_patch_size, {1, 16});
    read_config_field(j, where, "in_channels", &c.in_channels, {1, 1024});
    read_config_field(j, where, "dim", &c.dim, {1, kWidth});
    read_config_field(j, where, "n_layers", &c.n_layers, {0, kLayers});
    read_config_field(j, where, "n_refiner_layers", &c.n_refiner_layers, {0, kLayers});
    read_config_field(j, where, "n_heads", &c.n_heads, {1, kHeads});
    read_config_field(j, where, "n_kv_heads", &c.n_kv_heads, {1, kHeads});
    read_config_field(j, where, "norm_eps", &c.norm_eps, {1e-12, 1.0});
    read_config_field(j, where, "qk_norm", &c.qk_norm);
    read_config_field(j, where, "cap_feat_dim", &c.cap_feat_dim, {1, kWidth});
    read_config_field(j, where, "siglip_feat_dim", &c.siglip_feat_dim, {0, kWidth});
    read_config_field(j, where, "rope_theta", &c.rope_theta, {1.0, 1e12});
    read_config_field(j, where, "t_scale", &c.t_scale, {1e-6, 1e6});
    read_config_field(j, where, "axes_dims", &c.axes_dims, {2, kWidth});
    read_config_field(j, where, "axes_lens", &c.axes_lens, {1, kPositions});

    require_config(c.all_patch_size.size() == c.all_f_patch_size.size() && !c.all_patch_size.empty(),
                   where, "all_patch_size and all_f_patch_size must be non-empty lists of equal length");
    require_config(c.dim % c.n_heads == 0, where,
                   fmt::format("dim ({}) must be a multiple of n_heads ({})", c.dim, c.n_heads));
    require_config(c.axes_dims.size() == 3 && c.axes_lens.size() == 3, where,
                   "axes_dims and axes_lens must list 3 axes (caption/frame, height, width)");
    int64_t rope_dims = std::accumulate(c.axes_dims.begin(), c.axes_dims.end(), int64_t(0));
    require_config(rope_dims == c.head_dim(), where,
                   fmt::format("sum(axes_dims) = {} must equal the head dim dim/n_heads = {}", rope_dims,
                               c.head_dim()));
    int64_t rope_table = 0;  // f32 values of the cos/sin tables: sum of axes_lens[i] * axes_dims[i]
    for (size_t i = 0; i < c.axes_dims.size(); ++i) {
        require_config(c.axes_dims[i] % 2 == 0, where, fmt::format("axes_dims[{}] ({}) must be even", i, c.axes_dims[i]));
        rope_table += c.axes_lens[i] * c.axes_dims[i];
    }
    require_config(rope_table <= kRopeTableValues, where,
                   fmt::format("the RoPE tables of axes_lens x axes_dims hold {} values, more than the {} supported",
                               rope_table, kRopeTableValues));
    return c;
}

ModelSpec model_spec(const Config& c) {
    ModelSpec s;
    s.class_name = "ZImageTransformer2DModel";
    const int64_t D = c.dim, adaln = std::min<int64_t>(D, Config::kAdalnEmbedDim);
    auto linear = [&](const std::string& name, int64_t out, int64_t in, bool bias) {
        s.linears.push_back({name, out, in, bias});
        s.params.push_back({name + ".weight", {out, in}});
        if (bias) s.params.push_back({name + ".bias", {out}});
    };
    auto param = [&](const std::string& name, Shape shape) { s.params.push_back({name, shape}); };
    auto block = [&](const std::string& p, bool modulation) {
        const int64_t hd = c.head_dim(), ffn = c.ffn_hidden();
        linear(p + ".attention.to_q", D, D, false);
        linear(p + ".attention.to_k", D, D, false);
        linear(p + ".attention.to_v", D, D, false);
        linear(p + ".attention.to_out.0", D, D, false);
        if (c.qk_norm) {
            param(p + ".attention.norm_q.weight", {hd});
            param(p + ".attention.norm_k.weight", {hd});
        }
        linear(p + ".feed_forward.w1", ffn, D, false);
        linear(p + ".feed_forward.w2", D, ffn, false);
        linear(p + ".feed_forward.w3", ffn, D, false);
        for (const char* n : {"attention_norm1", "ffn_norm1", "attention_norm2", "ffn_norm2"})
            param(p + "." + n + ".weight", {D});
        if (modulation) linear(p + ".adaLN_modulation.0", 4 * D, adaln, true);
    };

    for (size_t i = 0; i < c.all_patch_size.size(); ++i) {
        int64_t p = c.all_patch_size[i], f = c.all_f_patch_size[i];
        std::string key = fmt::format("{}-{}", p, f);
        linear("all_x_embedder." + key, D, f * p * p * c.in_channels, true);
        std::string fl = "all_final_layer." + key;
        linear(fl + ".linear", p * p * f * c.in_channels, D, true);
        linear(fl + ".adaLN_modulation.1", D, adaln, true);
    }
    for (int64_t i = 0; i < c.n_refiner_layers; ++i) block(fmt::format("noise_refiner.{}", i), true);
    for (int64_t i = 0; i < c.n_refiner_layers; ++i)
        block(fmt::format("context_refiner.{}", i), false);
    linear("t_embedder.mlp.0", Config::kTimestepHidden, Config::kTimestepFreqDim, true);
    linear("t_embedder.mlp.2", adaln, Config::kTimestepHidden, true);
    param("cap_embedder.0.weight", {c.cap_feat_dim});
    linear("cap_embedder.1", D, c.cap_feat_dim, true);
    if (c.siglip_feat_dim > 0) {
        param("siglip_embedder.0.weight", {c.siglip_feat_dim});
        linear("siglip_embedder.1", D, c.siglip_feat_dim, true);
        for (int64_t i = 0; i < c.n_refiner_layers; ++i)
            block(fmt::format("siglip_refiner.{}", i), false);
        param("siglip_pad_token", {1, D});
    }
    param("x_pad_token", {1, D});
    param("cap_pad_token", {1, D});
    for (int64_t i = 0; i < c.n_layers; ++i) block(fmt::format("layers.{}", i), true);

    // Embedders, the timestep MLP, the final layer and the per-block adaLN
    // modulation stay in high precision by default: together they are under
    // 2% of the weights, the adaLN GEMVs run on a single token (nothing to gain
    // from int8), and published W8A8 recipes keep the same set.
    s.keep_high_precision = {"t_embedder", "cap_embedder", "siglip_embedder", "all_x_embedder",
                             "all_final_layer", "adaLN_modulation"};
    return s;
}

}  // namespace qdit::zimage
