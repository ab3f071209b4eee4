// diffusers' AutoencoderKLQwenImage decoder (the Qwen-Image VAE, a Wan-2.1-style causal 3-D VAE)
// for one frame, as text-to-image runs it, written once over the op layer: the CPU (F32 or BF16)
// and, once every op it uses has a CUDA kernel, a GPU. Only the decode path is built:
// post_quant_conv and `decoder.*`; the encoder, quant_conv and the upsamplers' time_conv weights in
// the checkpoint are accepted and never read.
//
// One frame: each causal 3-D convolution sees its single frame behind kt − 1 zero frames (the first
// chunk of diffusers' cached decode has no cache), so it is the 2-D convolution with the kernel's
// last temporal slice (ops::Conv2d::causal3d_single_frame); an upsample3d block's time_conv is
// skipped on the first chunk, which leaves a 2-D nearest upsampling and convolution. Activations
// run channels-last ([B, H, W, C]) inside, as the FLUX AutoencoderKL's do; the public tensors are
// NCHW like torch's.
//
// Decoder: post_quant_conv (1x1) → conv_in (3x3) → mid block (resnet, single-head spatial attention,
// resnet) → up blocks (num_res_blocks + 1 resnets, then 2x nearest upsampling and a 3x3 conv halving
// the channels, except the last block) → RMS norm, SiLU, conv_out (3x3) → clamp to [−1, 1].
// Resnet: shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x)))))); the norms are channel RMS norms
// (ops::channel_rms_norm).
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "models/loader.h"
#include "models/model_spec.h"
#include "ops/context.h"
#include "ops/conv.h"

namespace qdit::vae {

// The fields of AutoencoderKLQwenImage's config.json; absent (or null) fields take diffusers'
// constructor defaults (which are the published Qwen-Image values).
struct QwenImageVaeConfig {
    int64_t base_dim = 96;
    int64_t z_dim = 16;
    std::vector<int64_t> dim_mult{1, 2, 4, 4};
    int64_t num_res_blocks = 2;
    std::vector<double> attn_scales;  // places attention blocks in the encoder only; the decoder ignores it
    std::vector<bool> temperal_downsample{false, true, true};  // (sic, diffusers' spelling)
    double dropout = 0.0;  // the identity at inference
    int64_t input_channels = 3;  // the image channels (conv_out's output)
    std::vector<double> latents_mean{-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                                     0.4134,  -0.0715, 0.5517,  -0.3632, -0.1922, -0.9497, 0.2503,  -0.2921};
    std::vector<double> latents_std{2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                                    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160};

    static constexpr float kEps = 1e-12f;  // F.normalize's eps in every RMS norm

    // The decoder's channel plan: dims[0] for conv_in and the mid block, up block i turns
    // in_dim(i) channels into dims[i + 1].
    std::vector<int64_t> dims() const;
    int64_t up_in_dim(size_t i) const;
    // Image pixels per latent pixel along each axis: 2^(up blocks − 1).
    int64_t spatial_scale() const { return int64_t(1) << (dim_mult.size() - 1); }
    // Whether up block i's upsampler is an upsample3d (it then has a time_conv) or an upsample2d.
    bool temporal_upsample(size_t i) const { return temperal_downsample[temperal_downsample.size() - 1 - i]; }

    // ConfigError naming `where` and the field for anything this decoder cannot run or that
    // diffusers would build inconsistently (temperal_downsample not one entry per upsampler,
    // latents_mean / latents_std not z_dim entries, a zero std...).
    static QwenImageVaeConfig from_json(const nlohmann::json& j, const std::string& where);
};

// Every tensor the checkpoint holds for the decoder, named like the checkpoint keys: params (what
// decode reads), optional_params (the upsample3d time_conv weights, unused for one frame), and the
// ignored prefixes "encoder." and "quant_conv.". No Linear layers: nothing is quantized.
ModelSpec model_spec(const QwenImageVaeConfig& c);

class AutoencoderKLQwenImage {
public:
    // A VAE folder (config.json + diffusion_pytorch_model.safetensors, or shards), opened and
    // checked as prepare_model does (config, then every key and shape before any weight is read).
    // Activations run in `compute` (F32 or BF16); weights of any float dtype are rounded to it, as
    // from_pretrained(torch_dtype=...) does, and placed on ctx's device.
    AutoencoderKLQwenImage(const std::string& dir, DType compute = DType::F32, const ops::Context& ctx = {});
    AutoencoderKLQwenImage(const PreparedModel& m, DType compute = DType::F32, const ops::Context& ctx = {});

    const QwenImageVaeConfig& config() const { return cfg_; }
    DType compute_dtype() const { return dt_; }
    size_t weight_bytes() const { return bytes_; }  // on the device

