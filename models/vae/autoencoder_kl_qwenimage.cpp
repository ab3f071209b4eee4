#include "models/vae/autoencoder_kl_qwenimage.h"

#include <algorithm>
#include <cmath>
#include <cstring>
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

Tensor AutoencoderKLQwenImage::decode(const Tensor& z, int64_t band_rows) const {
    Tensor image = decode_unclamped(z, band_rows);
    clamp_unit(image);
    return image;
}

int64_t AutoencoderKLQwenImage::band_rows(int64_t batch, int64_t h, int64_t w) const {
    // The largest tensor of the up blocks per latent row: block i (2^i image rows per latent row,
    // each 2^i·w wide) holds its input and output channels; its 2x upsampling makes a tensor of its
    // output channels at twice that.
    const std::vector<int64_t> d = cfg_.dims();
    size_t per_row = 0;
    for (size_t i = 0; i < up_.size(); ++i) {
        const size_t px = size_t(batch) * size_t(w) << (2 * i);
        per_row = std::max(per_row, px * size_t(std::max(cfg_.up_in_dim(i), d[i + 1])));
        if (up_[i].upsampler.defined()) per_row = std::max(per_row, 4 * px * size_t(d[i + 1]));
    }
    per_row *= dtype_size(dt_);
    const size_t budget = ctx_.cuda() ? kBandBytes : kHostBandBytes;
    const int64_t bands = int64_t((per_row * size_t(h) + budget - 1) / budget);
    return bands <= 1 ? h : (h + bands - 1) / bands;
}

// Context rows (at block i's scale) that block i and the layers after it read beyond the rows they
// produce: one per 3x3 convolution (every convolution of the up path is 3x3 or 1x1, model_spec),
// halved (rounded up) back through each 2x nearest upsampling.
int64_t AutoencoderKLQwenImage::halo(size_t block) const {
    int64_t need = 1;  // conv_out
    for (size_t i = up_.size(); i-- > block;) {
        if (up_[i].upsampler.defined()) need = (need + 2) / 2;  // its conv (+1), then the upsampling
        need += 2 * int64_t(up_[i].resnets.size());
    }
    return need;
}

namespace {

// Rows [a, b) along H of x [B, H, W, C] on ctx's device: a copy with `copy` (the resnets add into
// their input in place), else x itself, a view for one item or a copy.
Tensor rows_of(const Tensor& x, int64_t a, int64_t b, const ops::Context& ctx, bool copy = false) {
    const int64_t B = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
    if (!copy && a == 0 && b == H) return x;
    if (!copy && B == 1) return x.view({H, W * C}).slice_rows(a, b).view({1, b - a, W, C});
    Tensor out = ops::empty({B, b - a, W, C}, x.dtype(), ctx);
    Tensor dst = out.view({B * (b - a), W * C});
    const Tensor src = x.view({B * H, W * C});
    for (int64_t i = 0; i < B; ++i) ops::copy_rows(dst, i * (b - a), src, i * H + a, b - a, ctx);
    return out;
}

}  // namespace

Tensor AutoencoderKLQwenImage::up_path(Tensor x, int64_t r0, int64_t rows, int64_t h) const {
    const float eps = QwenImageVaeConfig::kEps;
    int64_t scale = 1, start = 0;  // x holds the rows [start, start + x.size(1)) at `scale`
    for (size_t i = 0; i < up_.size(); ++i) {
        // The window every band runs at this block: its rows and the context, as many rows for each
        // band (moved inwards at the latent's edges, where the zero padding is the decoder's own).
        const int64_t H = h * scale, n = std::min(H, rows * scale + 2 * halo(i));
        const int64_t a = std::clamp(r0 * scale - halo(i), int64_t(0), H - n);
        QDIT_CHECK(a >= start && a + n <= start + x.size(1), "VAE band: rows [{}, {}) not within [{}, {})", a, a + n,
                   start, start + x.size(1));
        // The first window of a band is copied: the mid block's output serves every band.
        x = rows_of(x, a - start, a - start + n, ctx_, i == 0 && rows < h);
        start = a;
        const UpBlock& ub = up_[i];
        for (const ResBlock& r : ub.resnets) x = resnet(r, std::move(x));
        if (ub.upsampler.defined()) {
            x = ub.upsampler.forward(ops::upsample_nearest_2x(x, ctx_), ctx_);
            scale *= 2;
            start *= 2;
        }
    }
    x = conv_out_.forward(ops::channel_rms_norm(x, norm_out_, eps, true, ctx_), ctx_);
    const int64_t r1 = std::min(h, r0 + rows);
    return rows_of(x, r0 * scale - start, r1 * scale - start, ctx_);
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
            Tile td{decode_unclamped(zt, 0).to(DType::F32), lh * s, lw * s};
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

Tensor AutoencoderKLQwenImage::decode_unclamped(const Tensor& z, int64_t band_rows) const {
    if (!z.defined() || z.device().type != DeviceType::CPU || !is_float(z.dtype()) || z.dim() != 4 ||
        z.size(1) != cfg_.z_dim || z.size(0) < 1 || z.size(2) < 1 || z.size(3) < 1)
        raise<ShapeError>("AutoencoderKLQwenImage::decode: expects host float latents [B, {}, h, w], got {}",
                          cfg_.z_dim, z.defined() ? shape_str(z.shape()) : "none");
    if (band_rows < 0) raise<UsageError>("AutoencoderKLQwenImage::decode: band_rows {} is negative", band_rows);
    Tensor x = ops::to_channels_last(ops::to_device(z.to(dt_), ctx_), dt_, ctx_);
    x = post_quant_conv_.forward(x, ctx_);
    x = conv_in_.forward(x, ctx_);
    x = resnet(mid0_, std::move(x));
    x = attention(std::move(x));
    x = resnet(mid1_, std::move(x));
    const int64_t B = z.size(0), h = z.size(2), w = z.size(3);
    const int64_t rows = std::min(h, band_rows > 0 ? band_rows : this->band_rows(B, h, w));
    if (rows == h) return ops::to_host(ops::to_channels_first(up_path(std::move(x), 0, h, h), ctx_), ctx_);
    // Each band's image rows, laid into the NCHW image on the host.
    const int64_t s = cfg_.spatial_scale(), C = cfg_.input_channels, H = h * s, W = w * s;
    Tensor image = Tensor::empty({B, C, H, W}, dt_);
    const size_t esz = dtype_size(dt_);
    for (int64_t r0 = 0; r0 < h; r0 += rows) {
        const Tensor band = ops::to_host(ops::to_channels_first(up_path(x, r0, rows, h), ctx_), ctx_);
        const int64_t n = band.size(2);  // (min(h, r0 + rows) − r0)·s image rows
        for (int64_t bc = 0; bc < B * C; ++bc)
            std::memcpy(static_cast<uint8_t*>(image.raw()) + (size_t(bc * H + r0 * s) * W) * esz,
                        static_cast<const uint8_t*>(band.raw()) + size_t(bc * n * W) * esz, size_t(n * W) * esz);
    }
    return image;
}

}  // namespace qdit::vae
