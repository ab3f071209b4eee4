#include "models/vae/autoencoder_kl.h"

#include <cmath>
#include <filesystem>
#include <map>
#include <random>

#include "core/error.h"
#include "io/files.h"
#include "io/safetensors.h"
#include "ops/attention.h"
#include "ops/elementwise.h"
#include "ops/image.h"
#include "ops/norm.h"

using nlohmann::json;

namespace qdit::vae {

namespace {

// The decoder's channel plan: conv_in and the mid block work at the widest
// channel count, up block i turns rev[i−1] (rev[0] for i = 0) into rev[i].
std::vector<int64_t> reversed_channels(const Config& c) {
    return {c.block_out_channels.rbegin(), c.block_out_channels.rend()};
}
int64_t up_block_in(const std::vector<int64_t>& rev, size_t i) { return rev[i == 0 ? 0 : i - 1]; }

}  // namespace

Config Config::from_json(const json& j, const std::string& where) {
    require_config_class(j, where, "AutoencoderKL");
    using namespace config_limits;
    Config c;
    read_config_field(j, where, "out_channels", &c.out_channels, {1, 1024});
    read_config_field(j, where, "latent_channels", &c.latent_channels, {1, 1024});
    read_config_field(j, where, "block_out_channels", &c.block_out_channels, {1, kWidth});
    read_config_field(j, where, "up_block_types", &c.up_block_types);
    read_config_field(j, where, "layers_per_block", &c.layers_per_block, {0, kLayers});
    read_config_field(j, where, "norm_num_groups", &c.norm_num_groups, {1, kWidth});
    read_config_field(j, where, "act_fn", &c.act_fn);
    read_config_field(j, where, "scaling_factor", &c.scaling_factor, {-1e6, 1e6});
    read_config_field(j, where, "shift_factor", &c.shift_factor, {-1e6, 1e6});
    read_config_field(j, where, "use_post_quant_conv", &c.use_post_quant_conv);
    read_config_field(j, where, "mid_block_add_attention", &c.mid_block_add_attention);

    for (int64_t ch : c.block_out_channels)  // 1 to 16 of them: the scale 2^(n−1) fits
        require_config_field(ch % c.norm_num_groups == 0, where, "block_out_channels",
                             fmt::format("has {}, which is not a multiple of norm_num_groups ({})", ch,
                                         c.norm_num_groups));
    require_config_field(c.up_block_types.size() == c.block_out_channels.size(), where, "up_block_types",
                         fmt::format("has {} entries but block_out_channels has {}", c.up_block_types.size(),
                                     c.block_out_channels.size()));
    for (const std::string& t : c.up_block_types)
        require_config_field(t == "UpDecoderBlock2D", where, "up_block_types",
                             fmt::format("has '{}'; only UpDecoderBlock2D is supported", t));
    require_config_field(c.act_fn == "silu" || c.act_fn == "swish", where, "act_fn",
                         fmt::format("is '{}'; only silu (or its alias swish) is supported", c.act_fn));
    require_config_field(std::isfinite(c.scaling_factor) && c.scaling_factor != 0, where, "scaling_factor",
                         "must be a finite non-zero number");
    require_config_field(std::isfinite(c.shift_factor), where, "shift_factor", "must be finite or null");
    return c;
}

std::vector<ParamSpec> decoder_params(const Config& c) {
    std::vector<ParamSpec> ps;
    auto conv = [&](const std::string& name, int64_t in, int64_t out, int64_t k) {
        ps.push_back({name + ".weight", {out, in, k, k}});
        ps.push_back({name + ".bias", {out}});
    };
    auto norm = [&](const std::string& name, int64_t n) {
        ps.push_back({name + ".weight", {n}});
        ps.push_back({name + ".bias", {n}});
    };
    auto resnet = [&](const std::string& name, int64_t in, int64_t out) {
        norm(name + ".norm1", in);
        conv(name + ".conv1", in, out, 3);
        norm(name + ".norm2", out);
        conv(name + ".conv2", out, out, 3);
        if (in != out) conv(name + ".conv_shortcut", in, out, 1);
    };
    const std::vector<int64_t> rev = reversed_channels(c);
    if (c.use_post_quant_conv) conv("post_quant_conv", c.latent_channels, c.latent_channels, 1);
    conv("decoder.conv_in", c.latent_channels, rev[0], 3);
    resnet("decoder.mid_block.resnets.0", rev[0], rev[0]);
    if (c.mid_block_add_attention) {
        const std::string a = "decoder.mid_block.attentions.0";
        norm(a + ".group_norm", rev[0]);
        for (const char* m : {".to_q", ".to_k", ".to_v", ".to_out.0"}) {
            ps.push_back({a + m + ".weight", {rev[0], rev[0]}});
            ps.push_back({a + m + ".bias", {rev[0]}});
        }
    }
    resnet("decoder.mid_block.resnets.1", rev[0], rev[0]);
    for (size_t i = 0; i < rev.size(); ++i) {
        const std::string p = fmt::format("decoder.up_blocks.{}", i);
        for (int64_t j = 0; j <= c.layers_per_block; ++j)
            resnet(fmt::format("{}.resnets.{}", p, j), j == 0 ? up_block_in(rev, i) : rev[i], rev[i]);
        if (i + 1 != rev.size()) conv(p + ".upsamplers.0.conv", rev[i], rev[i], 3);
    }
    norm("decoder.conv_norm_out", rev.back());
    conv("decoder.conv_out", rev.back(), c.out_channels, 3);
    return ps;
}

AutoencoderKL::AutoencoderKL(Config cfg, DType compute, const ops::Context& ctx)
    : cfg_(std::move(cfg)), dt_(compute), ctx_(ctx) {}

AutoencoderKL::AutoencoderKL(const std::string& dir, DType compute, const ops::Context& ctx) : dt_(compute), ctx_(ctx) {
    const std::string config_path = (std::filesystem::path(dir) / "config.json").string();
    cfg_ = Config::from_json(read_json_file(config_path), config_path);
    const Checkpoint ck(dir);
    for (const ParamSpec& p : decoder_params(cfg_)) {
        if (!ck.contains(p.name))
            raise<ShapeError>("{}: missing tensor '{}', which the AutoencoderKL decoder described "
                              "by config.json needs (do the config and the weights belong together?)",
                              ck.path(), p.name);
        const TensorInfo& info = ck.info(p.name);
        if (info.shape != p.shape || !is_float(info.dtype))
            raise<ShapeError>("{}: tensor '{}' is {} {}, but config.json implies a float {}",
                              ck.path(), p.name, dtype_name(info.dtype), shape_str(info.shape),
                              shape_str(p.shape));
    }
    // As from_pretrained(torch_dtype=...): every parameter rounded to the compute dtype.
    load([&](const std::string& name) { return ck.get_as(name, dt_); });
}

AutoencoderKL AutoencoderKL::random(const Config& cfg, DType compute, uint64_t seed, const ops::Context& ctx) {
    std::map<std::string, Shape> shapes;
    for (const ParamSpec& p : decoder_params(cfg)) shapes[p.name] = p.shape;
    std::mt19937_64 rng(seed);
    AutoencoderKL m(cfg, compute, ctx);
    m.load([&](const std::string& name) {
        const auto it = shapes.find(name);
        if (it == shapes.end()) raise<Error>("AutoencoderKL::random: no parameter '{}'", name);
        const Shape& shape = it->second;
        Tensor t = Tensor::empty(shape, DType::F32);
        const bool is_weight = name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0;
        float mean = 0.f, stddev = 0.02f;
        if (is_weight && shape.size() >= 2) {
            stddev = float(1.0 / std::sqrt(double(shape_numel(shape) / shape[0])));  // 1 / sqrt(fan_in)
        } else if (is_weight) {
            mean = 1.f;  // a norm's scale
        }
        std::normal_distribution<float> dist(mean, stddev);
        float* p = t.data<float>();
        for (int64_t i = 0; i < t.numel(); ++i) p[i] = dist(rng);
        return t.to(compute);
    });
    return m;
}

// Reads the parameters in a fixed order, which random() draws them in (a convolution's bias before
// its weight: the order of the GPU class this decoder replaced, so benchmarks keep their weights).
void AutoencoderKL::load(const Getter& get) {
    if (dt_ != DType::F32 && dt_ != DType::BF16)
        raise<ConfigError>("AutoencoderKL: compute dtype must be F32 or BF16, not {}", dtype_name(dt_));
    auto conv = [&](const std::string& name, int64_t k) {
        const Tensor b = get(name + ".bias");
        ops::Conv2d c(name, get(name + ".weight"), b, k / 2, dt_, ctx_);
        bytes_ += c.weight_bytes();
        return c;
    };
    auto norm = [&](const std::string& name) {
        Norm n;
        n.weight = ops::to_device(get(name + ".weight").to(DType::F32), ctx_, ops::Memory::Weight);
        n.bias = ops::to_device(get(name + ".bias").to(DType::F32), ctx_, ops::Memory::Weight);
        bytes_ += n.weight.nbytes() + n.bias.nbytes();
        return n;
    };
    auto resnet = [&](const std::string& name, bool shortcut) {
        Resnet r;
        r.norm1 = norm(name + ".norm1");
        r.conv1 = conv(name + ".conv1", 3);
        r.norm2 = norm(name + ".norm2");
        r.conv2 = conv(name + ".conv2", 3);
        if (shortcut) r.conv_shortcut = conv(name + ".conv_shortcut", 1);
        return r;
    };
    auto dense = [&](const std::string& name, const Tensor& w, const Tensor& b) {
        ops::Dense d(name, w, b, dt_, ctx_);
        bytes_ += d.weight_bytes();
        return d;
    };
    const std::vector<int64_t> rev = reversed_channels(cfg_);
    if (cfg_.use_post_quant_conv) post_quant_conv_ = conv("post_quant_conv", 1);
    conv_in_ = conv("decoder.conv_in", 3);
    mid_resnet0_ = resnet("decoder.mid_block.resnets.0", false);
    if (cfg_.mid_block_add_attention) {
        const std::string a = "decoder.mid_block.attentions.0";
        const int64_t C = rev[0];
        attn_norm_ = norm(a + ".group_norm");
        // to_q | to_k | to_v as one [3C, C] weight (values already in the compute dtype:
        // concatenating is exact, and each output column is its own layer's).
        Tensor w = Tensor::empty({3 * C, C}, DType::F32), b = Tensor::empty({3 * C}, DType::F32);
        const char* parts[] = {".to_q", ".to_k", ".to_v"};
        for (int i = 0; i < 3; ++i) {
            const Tensor wi = get(a + parts[i] + ".weight").to(DType::F32);
            const Tensor bi = get(a + parts[i] + ".bias").to(DType::F32);
            std::copy(wi.data<float>(), wi.data<float>() + C * C, w.data<float>() + i * C * C);
            std::copy(bi.data<float>(), bi.data<float>() + C, b.data<float>() + i * C);
        }
        to_qkv_ = dense(a + ".to_q|to_k|to_v", w, b);
        const Tensor wo = get(a + ".to_out.0.weight");
        to_out_ = dense(a + ".to_out.0", wo, get(a + ".to_out.0.bias"));
    }
    mid_resnet1_ = resnet("decoder.mid_block.resnets.1", false);
    for (size_t i = 0; i < rev.size(); ++i) {
        const std::string p = fmt::format("decoder.up_blocks.{}", i);
        UpBlock ub;
        for (int64_t j = 0; j <= cfg_.layers_per_block; ++j)
            ub.resnets.push_back(resnet(fmt::format("{}.resnets.{}", p, j), j == 0 && up_block_in(rev, i) != rev[i]));
        if (i + 1 != rev.size()) ub.upsampler = conv(p + ".upsamplers.0.conv", 3);
        up_blocks_.push_back(std::move(ub));
    }
    conv_norm_out_ = norm("decoder.conv_norm_out");
    conv_out_ = conv("decoder.conv_out", 3);
}

Tensor AutoencoderKL::norm(const Norm& n, const Tensor& x, bool silu) const {
    return ops::group_norm(x, n.weight, n.bias, cfg_.norm_num_groups, Config::kEps, silu, ctx_);
}

// Consumes x: without a shortcut the sum is accumulated into x's buffer, so x must not be shared.
Tensor AutoencoderKL::resnet(const Resnet& r, Tensor x) const {
    Tensor h = r.conv1.forward(norm(r.norm1, x, true), ctx_);
    h = norm(r.norm2, h, true);  // dropout is the identity at inference
    Tensor out = r.conv_shortcut.defined() ? r.conv_shortcut.forward(x, ctx_) : std::move(x);
    r.conv2.forward_add(h, out, ctx_);  // BF16: conv2's output rounded before the add, as torch
    return out;
}

Tensor AutoencoderKL::attention(const Tensor& x) const {
    const int64_t B = x.size(0), L = x.size(1) * x.size(2), C = x.size(3);
    const Tensor qkv = to_qkv_.forward(norm(attn_norm_, x, false).view({B * L, C}), ctx_);
    Tensor y = to_out_.forward(ops::spatial_attention(qkv, B, ctx_), ctx_).view(x.shape());
    ops::add_inplace(y, x, ctx_);
    return y;
}

Tensor AutoencoderKL::decode_on_device(const Tensor& z) const {
    Tensor x = ops::to_channels_last(z, dt_, ctx_);
    if (post_quant_conv_.defined()) x = post_quant_conv_.forward(x, ctx_);
    x = conv_in_.forward(x, ctx_);
    x = resnet(mid_resnet0_, std::move(x));
    if (to_qkv_.defined()) x = attention(x);
    x = resnet(mid_resnet1_, std::move(x));
    for (const UpBlock& ub : up_blocks_) {
        for (const Resnet& r : ub.resnets) x = resnet(r, std::move(x));
        if (ub.upsampler.defined()) {
            const Tensor u = ops::upsample_nearest_2x(x, ctx_);
            x = Tensor();  // freed before the convolution allocates
            x = ub.upsampler.forward(u, ctx_);
        }
    }
    x = conv_out_.forward(norm(conv_norm_out_, x, true), ctx_);
    return ops::to_channels_first(x, ctx_);
}

// Whether t is a host tensor (else it must be on the context's device, F32 or BF16); ShapeError
// naming `where` for anything else.
bool AutoencoderKL::on_host(const Tensor& t, const char* where) const {
    const bool host = t.defined() && t.device().type == DeviceType::CPU;
    if (!t.defined() || !is_float(t.dtype()) || (!host && !(t.device() == ctx_.device)) ||
        (!host && t.dtype() != DType::F32 && t.dtype() != DType::BF16))
        raise<ShapeError>("AutoencoderKL::{}: expects float latents on the host or F32 / BF16 ones on {}, got {} {}{}",
                          where, ctx_.device.str(), t.defined() ? dtype_name(t.dtype()) : "none",
                          t.defined() ? shape_str(t.shape()) : "", t.defined() ? " on " + t.device().str() : "");
    return host;
}

Tensor AutoencoderKL::unscale_latents(const Tensor& latents) const {
    const bool host = on_host(latents, "unscale_latents");
    // For BF16 torch adds the shift rounded to bf16.
    const float scale = float(cfg_.scaling_factor), shift = round_to_dtype(float(cfg_.shift_factor), dt_);
    return ops::div_add(latents, scale, shift, dt_, host ? ops::Context{} : ctx_);
}

Tensor AutoencoderKL::decode(const Tensor& z) const {
    const bool host = on_host(z, "decode");
    if (z.dim() != 4 || z.size(1) != cfg_.latent_channels || z.size(0) == 0 || z.size(2) == 0 || z.size(3) == 0)
        raise<ShapeError>("AutoencoderKL::decode: expects latents [B, {}, h, w], got {}", cfg_.latent_channels,
                          shape_str(z.shape()));
    // Host latents are converted on the host, as the CPU decoder always did.
    if (!host) return decode_on_device(z);
    return ops::to_host(decode_on_device(ops::to_device(z.to(dt_), ctx_)), ctx_);
}

Tensor AutoencoderKL::decode_to_u8(const Tensor& z) const {
    const bool host = on_host(z, "decode_to_u8");
    const Tensor image = ops::image_to_u8(decode(host ? ops::to_device(z.to(dt_), ctx_) : z), ctx_);
    return host ? ops::to_host(image, ctx_) : image;
}

}  // namespace qdit::vae
