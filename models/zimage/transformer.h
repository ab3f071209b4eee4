// ZImageTransformer2DModel (diffusers) on the CPU: the basic, non-omni
// text-to-image forward. Modules are named like the checkpoint keys; every
// Linear is loaded as the quantization plan says (dense F32/BF16 or int8 W8A8).
#pragma once
#include <string>
#include <vector>

#include "core/tensor.h"
#include "models/zimage/zimage_config.h"
#include "nn/feed_forward.h"
#include "nn/linear.h"
#include "backend/cpu/norm.h"
#include "backend/cpu/rope.h"
#include "models/loader.h"

namespace qdit::zimage {

// <block>.attention: q/k/v projections, per-head RMSNorm of q and k, RoPE,
// SDPA and the output projection (to_out.0).
struct Attention {
    nn::Linear to_q, to_k, to_v, to_out;
    cpu::RMSNorm norm_q, norm_k;  // absent (no name) when qk_norm is false
    int64_t heads = 0;

    // x [B, L, dim]; freqs [B, L, head_dim/2, 2]; key_mask U8 [B, L] or undefined.
    Tensor forward(const Tensor& x, const Tensor& key_mask, const Tensor& freqs) const;
};

// One ZImageTransformerBlock: sandwich RMSNorms around attention and FFN,
// with scale-and-gate modulation from the timestep embedding when `modulated`.
struct TransformerBlock {
    std::string name;
    Attention attention;
    nn::FeedForward feed_forward;
    cpu::RMSNorm attention_norm1, attention_norm2, ffn_norm1, ffn_norm2;
    bool modulated = false;
    nn::Linear adaLN_modulation;  // <block>.adaLN_modulation.0: adaLN width → 4·dim

    // x [B, L, dim] → [B, L, dim]; adaln [B, adaLN width] (used when modulated).
    Tensor forward(const Tensor& x, const Tensor& key_mask, const Tensor& freqs,
                   const Tensor& adaln) const;
};

class ZImageTransformer {
public:
    // Loads every module of `m` with activations in `compute` (F32 or BF16).
    // The first (patch, frame patch) pair of the config is the one used.
    ZImageTransformer(const PreparedModel& m, DType compute);

    const Config& config() const { return cfg_; }
    DType compute_dtype() const { return dt_; }

    // diffusers' forward(x, t, cap_feats) in basic mode:
    //   x[i] [C, F, H, W] (any float dtype, cast to the compute dtype),
    //   t F32 [B] (1 − sigma; multiplied by t_scale inside),
    //   cap_feats[i] [L_i, cap_feat_dim] (L_i >= 1, may differ between items).
    // Returns the velocity prediction [C, F, H, W] per item in the compute dtype.
    std::vector<Tensor> forward(const std::vector<Tensor>& x, const Tensor& t,
                                const std::vector<Tensor>& cap_feats) const;

private:
    Tensor timestep_embed(const Tensor& t) const;

    Config cfg_;
    DType dt_ = DType::F32;
    int64_t patch_ = 2, f_patch_ = 1;
    nn::Linear t_mlp0_, t_mlp2_;        // t_embedder.mlp.0 / .2
    cpu::RMSNorm cap_norm_;              // cap_embedder.0
    nn::Linear cap_linear_;             // cap_embedder.1
    nn::Linear x_embedder_;             // all_x_embedder.<p>-<f>
    nn::Linear final_linear_;           // all_final_layer.<p>-<f>.linear
    nn::Linear final_adaLN_;            // all_final_layer.<p>-<f>.adaLN_modulation.1
    Tensor x_pad_token_, cap_pad_token_;  // [dim] in the compute dtype
    std::vector<TransformerBlock> noise_refiner_, context_refiner_, layers_;
    cpu::RopeEmbedder rope_;
};

}  // namespace qdit::zimage
