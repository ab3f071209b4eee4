#include "models/vae/autoencoder_kl.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "core/error.h"
#include "core/threads.h"
#include "io/files.h"
#include "io/safetensors.h"
#include "backend/cpu/attention.h"
#include "backend/cpu/elementwise.h"
#include "backend/cpu/layout.h"
#include "backend/cpu/upsample.h"

using nlohmann::json;

namespace qdit::vae {

namespace {

void require(bool ok, const std::string& where, const char* field, const std::string& what) {
    if (!ok) raise<ConfigError>("{}: field '{}' {}", where, field, what);
}

// [B, C, H, W] (any float dtype) → [B, H, W, C] in `dt`, and back.
Tensor to_channels_last(const Tensor& x, DType dt) { return cpu::nchw_to_nhwc(x, dt); }
Tensor to_channels_first(const Tensor& x) { return cpu::nhwc_to_nchw(x); }

// The decoder's channel plan: conv_in and the mid block work at the widest
// channel count, up block i turns rev[i−1] (rev[0] for i = 0) into rev[i].
std::vector<int64_t> reversed_channels(const Config& c) {
    return {c.block_out_channels.rbegin(), c.block_out_channels.rend()};
}
int64_t up_block_in(const std::vector<int64_t>& rev, size_t i) { return rev[i == 0 ? 0 : i - 1]; }

// Reads tensors already checked against decoder_params().
class Loader {
public:
    Loader(const Checkpoint& ck, DType dt) : ck_(ck), dt_(dt) {}

    // In the compute dtype, as from_pretrained(torch_dtype=...) rounds every
    // parameter (biases and norm weights included); modules widen them exactly.
    Tensor get(const std::string& name) const { return ck_.get_as(name, dt_); }

