// diffusers' AutoencoderKL decoder (the FLUX.1 VAE that Z-Image uses), config-driven from its
// config.json, written once over the op layer: the CPU or a GPU (ops::Context), F32 or BF16
// activations. Only the decode path is built: post_quant_conv (when the config has one) and
// `decoder.*`; the encoder's weights in the checkpoint are left unread.
//
// Rounding points (every backend): every parameter rounded to the compute dtype, as
// from_pretrained(torch_dtype=...) does; convolutions accumulate in f32 and add the bias in f32
// before one rounding (ops::Conv2d); a resnet's conv2 output is rounded before the residual add in
// BF16 (as torch; F32 fuses the add on the CPU); GroupNorm statistics in double, the norm's output
// rounded before the SiLU (ops::group_norm); the mid-block attention (one head whose dim is the
// channel count) is one q|k|v projection (ops::Dense over the three weights side by side: each
// column is its own Linear's), ops::spatial_attention, to_out and the residual add. A GPU differs
// from the CPU only in accumulation orders and CUDA's expf (docs/architecture.md).
//
// Activations run channels-last ([B, H, W, C]) inside, so the convolutions hit oneDNN's / cuDNN's
// nhwc kernels and the attention reads its tokens without a transpose; the public tensors are NCHW
// like torch's. GPU work runs on the context's stream.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/tensor.h"
#include "models/model_spec.h"
#include "ops/context.h"
#include "ops/conv.h"
#include "ops/dense.h"

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

class AutoencoderKL {
public:
    // `dir` holds config.json and the weights (diffusion_pytorch_model.safetensors, or any layout
    // io::Checkpoint opens). Activations run in `compute` (F32 or BF16); weights of any float dtype
    // are rounded to it and placed on ctx's device. The config, then the names and shapes of all
    // decoder_params(), are checked before any weight is read or a GPU is touched: ConfigError
    // naming config.json and the field, ShapeError naming the tensor.
    explicit AutoencoderKL(const std::string& dir, DType compute = DType::F32, const ops::Context& ctx = {});
    // The decoder of `cfg` with random weights drawn on the host from `seed` (conv and linear
    // weights ~ N(0, 1/fan_in), norm weights ~ N(1, 0.02), biases ~ N(0, 0.02)), for benchmarks at
    // the real size.
    static AutoencoderKL random(const Config& cfg, DType compute, uint64_t seed, const ops::Context& ctx = {});

    const Config& config() const { return cfg_; }
    DType compute_dtype() const { return dt_; }
    const ops::Context& context() const { return ctx_; }
    size_t weight_bytes() const { return bytes_; }  // on the device

    // What ZImagePipeline does to its final latents before decoding: latents / scaling_factor +
    // shift_factor in the compute dtype (ops::div_add). For BF16 torch divides by the f32 scalar
    // but adds the shift rounded to bf16; this copies both. latents [B, C, h, w] on the host (any
    // float dtype) or on ctx's device (F32 or BF16) → the compute dtype, on the same device.
    Tensor unscale_latents(const Tensor& latents) const;

    // vae.decode(z).sample: z [B, latent_channels, h, w] (already unscaled) on the host (any float
    // dtype, converted there) or on ctx's device (F32 or BF16) → [B, out_channels, h·s, w·s] in
    // the compute dtype on the same device, s = spatial_scale(). Not clamped.
    Tensor decode(const Tensor& z) const;
    // decode followed by ops::image_to_u8 (VaeImageProcessor.postprocess) on ctx's device: U8 [B, H, W, out_channels], on the
    // device of z (so a GPU pipeline downloads only the uint8 image).
    Tensor decode_to_u8(const Tensor& z) const;

private:
    // ResnetBlock2D without a time embedding: x + conv2(silu(norm2(conv1(silu(norm1(x)))))), the
    // skip through a 1x1 conv_shortcut when the channel count changes.
    struct Norm {
        Tensor weight, bias;  // F32 [C] on the device
    };
    struct Resnet {
        Norm norm1, norm2;
        ops::Conv2d conv1, conv2, conv_shortcut;  // conv_shortcut undefined without one
    };
    struct UpBlock {
        std::vector<Resnet> resnets;
        ops::Conv2d upsampler;  // upsamplers.0.conv after a nearest 2x upsample; undefined for the last block
    };
    // A parameter by checkpoint key: a host tensor in the compute dtype.
    using Getter = std::function<Tensor(const std::string&)>;

    AutoencoderKL(Config cfg, DType compute, const ops::Context& ctx);
    void load(const Getter& get);
    Tensor norm(const Norm& n, const Tensor& x, bool silu) const;
    Tensor resnet(const Resnet& r, Tensor x) const;
    Tensor attention(const Tensor& x) const;
    Tensor decode_on_device(const Tensor& z) const;  // z on ctx's device → NCHW image there
    bool on_host(const Tensor& t, const char* where) const;

    Config cfg_;
    DType dt_ = DType::F32;
    ops::Context ctx_;
    size_t bytes_ = 0;
    ops::Conv2d post_quant_conv_, conv_in_, conv_out_;
    Resnet mid_resnet0_, mid_resnet1_;
    Norm attn_norm_, conv_norm_out_;
    ops::Dense to_qkv_, to_out_;  // to_out is `to_out.0`
    std::vector<UpBlock> up_blocks_;
};

}  // namespace qdit::vae