    // What QwenImagePipeline does to its final (unpacked) latents before decoding, on the host:
    // latents [B, z_dim, h, w] (any float dtype) → z / (1 / std) + mean per channel in the compute
    // dtype, with torch's roundings: z = dt(latents); inv = dt(1 / dt(std)); dt(dt(z / inv) + dt(mean)).
    Tensor denormalize_latents(const Tensor& latents) const;

    // vae.decode(z)[:, :, 0] for one frame: z [B, z_dim, h, w] host, any float dtype, already
    // denormalized (the VAE's own latent space, as vae.decode takes it) → image [B, input_channels,
    // h·s, w·s] on the host in the compute dtype, clamped to [−1, 1] (NaN stays NaN), s =
    // spatial_scale(). BF16 values are what torch's bf16 decode holds, so a postprocess that rounds
    // where torch does (ops::image_to_u8) can follow.
    //
    // Past the mid block every layer is local (3x3 convolutions, per-pixel RMS norms, nearest
    // upsampling), so a large latent is decoded in bands of latent rows: each band runs the up
    // blocks over its rows plus the context its convolutions read (the halo, cut down at each
    // block to what the rest of the decoder still needs) and keeps its own rows of the image. Every
    // pixel is computed from the same inputs by the same ops as in one piece, so the image is the
    // same (on the CPU bit for bit; cuDNN may pick another kernel for a band's shape, which can
    // move a last bit), and the activations held are those of one band. decode(z) bands when the
    // largest tensor of the up blocks in one piece would exceed kBandBytes on a GPU (whose memory
    // is scarce; the bands cost a few percent of the decode there), kHostBandBytes on the CPU
    // (where the halos' extra work costs more than memory: a 1024x1024 image stays one piece).
    Tensor decode(const Tensor& z) const { return decode(z, 0); }
    // band_rows: latent rows per band (0: chosen as decode(z) does; h or more: one piece). Every band
    // runs the same shapes (the first and the last take their context from one side).
    Tensor decode(const Tensor& z, int64_t band_rows) const;
    static constexpr size_t kBandBytes = size_t(128) << 20, kHostBandBytes = size_t(1) << 30;
    // The latent rows per band decode(z) uses for a latent of h × w (h: one piece).
    int64_t band_rows(int64_t batch, int64_t h, int64_t w) const;

    // Tiled decoding (diffusers' enable_tiling / tiled_decode, 0.42.1): a latent wider or taller than
    // one tile (tile_sample / 8 latent pixels) is cut into tiles of that size every stride_sample / 8
    // latent pixels (the last ones shorter), each decoded alone, then each tile's first
    // tile − stride pixels are blended linearly with the tile above and the tile to the left
    // (b = a·(1 − y/e) + b·(y/e), in place, above first, rounded to the compute dtype as torch
    // does) and the tiles' first stride × stride pixels laid side by side. diffusers does not
    // clamp this path; here the result is clamped to [−1, 1] like decode's (the postprocess
    // clamps anyway, so the image is the same). A latent within one tile is decode(z). The
    // memory of the decode is that of one tile. tile_sample and stride_sample: multiples of
    // 8, 0 < stride_sample <= tile_sample.
    struct Tiling {
        int64_t tile_sample = 256, stride_sample = 192;  // diffusers' defaults
    };
    Tensor decode_tiled(const Tensor& z, const Tiling& tiling) const;
    Tensor decode_tiled(const Tensor& z) const { return decode_tiled(z, Tiling{}); }

private:
    Tensor decode_unclamped(const Tensor& z, int64_t band_rows) const;  // decode without the clamp, checks included
    // The up blocks, norm_out and conv_out for the band of latent rows [r0, r1), r1 = min(h, r0 +
    // rows), of the mid block's output x [B, h, w, C] (channels-last, on the device; left as it is
    // unless the band is the whole latent): the image rows [r0·s, r1·s), [B, (r1 − r0)·s, w·s, 3]
    // channels-last. halo(i): the context rows block i and the layers after it read.
    Tensor up_path(Tensor x, int64_t r0, int64_t rows, int64_t h) const;
    int64_t halo(size_t block) const;
    struct ResBlock {
        Tensor norm1, norm2;  // gammas, F32 [C] on the device
        ops::Conv2d conv1, conv2, shortcut;
    };
    struct UpBlock {
        std::vector<ResBlock> resnets;
        ops::Conv2d upsampler;  // upsamplers.0.resample.1, after the 2x upsampling; undefined for the last block
    };
    void load(const PreparedModel& m);
    Tensor resnet(const ResBlock& r, Tensor x) const;
    Tensor attention(Tensor x) const;

    QwenImageVaeConfig cfg_;
    DType dt_ = DType::F32;
    ops::Context ctx_;
    ops::Conv2d post_quant_conv_, conv_in_, conv_out_;
    ResBlock mid0_, mid1_;
    Tensor attn_norm_;
    ops::Conv2d to_qkv_, proj_;
    std::vector<UpBlock> up_;
    Tensor norm_out_;
    size_t bytes_ = 0;
};

}  // namespace qdit::vae
