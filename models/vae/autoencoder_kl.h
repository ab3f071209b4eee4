// diffusers' AutoencoderKL decoder on the CPU (the FLUX.1 VAE that Z-Image
// uses), config-driven from its config.json. Only the decode path is built:
// post_quant_conv (when the config has one) and `decoder.*`; the encoder's
// weights in the checkpoint are left unread.
//
// Activations run channels-last ([B, H, W, C]) inside, so the convolutions
// hit oneDNN's nhwc kernels and the mid-block attention reads its tokens
// without a transpose; the public tensors are NCHW like torch's.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/tensor.h"
#include "models/model_spec.h"
#include "backend/cpu/conv2d.h"
#include "backend/cpu/group_norm.h"
#include "nn/linear.h"

namespace qdit::vae {

// The fields of AutoencoderKL's config.json that the decoder depends on;
// absent (or null) fields take diffusers' constructor defaults.
struct Config {
    int64_t out_channels = 3;
    int64_t latent_channels = 4;
    std::vector<int64_t> block_out_channels{64};
    std::vector<std::string> up_block_types{"UpDecoderBlock2D"};
    int64_t layers_per_block = 1;
    int64_t norm_num_groups = 32;
    std::string act_fn = "silu";
    double scaling_factor = 0.18215;
    double shift_factor = 0.0;  // null in config.json means no shift
    bool use_post_quant_conv = true;
    bool mid_block_add_attention = true;

    // The resnets and GroupNorms of the decoder use this eps (hard-coded in diffusers).
    static constexpr float kEps = 1e-6f;

    // Image pixels per latent pixel along each axis.
    int64_t spatial_scale() const { return int64_t(1) << (block_out_channels.size() - 1); }

    // ConfigError naming `where` and the field for anything this decoder
    // cannot run (other block types, activations, a group count that does
    // not divide the channels...).
    static Config from_json(const nlohmann::json& j, const std::string& where);
};

// Every tensor the decode path reads (post_quant_conv when configured, then
// decoder.*), named like the checkpoint keys, with the shapes `c` implies.
std::vector<ParamSpec> decoder_params(const Config& c);

// ResnetBlock2D without a time embedding: x + conv2(silu(norm2(conv1(silu(norm1(x)))))),
// the skip going through a 1x1 conv_shortcut when the channel count changes.
struct ResnetBlock {
    cpu::GroupNorm norm1, norm2;
    cpu::Conv2d conv1, conv2, conv_shortcut;
    bool has_shortcut = false;

    // x [B, H, W, Cin] → [B, H, W, Cout]. Consumes x: without a shortcut the
    // output is accumulated into x's buffer, so x must not be shared.
    Tensor forward(Tensor x) const;
};

// The mid-block Attention (diffusers' deprecated-attn-block layout): one head
// whose dim is the channel count, over the H·W positions as tokens, with a
// GroupNorm in front and the input added back.
struct AttentionBlock {
    cpu::GroupNorm group_norm;
    nn::Linear to_q, to_k, to_v, to_out;  // to_out is `to_out.0`

    Tensor forward(const Tensor& x) const;  // [B, H, W, C] → same
};

struct UpBlock {
    std::vector<ResnetBlock> resnets;
    cpu::Conv2d upsampler;  // upsamplers.0.conv after a nearest 2x upsample
    bool has_upsampler = false;
};

class AutoencoderKL {
public:
    // `dir` holds config.json and the weights (diffusion_pytorch_model.safetensors,
    // or any layout io::Checkpoint opens). Activations run in `compute` (F32
    // or BF16); weights of any float dtype are converted. The config, then
    // the names and shapes of all decoder_params(), are checked before any
    // weight is read; a missing tensor or one of the wrong shape is a
    // ShapeError naming it.
    explicit AutoencoderKL(const std::string& dir, DType compute = DType::F32);

    const Config& config() const { return cfg_; }
    DType compute_dtype() const { return dt_; }

    // What ZImagePipeline does to its final latents before decoding:
    // latents / scaling_factor + shift_factor in the VAE dtype. For BF16 torch
    // divides by the f32 scalar but adds the shift rounded to bf16; this copies
    // both. latents [B, C, h, w], any float dtype → compute dtype.
    Tensor unscale_latents(const Tensor& latents) const;

    // vae.decode(z).sample: z [B, latent_channels, h, w] (already unscaled,
    // any float dtype) → [B, out_channels, h·s, w·s] in the compute dtype,
    // s = spatial_scale(). Not clamped.
    Tensor decode(const Tensor& z) const;

private:
    Config cfg_;
    DType dt_;
    cpu::Conv2d post_quant_conv_;
    cpu::Conv2d conv_in_;
    ResnetBlock mid_resnet0_, mid_resnet1_;
    AttentionBlock mid_attention_;
    std::vector<UpBlock> up_blocks_;
    cpu::GroupNorm conv_norm_out_;
    cpu::Conv2d conv_out_;
};

// VaeImageProcessor.postprocess(output_type="pil") as uint8: image [B, C, H, W]
// F32 or BF16 → U8 [B, H, W, C] with round_half_even(clamp(x·0.5 + 0.5, 0, 1) · 255).
// For BF16 the x·0.5 + 0.5 and clamp are rounded to bf16 first, as torch does
// them in the image's dtype; the ·255 and rounding are f32 (numpy). NaN → 0.
Tensor postprocess_to_u8(const Tensor& image);

}  // namespace qdit::vae
