#include "models/vae/autoencoder_kl_qwenimage.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "io/files.h"
#include "ops/attention.h"
#include "ops/elementwise.h"
#include "ops/image.h"
#include "ops/norm.h"

using nlohmann::json;

namespace qdit::vae {

std::vector<int64_t> QwenImageVaeConfig::dims() const {
    std::vector<int64_t> d{base_dim * dim_mult.back()};
    for (auto it = dim_mult.rbegin(); it != dim_mult.rend(); ++it) d.push_back(base_dim * *it);
    return d;
}

int64_t QwenImageVaeConfig::up_in_dim(size_t i) const {
    const std::vector<int64_t> d = dims();
    return i == 0 ? d[0] : d[i] / 2;  // blocks after the first read the previous upsampler's halved channels
}

QwenImageVaeConfig QwenImageVaeConfig::from_json(const json& j, const std::string& where) {
    require_config_class(j, where, "AutoencoderKLQwenImage");
    using namespace config_limits;
    QwenImageVaeConfig c;
    read_config_field(j, where, "base_dim", &c.base_dim, {1, kWidth});
    read_config_field(j, where, "z_dim", &c.z_dim, {1, 1024});
    read_config_field(j, where, "dim_mult", &c.dim_mult, {1, 64});
    read_config_field(j, where, "num_res_blocks", &c.num_res_blocks, {0, kLayers});
    read_config_field(j, where, "attn_scales", &c.attn_scales);
    read_config_field(j, where, "temperal_downsample", &c.temperal_downsample);
    read_config_field(j, where, "dropout", &c.dropout, {0.0, 1.0});
    read_config_field(j, where, "input_channels", &c.input_channels, {1, 1024});
    read_config_field(j, where, "latents_mean", &c.latents_mean, {-1e6, 1e6}, 1024);
    read_config_field(j, where, "latents_std", &c.latents_std, {-1e6, 1e6}, 1024);

    for (int64_t m : c.dim_mult)
        require_config_field(c.base_dim * m <= kWidth, where, "dim_mult",
                             fmt::format("gives {} channels (base_dim {} x {}), more than {}", c.base_dim * m,
                                         c.base_dim, m, kWidth));
    require_config_field(c.temperal_downsample.size() + 1 == c.dim_mult.size(), where, "temperal_downsample",
                         fmt::format("has {} entries; the decoder needs one per upsampler, len(dim_mult) - 1 = {}",
                                     c.temperal_downsample.size(), c.dim_mult.size() - 1));
    for (size_t i = 1; i < c.dim_mult.size(); ++i)
        require_config_field(c.base_dim * c.dim_mult[c.dim_mult.size() - i] >= 2, where, "dim_mult",
                             "leaves an upsampler with fewer than 2 channels to halve");
    require_config_field(c.latents_mean.size() == size_t(c.z_dim), where, "latents_mean",
                         fmt::format("has {} entries, z_dim is {}", c.latents_mean.size(), c.z_dim));
    require_config_field(c.latents_std.size() == size_t(c.z_dim), where, "latents_std",
                         fmt::format("has {} entries, z_dim is {}", c.latents_std.size(), c.z_dim));
    for (double s : c.latents_std)
        require_config_field(s != 0 && std::isfinite(1.0f / float(s)), where, "latents_std",
                             fmt::format("has {}; every entry must be a non-zero number (latents are divided "
                                         "by 1 / std)",
                                         s));
    return c;
}

ModelSpec model_spec(const QwenImageVaeConfig& c) {
    ModelSpec s;
    s.class_name = "AutoencoderKLQwenImage";
    s.ignored_prefixes = {"encoder.", "quant_conv."};
    auto conv3d = [&](const std::string& name, int64_t in, int64_t out, int64_t k) {
        s.params.push_back({name + ".weight", {out, in, k, k, k}});
        s.params.push_back({name + ".bias", {out}});
    };
    auto conv2d = [&](const std::string& name, int64_t in, int64_t out, int64_t k) {
        s.params.push_back({name + ".weight", {out, in, k, k}});
        s.params.push_back({name + ".bias", {out}});
    };
    auto resnet = [&](const std::string& name, int64_t in, int64_t out) {
        s.params.push_back({name + ".norm1.gamma", {in, 1, 1, 1}});
        conv3d(name + ".conv1", in, out, 3);
        s.params.push_back({name + ".norm2.gamma", {out, 1, 1, 1}});
        conv3d(name + ".conv2", out, out, 3);
        if (in != out) conv3d(name + ".conv_shortcut", in, out, 1);
    };
    const std::vector<int64_t> d = c.dims();
    conv3d("post_quant_conv", c.z_dim, c.z_dim, 1);
    conv3d("decoder.conv_in", c.z_dim, d[0], 3);
    resnet("decoder.mid_block.resnets.0", d[0], d[0]);
    const std::string a = "decoder.mid_block.attentions.0";
    s.params.push_back({a + ".norm.gamma", {d[0], 1, 1}});
    conv2d(a + ".to_qkv", d[0], 3 * d[0], 1);
    conv2d(a + ".proj", d[0], d[0], 1);
    resnet("decoder.mid_block.resnets.1", d[0], d[0]);
    for (size_t i = 0; i + 1 < d.size(); ++i) {
        const std::string p = fmt::format("decoder.up_blocks.{}", i);
        const int64_t out = d[i + 1];
        for (int64_t r = 0; r <= c.num_res_blocks; ++r)
            resnet(fmt::format("{}.resnets.{}", p, r), r == 0 ? c.up_in_dim(i) : out, out);
        if (i + 2 < d.size()) {
            conv2d(p + ".upsamplers.0.resample.1", out, out / 2, 3);
            if (c.temporal_upsample(i)) {
                s.optional_params.push_back({p + ".upsamplers.0.time_conv.weight", {2 * out, out, 3, 1, 1}});
                s.optional_params.push_back({p + ".upsamplers.0.time_conv.bias", {2 * out}});
            }
        }
    }
    s.params.push_back({"decoder.norm_out.gamma", {d.back(), 1, 1, 1}});
    conv3d("decoder.conv_out", d.back(), c.input_channels, 3);
    return s;
}

AutoencoderKLQwenImage::AutoencoderKLQwenImage(const std::string& dir, DType compute, const ops::Context& ctx)
    : dt_(compute), ctx_(ctx) {
    const std::string config_path = dir + "/config.json";
    // The class is checked first, so a folder of another model is named as such.
    cfg_ = QwenImageVaeConfig::from_json(read_json_file(config_path), config_path);
    load(prepare_model(dir, QuantConfig{}));
}

AutoencoderKLQwenImage::AutoencoderKLQwenImage(const PreparedModel& m, DType compute, const ops::Context& ctx)
    : dt_(compute), ctx_(ctx) {
    cfg_ = QwenImageVaeConfig::from_json(m.folder.config, m.folder.config_path);
    load(m);
}

void AutoencoderKLQwenImage::load(const PreparedModel& m) {
    if (dt_ != DType::F32 && dt_ != DType::BF16)
        raise<ConfigError>("AutoencoderKLQwenImage: compute dtype must be F32 or BF16, not {}", dtype_name(dt_));
    if (m.spec.class_name != "AutoencoderKLQwenImage")
        raise<ConfigError>("{}: holds a {}, not an AutoencoderKLQwenImage", m.folder.config_path, m.spec.class_name);
    const Checkpoint& ck = *m.checkpoint;
    for (const ParamSpec& p : m.spec.params)
        if (!is_float(ck.info(p.name).dtype))
            raise<FormatError>("{}: tensor '{}' has dtype {}, expected a float type", ck.path(), p.name,
                               dtype_name(ck.info(p.name).dtype));
    auto conv3d = [&](const std::string& name) {
        ops::Conv2d c = ops::Conv2d::causal3d_single_frame(name, ck.get(name + ".weight"), ck.get(name + ".bias"),
                                                            dt_, ctx_);
        bytes_ += c.weight_bytes();
        return c;
    };
    auto conv2d = [&](const std::string& name, int64_t padding) {
        ops::Conv2d c(name, ck.get(name + ".weight"), ck.get(name + ".bias"), padding, dt_, ctx_);
        bytes_ += c.weight_bytes();
        return c;
    };
    // A gamma [C, 1, ...] rounded to the compute dtype as the reference holds it, then F32 [C].
    auto gamma = [&](const std::string& name) {
        const Tensor g = ck.get_as(name, dt_).to(DType::F32);
        bytes_ += g.nbytes();
        return ops::to_device(g.view({g.numel()}), ctx_, ops::Memory::Weight);
    };
    auto resnet = [&](const std::string& name) {
        ResBlock r;
        r.norm1 = gamma(name + ".norm1.gamma");
        r.conv1 = conv3d(name + ".conv1");
        r.norm2 = gamma(name + ".norm2.gamma");
        r.conv2 = conv3d(name + ".conv2");
        if (ck.contains(name + ".conv_shortcut.weight")) r.shortcut = conv3d(name + ".conv_shortcut");
        return r;
    };
    post_quant_conv_ = conv3d("post_quant_conv");
    conv_in_ = conv3d("decoder.conv_in");
    mid0_ = resnet("decoder.mid_block.resnets.0");
    const std::string a = "decoder.mid_block.attentions.0";
    attn_norm_ = gamma(a + ".norm.gamma");
    to_qkv_ = conv2d(a + ".to_qkv", 0);
    proj_ = conv2d(a + ".proj", 0);
    mid1_ = resnet("decoder.mid_block.resnets.1");
    const size_t n = cfg_.dim_mult.size();
    for (size_t i = 0; i < n; ++i) {
        const std::string p = fmt::format("decoder.up_blocks.{}", i);
        UpBlock ub;
        for (int64_t r = 0; r <= cfg_.num_res_blocks; ++r) ub.resnets.push_back(resnet(fmt::format("{}.resnets.{}", p, r)));
        if (i + 1 < n) ub.upsampler = conv2d(p + ".upsamplers.0.resample.1", 1);
        up_.push_back(std::move(ub));
    }
    norm_out_ = gamma("decoder.norm_out.gamma");
    conv_out_ = conv3d("decoder.conv_out");
}

Tensor AutoencoderKLQwenImage::resnet(const ResBlock& r, Tensor x) const {
    const float eps = QwenImageVaeConfig::kEps;
    Tensor h = r.conv1.forward(ops::channel_rms_norm(x, r.norm1, eps, true, ctx_), ctx_);
    h = ops::channel_rms_norm(h, r.norm2, eps, true, ctx_);  // dropout is the identity at inference
    Tensor out = r.shortcut.defined() ? r.shortcut.forward(x, ctx_) : std::move(x);
    r.conv2.forward_add(h, out, ctx_);
    return out;
}

Tensor AutoencoderKLQwenImage::attention(Tensor x) const {
    const int64_t B = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
    const Tensor qkv = to_qkv_.forward(ops::channel_rms_norm(x, attn_norm_, QwenImageVaeConfig::kEps, false, ctx_), ctx_);
    const Tensor o = ops::spatial_attention(qkv.view({B * H * W, 3 * C}), B, ctx_).view({B, H, W, C});
    proj_.forward_add(o, x, ctx_);  // x + proj(o)
    return x;
}

Tensor AutoencoderKLQwenImage::denormalize_latents(const Tensor& latents) const {
    if (!latents.defined() || latents.device().type != DeviceType::CPU || !is_float(latents.dtype()) ||
        latents.dim() != 4 || latents.size(1) != cfg_.z_dim)
        raise<ShapeError>("AutoencoderKLQwenImage::denormalize_latents: expects host float latents [B, {}, h, w], got {}",
                          cfg_.z_dim, latents.defined() ? shape_str(latents.shape()) : "none");
    const Tensor z = latents.to(DType::F32);
    Tensor y = Tensor::empty(z.shape(), DType::F32);
    const int64_t B = z.size(0), C = z.size(1), hw = z.size(2) * z.size(3);
    for (int64_t c = 0; c < C; ++c) {
        const float inv = round_to_dtype(1.0f / round_to_dtype(float(cfg_.latents_std[size_t(c)]), dt_), dt_);
        const float mean = round_to_dtype(float(cfg_.latents_mean[size_t(c)]), dt_);
        for (int64_t b = 0; b < B; ++b) {
            const float* src = z.data<float>() + (b * C + c) * hw;
            float* dst = y.data<float>() + (b * C + c) * hw;
            for (int64_t i = 0; i < hw; ++i)
                dst[i] = round_to_dtype(round_to_dtype(round_to_dtype(src[i], dt_) / inv, dt_) + mean, dt_);
        }
    }
    return y.to(dt_);
}

namespace {

// torch.clamp(out, -1, 1) in place: exact in any dtype; NaN stays NaN.
void clamp_unit(Tensor& image) {
    auto clamp = [](float v) { return v < -1.0f ? -1.0f : v > 1.0f ? 1.0f : v; };
    if (image.dtype() == DType::F32) {
        float* p = image.data<float>();
        for (int64_t i = 0; i < image.numel(); ++i) p[i] = clamp(p[i]);
    } else {
        uint16_t* p = image.data<uint16_t>();
        for (int64_t i = 0; i < image.numel(); ++i) p[i] = f32_to_bf16(clamp(bf16_to_f32(p[i])));
    }
}

}  // namespace

Tensor AutoencoderKLQwenImage::decode(const Tensor& z) const {
    Tensor image = decode_unclamped(z);
    clamp_unit(image);
    return image;
}

Tensor AutoencoderKLQwenImage::decode_tiled(const Tensor& z, const Tiling& t) const {
    const int64_t s = cfg_.spatial_scale();
    if (t.tile_sample <= 0 || t.stride_sample <= 0 || t.stride_sample > t.tile_sample || t.tile_sample % s ||
        t.stride_sample % s)
        raise<UsageError>("VAE tiling: tile {} and stride {} pixels must be multiples of {} with 0 < stride <= tile",
                          t.tile_sample, t.stride_sample, s);
    if (!z.defined() || z.dim() != 4) return decode(z);  // decode names what is wrong
    const int64_t B = z.size(0), C = z.size(1), h = z.size(2), w = z.size(3);
    const int64_t tile = t.tile_sample / s, stride = t.stride_sample / s;
    if (h <= tile && w <= tile) return decode(z);
    const Tensor zf = z.to(DType::F32);
    // Tile (i, j): its decoded pixels as F32 holding values of the compute dtype, [B, 3, th, tw].
    struct Tile {
        Tensor px;
        int64_t th = 0, tw = 0;
    };
    std::vector<std::vector<Tile>> rows;
    for (int64_t i = 0; i < h; i += stride) {
        rows.emplace_back();
        for (int64_t j = 0; j < w; j += stride) {
            const int64_t lh = std::min(tile, h - i), lw = std::min(tile, w - j);
            Tensor zt = Tensor::empty({B, C, lh, lw}, DType::F32);
            for (int64_t b = 0; b < B; ++b)
                for (int64_t c = 0; c < C; ++c)
                    for (int64_t y = 0; y < lh; ++y)
                        std::copy_n(zf.data<float>() + ((b * C + c) * h + i + y) * w + j, lw,
                                    zt.data<float>() + ((b * C + c) * lh + y) * lw);
            Tile td{decode_unclamped(zt).to(DType::F32), lh * s, lw * s};
            rows.back().push_back(std::move(td));
        }
    }
    const int64_t out_c = rows[0][0].px.size(1);
    // b = a·(1 − k/e) + b·(k/e) over the first e rows (vertical) or columns of b, a's last e.
    auto blend = [&](const Tile& a, Tile& b, int64_t extent, bool vertical) {
        const int64_t e = std::min({vertical ? a.th : a.tw, vertical ? b.th : b.tw, extent});
        for (int64_t bc = 0; bc < B * out_c; ++bc)
            for (int64_t k = 0; k < e; ++k) {
                const float wa = float(1.0 - double(k) / double(e)), wb = float(double(k) / double(e));
                const int64_t n = vertical ? b.tw : b.th;
                for (int64_t m = 0; m < n; ++m) {
                    float& dst = vertical ? b.px.data<float>()[(bc * b.th + k) * b.tw + m]
                                          : b.px.data<float>()[(bc * b.th + m) * b.tw + k];
                    const float src = vertical ? a.px.data<float>()[(bc * a.th + a.th - e + k) * a.tw + m]
                                               : a.px.data<float>()[(bc * a.th + m) * a.tw + a.tw - e + k];
                    dst = round_to_dtype(round_to_dtype(src * wa, dt_) + round_to_dtype(dst * wb, dt_), dt_);
                }
            }
    };
    const int64_t H = h * s, W = w * s, blend_px = t.tile_sample - t.stride_sample, keep = t.stride_sample;
    Tensor out = Tensor::empty({B, out_c, H, W}, DType::F32);
    for (size_t i = 0; i < rows.size(); ++i)
        for (size_t j = 0; j < rows[i].size(); ++j) {
            Tile& tl = rows[i][j];
            if (i > 0) blend(rows[i - 1][j], tl, blend_px, true);
            if (j > 0) blend(rows[i][j - 1], tl, blend_px, false);
            const int64_t y0 = int64_t(i) * keep, x0 = int64_t(j) * keep;
            const int64_t nh = std::min({keep, tl.th, H - y0}), nw = std::min({keep, tl.tw, W - x0});
            for (int64_t bc = 0; bc < B * out_c; ++bc)
                for (int64_t y = 0; y < nh; ++y)
                    std::copy_n(tl.px.data<float>() + (bc * tl.th + y) * tl.tw, nw,
                                out.data<float>() + (bc * H + y0 + y) * W + x0);
        }
    Tensor image = out.to(dt_);
    clamp_unit(image);
    return image;
}

Tensor AutoencoderKLQwenImage::decode_unclamped(const Tensor& z) const {
    if (!z.defined() || z.device().type != DeviceType::CPU || !is_float(z.dtype()) || z.dim() != 4 ||
        z.size(1) != cfg_.z_dim || z.size(0) < 1 || z.size(2) < 1 || z.size(3) < 1)
        raise<ShapeError>("AutoencoderKLQwenImage::decode: expects host float latents [B, {}, h, w], got {}",
                          cfg_.z_dim, z.defined() ? shape_str(z.shape()) : "none");
    Tensor x = ops::to_channels_last(ops::to_device(z.to(dt_), ctx_), dt_, ctx_);
    x = post_quant_conv_.forward(x, ctx_);
    x = conv_in_.forward(x, ctx_);
    x = resnet(mid0_, std::move(x));
    x = attention(std::move(x));
    x = resnet(mid1_, std::move(x));
    for (const UpBlock& ub : up_) {
        for (const ResBlock& r : ub.resnets) x = resnet(r, std::move(x));
        if (ub.upsampler.defined()) x = ub.upsampler.forward(ops::upsample_nearest_2x(x, ctx_), ctx_);
    }
    x = conv_out_.forward(ops::channel_rms_norm(x, norm_out_, QwenImageVaeConfig::kEps, true, ctx_), ctx_);
    return ops::to_host(ops::to_channels_first(x, ctx_), ctx_);
}

}  // namespace qdit::vae