    cpu::Conv2d conv(const std::string& name, int64_t k) const {
        return cpu::Conv2d(name, get(name + ".weight"), get(name + ".bias"), k / 2);
    }
    cpu::GroupNorm norm(const std::string& name, int64_t groups) const {
        return cpu::GroupNorm(name, get(name + ".weight"), get(name + ".bias"), groups,
                             Config::kEps);
    }
    nn::Linear linear(const std::string& name) const {
        return nn::Linear::dense(name, get(name + ".weight"), get(name + ".bias"));
    }
    ResnetBlock resnet(const std::string& name, bool shortcut, int64_t groups) const {
        ResnetBlock r;
        r.norm1 = norm(name + ".norm1", groups);
        r.conv1 = conv(name + ".conv1", 3);
        r.norm2 = norm(name + ".norm2", groups);
        r.conv2 = conv(name + ".conv2", 3);
        r.has_shortcut = shortcut;
        if (shortcut) r.conv_shortcut = conv(name + ".conv_shortcut", 1);
        return r;
    }

private:
    const Checkpoint& ck_;
    DType dt_;
};

}  // namespace

Config Config::from_json(const json& j, const std::string& where) {
    if (!j.is_object()) raise<ConfigError>("{}: expected a JSON object", where);
    std::string class_name = "AutoencoderKL";
    read_config_field(j, where, "_class_name", &class_name);
    require(class_name == "AutoencoderKL", where, "_class_name",
            fmt::format("is '{}'; this decoder reads AutoencoderKL only", class_name));
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
        require(ch % c.norm_num_groups == 0, where, "block_out_channels",
                fmt::format("has {}, which is not a multiple of norm_num_groups ({})", ch,
                            c.norm_num_groups));
    require(c.up_block_types.size() == c.block_out_channels.size(), where, "up_block_types",
            fmt::format("has {} entries but block_out_channels has {}", c.up_block_types.size(),
                        c.block_out_channels.size()));
    for (const std::string& t : c.up_block_types)
        require(t == "UpDecoderBlock2D", where, "up_block_types",
                fmt::format("has '{}'; only UpDecoderBlock2D is supported", t));
    require(c.act_fn == "silu" || c.act_fn == "swish", where, "act_fn",
            fmt::format("is '{}'; only silu (or its alias swish) is supported", c.act_fn));
    require(std::isfinite(c.scaling_factor) && c.scaling_factor != 0, where, "scaling_factor",
            "must be a finite non-zero number");
    require(std::isfinite(c.shift_factor), where, "shift_factor", "must be finite or null");
    return c;
}

Tensor ResnetBlock::forward(Tensor x) const {
    Tensor h = conv1.forward(norm1.forward_silu(x));
    h = norm2.forward_silu(h);  // dropout is the identity at inference
    Tensor out = has_shortcut ? conv_shortcut.forward(x) : std::move(x);
    // f32: the add is fused into conv2. bf16: torch rounds conv2's output
    // before the add, and the fused sum would round only once.
    if (out.dtype() == DType::BF16)
        cpu::add_inplace(out, conv2.forward(h));
    else
        conv2.forward_add(h, out);
    return out;
}

Tensor AttentionBlock::forward(const Tensor& x) const {
    const int64_t B = x.size(0), L = x.size(1) * x.size(2), C = x.size(3);
    const Tensor h = group_norm.forward(x).view({B, L, C});
    const Tensor q = to_q.forward(h).view({B, L, 1, C});
    const Tensor k = to_k.forward(h).view({B, L, 1, C});
    const Tensor v = to_v.forward(h).view({B, L, 1, C});
    Tensor y = to_out.forward(cpu::scaled_dot_product_attention(q, k, v).view({B, L, C}));
    y = y.view(x.shape());
    cpu::add_inplace(y, x);
    return y;
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

AutoencoderKL::AutoencoderKL(const std::string& dir, DType compute) : dt_(compute) {
    if (compute != DType::F32 && compute != DType::BF16)
        raise<ConfigError>("AutoencoderKL: compute dtype must be F32 or BF16, not {}",
                           dtype_name(compute));
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

    const Loader ld(ck, dt_);
    const int64_t G = cfg_.norm_num_groups;
    const std::vector<int64_t> rev = reversed_channels(cfg_);
    if (cfg_.use_post_quant_conv) post_quant_conv_ = ld.conv("post_quant_conv", 1);
    conv_in_ = ld.conv("decoder.conv_in", 3);
    mid_resnet0_ = ld.resnet("decoder.mid_block.resnets.0", false, G);
    if (cfg_.mid_block_add_attention) {
        const std::string a = "decoder.mid_block.attentions.0";
        mid_attention_.group_norm = ld.norm(a + ".group_norm", G);
        mid_attention_.to_q = ld.linear(a + ".to_q");
        mid_attention_.to_k = ld.linear(a + ".to_k");
        mid_attention_.to_v = ld.linear(a + ".to_v");
        mid_attention_.to_out = ld.linear(a + ".to_out.0");
    }
    mid_resnet1_ = ld.resnet("decoder.mid_block.resnets.1", false, G);
    for (size_t i = 0; i < rev.size(); ++i) {
        const std::string p = fmt::format("decoder.up_blocks.{}", i);
        UpBlock ub;
        for (int64_t j = 0; j <= cfg_.layers_per_block; ++j)
            ub.resnets.push_back(ld.resnet(fmt::format("{}.resnets.{}", p, j),
                                           j == 0 && up_block_in(rev, i) != rev[i], G));
        ub.has_upsampler = i + 1 != rev.size();
        if (ub.has_upsampler) ub.upsampler = ld.conv(p + ".upsamplers.0.conv", 3);
        up_blocks_.push_back(std::move(ub));
    }
    conv_norm_out_ = ld.norm("decoder.conv_norm_out", G);
    conv_out_ = ld.conv("decoder.conv_out", 3);
}

Tensor AutoencoderKL::unscale_latents(const Tensor& latents) const {
    if (!latents.defined() || !is_float(latents.dtype()))
        raise<ShapeError>("AutoencoderKL::unscale_latents: expects a float tensor");
    Tensor y = latents.to(dt_);
    const float scale = float(cfg_.scaling_factor);
    const float shift = dt_ == DType::BF16 ? cpu::round_as<cpu::bf16_t>(float(cfg_.shift_factor))
                                           : float(cfg_.shift_factor);
    cpu::dispatch_float(dt_, [&](auto tag) {
        using T = decltype(tag);
        T* p = y.data<T>();
        parallel_for(y.numel(), 1 << 14, [&](int64_t b, int64_t e) {
            for (int64_t i = b; i < e; ++i)
                cpu::store(p, i, cpu::round_as<T>(cpu::load(p, i) / scale) + shift);
        });
    });
    return y;
}

Tensor AutoencoderKL::decode(const Tensor& z) const {
    if (!z.defined() || z.device().type != DeviceType::CPU || !is_float(z.dtype()) ||
        z.dim() != 4 || z.size(1) != cfg_.latent_channels || z.size(2) == 0 || z.size(3) == 0)
        raise<ShapeError>("AutoencoderKL::decode: expects CPU float latents [B, {}, h, w], got {}",
                          cfg_.latent_channels, z.defined() ? shape_str(z.shape()) : "none");
    Tensor h = to_channels_last(z, dt_);
    if (cfg_.use_post_quant_conv) h = post_quant_conv_.forward(h);
    h = conv_in_.forward(h);
    h = mid_resnet0_.forward(std::move(h));
    if (cfg_.mid_block_add_attention) h = mid_attention_.forward(h);
    h = mid_resnet1_.forward(std::move(h));
    for (const UpBlock& ub : up_blocks_) {
        for (const ResnetBlock& r : ub.resnets) h = r.forward(std::move(h));
        if (ub.has_upsampler) h = ub.upsampler.forward(cpu::upsample_nearest_2x(h));
    }
    h = conv_out_.forward(conv_norm_out_.forward_silu(h));
    return to_channels_first(h);
}

Tensor postprocess_to_u8(const Tensor& image) {
    if (!image.defined() || image.device().type != DeviceType::CPU || image.dim() != 4 ||
        (image.dtype() != DType::F32 && image.dtype() != DType::BF16))
        raise<ShapeError>("postprocess_to_u8: expects a CPU F32 or BF16 image [B, C, H, W], got {}",
                          image.defined() ? shape_str(image.shape()) : "none");
    const int64_t B = image.size(0), C = image.size(1), H = image.size(2), W = image.size(3);
    Tensor out = Tensor::empty({B, H, W, C}, DType::U8);
    uint8_t* o = out.data<uint8_t>();
    cpu::dispatch_float(image.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const T* x = image.data<T>();
        parallel_for(B * H, 1, [&](int64_t begin, int64_t end) {
            for (int64_t r = begin; r < end; ++r) {
                const int64_t b = r / H, y = r % H;
                for (int64_t c = 0; c < C; ++c) {
                    const T* row = x + ((b * C + c) * H + y) * W;
                    for (int64_t i = 0; i < W; ++i) {
                        const float v = cpu::round_as<T>(cpu::load(row, i) * 0.5f + 0.5f);
                        const float u = std::isnan(v) ? 0.0f : std::min(1.0f, std::max(0.0f, v));
                        o[(r * W + i) * C + c] = uint8_t(std::nearbyint(u * 255.0f));
                    }
                }
            }
        });
    });
    return out;
}

}  // namespace qdit::vae
