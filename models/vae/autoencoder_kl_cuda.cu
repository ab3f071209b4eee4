#include "models/vae/autoencoder_kl_cuda.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <map>
#include <random>

#include "backend/cuda/conv.h"
#include "backend/cuda/vae_kernels.h"
#include "core/error.h"
#include "io/files.h"
#include "io/safetensors.h"
#include "backend/cpu/elementwise.h"

namespace qdit::vae {

using cuda::DTensor;
using cuda::MemKind;

namespace {

// The decoder's channel plan, as in autoencoder_kl.cpp: conv_in and the mid block work at the
// widest channel count, up block i turns rev[i−1] (rev[0] for i = 0) into rev[i].
std::vector<int64_t> reversed_channels(const Config& c) {
    return {c.block_out_channels.rbegin(), c.block_out_channels.rend()};
}
int64_t up_block_in(const std::vector<int64_t>& rev, size_t i) { return rev[i == 0 ? 0 : i - 1]; }

// A host tensor named like the checkpoint key, in the compute dtype.
using Getter = std::function<Tensor(const std::string&)>;

struct DNorm {
    std::string name;
    DTensor w, b;  // F32 [C]
    int64_t C = 0, G = 1;
};

struct DResnet {
    DNorm norm1, norm2;
    cuda::Conv2d conv1, conv2, conv_shortcut;
    bool has_shortcut = false;
};

struct DAttention {
    DNorm group_norm;
    DTensor wqkv, bqkv;  // to_q | to_k | to_v: dt [3C, C], [3C]
    DTensor wout, bout;  // to_out.0: dt [C, C], [C]
    int64_t C = 0;
};

struct DUpBlock {
    std::vector<DResnet> resnets;
    cuda::Conv2d upsampler;
    bool has_upsampler = false;
};

const uint8_t* bytes(const DTensor& t) { return static_cast<const uint8_t*>(t.raw()); }

}  // namespace

struct AutoencoderKLCuda::Weights {
    Config cfg;
    DType dt = DType::BF16;
    cudaStream_t s = nullptr;
    size_t weight_bytes = 0;

    bool has_post_quant_conv = false, has_attention = false;
    cuda::Conv2d post_quant_conv, conv_in;
    DResnet mid0, mid1;
    DAttention attn;
    std::vector<DUpBlock> up_blocks;
    DNorm conv_norm_out;
    cuda::Conv2d conv_out;

    // ---- loading ----
    DTensor upload(const Tensor& t) {
        DTensor d = DTensor::upload(t, MemKind::Weight, s);
        weight_bytes += d.nbytes();
        return d;
    }
    cuda::Conv2d conv(const Getter& get, const std::string& name, int64_t k) {
        cuda::Conv2d c(name, get(name + ".weight"), get(name + ".bias"), k / 2, dt, s);
        weight_bytes += c.weight_bytes();
        return c;
    }
    DNorm norm(const Getter& get, const std::string& name) {
        DNorm n;
        n.name = name;
        n.w = upload(get(name + ".weight").to(DType::F32));
        n.b = upload(get(name + ".bias").to(DType::F32));
        n.C = n.w.numel();
        n.G = cfg.norm_num_groups;
        return n;
    }
    DResnet resnet(const Getter& get, const std::string& name, bool shortcut) {
        DResnet r;
        r.norm1 = norm(get, name + ".norm1");
        r.conv1 = conv(get, name + ".conv1", 3);
        r.norm2 = norm(get, name + ".norm2");
        r.conv2 = conv(get, name + ".conv2", 3);
        r.has_shortcut = shortcut;
        if (shortcut) r.conv_shortcut = conv(get, name + ".conv_shortcut", 1);
        return r;
    }

    void load(const Getter& get) {
        const std::vector<int64_t> rev = reversed_channels(cfg);
        has_post_quant_conv = cfg.use_post_quant_conv;
        if (has_post_quant_conv) post_quant_conv = conv(get, "post_quant_conv", 1);
        conv_in = conv(get, "decoder.conv_in", 3);
        mid0 = resnet(get, "decoder.mid_block.resnets.0", false);
        has_attention = cfg.mid_block_add_attention;
        if (has_attention) {
            const std::string a = "decoder.mid_block.attentions.0";
            const int64_t C = rev[0];
            attn.C = C;
            attn.group_norm = norm(get, a + ".group_norm");
            // q, k and v as one [3C, C] weight (values already in dt: concatenating is exact).
            Tensor w = Tensor::empty({3 * C, C}, DType::F32), b = Tensor::empty({3 * C}, DType::F32);
            const char* parts[] = {".to_q", ".to_k", ".to_v"};
            for (int i = 0; i < 3; ++i) {
                const Tensor wi = get(a + parts[i] + ".weight").to(DType::F32);
                const Tensor bi = get(a + parts[i] + ".bias").to(DType::F32);
                std::copy(wi.data<float>(), wi.data<float>() + C * C, w.data<float>() + i * C * C);
                std::copy(bi.data<float>(), bi.data<float>() + C, b.data<float>() + i * C);
            }
            attn.wqkv = upload(w.to(dt));
            attn.bqkv = upload(b.to(dt));
            attn.wout = upload(get(a + ".to_out.0.weight"));
            attn.bout = upload(get(a + ".to_out.0.bias"));
        }
        mid1 = resnet(get, "decoder.mid_block.resnets.1", false);
        for (size_t i = 0; i < rev.size(); ++i) {
            const std::string p = fmt::format("decoder.up_blocks.{}", i);
            DUpBlock ub;
            for (int64_t j = 0; j <= cfg.layers_per_block; ++j)
                ub.resnets.push_back(
                    resnet(get, fmt::format("{}.resnets.{}", p, j), j == 0 && up_block_in(rev, i) != rev[i]));
            ub.has_upsampler = i + 1 != rev.size();
            if (ub.has_upsampler) ub.upsampler = conv(get, p + ".upsamplers.0.conv", 3);
            up_blocks.push_back(std::move(ub));
        }
        conv_norm_out = norm(get, "decoder.conv_norm_out");
        conv_out = conv(get, "decoder.conv_out", 3);
    }

    // ---- forward (channels-last [B, H, W, C] in dt) ----
    // y may be x (in place).
    void group_norm(const DNorm& n, const DTensor& x, DTensor& y, bool silu) const {
        if (x.dim() != 4 || x.size(3) != n.C)
            raise<ShapeError>("{}: GroupNorm expects [B, H, W, {}], got {}", n.name, n.C, shape_str(x.shape()));
        cuda::vae::group_norm(x.raw(), y.raw(), dt, x.size(0), x.size(1) * x.size(2), n.C, n.G, n.w.data<float>(),
                              n.b.data<float>(), Config::kEps, silu, s);
    }
    DTensor group_norm(const DNorm& n, const DTensor& x, bool silu) const {
        DTensor y = DTensor::empty(x.shape(), dt);
        group_norm(n, x, y, silu);
        return y;
    }

    // x + conv2(silu(norm2(conv1(silu(norm1(x)))))), the skip through conv_shortcut when the
    // channel count changes. Consumes x (the sum is accumulated into its buffer without one).
    DTensor resnet_forward(const DResnet& r, DTensor x) const {
        DTensor h = r.conv1.forward(group_norm(r.norm1, x, true), s);
        group_norm(r.norm2, h, h, true);  // dropout is the identity at inference
        DTensor out = r.has_shortcut ? r.conv_shortcut.forward(x, s) : std::move(x);
        const DTensor c2 = r.conv2.forward(h, s);
        // conv2's output is rounded before the add, as torch does (and the CPU decoder in BF16).
        cuda::vae::add_inplace(out.raw(), c2.raw(), out.numel(), dt, s);
        return out;
    }

    DTensor attention_forward(const DTensor& x) const {
        const int64_t B = x.size(0), L = x.size(1) * x.size(2), C = attn.C;
        const size_t es = dtype_size(dt);
        const DTensor h = group_norm(attn.group_norm, x, false);
        DTensor qkv = DTensor::empty({B * L, 3 * C}, dt);
        cuda::vae::matmul(h.raw(), C, attn.wqkv.raw(), C, true, attn.bqkv.raw(), qkv.raw(), 3 * C, B * L, 3 * C, C, dt,
                          dt, s);
        DTensor o = DTensor::empty({B * L, C}, dt);
        for (int64_t b = 0; b < B; ++b) {
            const uint8_t* base = bytes(qkv) + size_t(b * L * 3 * C) * es;
            cuda::vae::attention_one_head(base, base + size_t(C) * es, base + size_t(2 * C) * es, 3 * C,
                                          const_cast<uint8_t*>(bytes(o)) + size_t(b * L * C) * es, C, L, C, dt, s);
        }
        DTensor y = DTensor::empty(x.shape(), dt);
        cuda::vae::matmul(o.raw(), C, attn.wout.raw(), C, true, attn.bout.raw(), y.raw(), C, B * L, C, C, dt, dt, s);
        cuda::vae::add_inplace(y.raw(), x.raw(), y.numel(), dt, s);
        return y;
    }

    DTensor forward_nhwc(DTensor h) const {
        if (has_post_quant_conv) h = post_quant_conv.forward(h, s);
        h = conv_in.forward(h, s);
        h = resnet_forward(mid0, std::move(h));
        if (has_attention) h = attention_forward(h);
        h = resnet_forward(mid1, std::move(h));
        for (const DUpBlock& ub : up_blocks) {
            for (const DResnet& r : ub.resnets) h = resnet_forward(r, std::move(h));
            if (ub.has_upsampler) {
                const int64_t B = h.size(0), H = h.size(1), W = h.size(2), C = h.size(3);
                DTensor u = DTensor::empty({B, 2 * H, 2 * W, C}, dt);
                cuda::vae::upsample_nearest_2x(h.raw(), u.raw(), dt, B, H, W, C, s);
                h = DTensor();  // back to the cache before the conv allocates
                h = ub.upsampler.forward(u, s);
            }
        }
        h = group_norm(conv_norm_out, h, true);
        return conv_out.forward(h, s);
    }

    void check_latents(const Shape& shape, DType t, const char* where) const {
        if (shape.size() != 4 || shape[1] != cfg.latent_channels || shape[2] <= 0 || shape[3] <= 0 || !is_float(t))
            raise<ShapeError>("AutoencoderKLCuda::{}: expects float latents [B, {}, h, w], got {} {}", where,
                              cfg.latent_channels, dtype_name(t), shape_str(shape));
    }

    DTensor decode(const DTensor& z) const {
        if (!z.defined()) raise<ShapeError>("AutoencoderKLCuda::decode: no latents");
        check_latents(z.shape(), z.dtype(), "decode");
        if (z.dtype() != DType::F32 && z.dtype() != DType::BF16)
            raise<ShapeError>("AutoencoderKLCuda::decode: device latents must be F32 or BF16, not {}",
                              dtype_name(z.dtype()));
        const int64_t B = z.size(0), Cl = z.size(1), h = z.size(2), w = z.size(3);
        DTensor x = DTensor::empty({B, h, w, Cl}, dt);
        cuda::vae::transpose(z.raw(), z.dtype(), x.raw(), dt, B, Cl, h * w, s);
        const DTensor y = forward_nhwc(std::move(x));
        const int64_t H = y.size(1), W = y.size(2), Co = y.size(3);
        DTensor img = DTensor::empty({B, Co, H, W}, dt);
        cuda::vae::transpose(y.raw(), dt, img.raw(), dt, B, H * W, Co, s);
        return img;
    }
};

AutoencoderKLCuda::AutoencoderKLCuda(std::unique_ptr<Weights> w) : w_(std::move(w)) {}
AutoencoderKLCuda::AutoencoderKLCuda(AutoencoderKLCuda&&) noexcept = default;
AutoencoderKLCuda& AutoencoderKLCuda::operator=(AutoencoderKLCuda&&) noexcept = default;
AutoencoderKLCuda::~AutoencoderKLCuda() = default;

static void check_compute(DType compute) {
    if (compute != DType::F32 && compute != DType::BF16)
        raise<ConfigError>("AutoencoderKLCuda: compute dtype must be F32 or BF16, not {}", dtype_name(compute));
}

AutoencoderKLCuda::AutoencoderKLCuda(const std::string& dir, DType compute, cudaStream_t stream) {
    check_compute(compute);
    const std::string config_path = (std::filesystem::path(dir) / "config.json").string();
    auto w = std::make_unique<Weights>();
    w->cfg = Config::from_json(read_json_file(config_path), config_path);
    w->dt = compute;
    w->s = stream;
    const Checkpoint ck(dir);
    for (const ParamSpec& p : decoder_params(w->cfg)) {
        if (!ck.contains(p.name))
            raise<ShapeError>("{}: missing tensor '{}', which the AutoencoderKL decoder described by config.json "
                              "needs (do the config and the weights belong together?)",
                              ck.path(), p.name);
        const TensorInfo& info = ck.info(p.name);
        if (info.shape != p.shape || !is_float(info.dtype))
            raise<ShapeError>("{}: tensor '{}' is {} {}, but config.json implies a float {}", ck.path(), p.name,
                              dtype_name(info.dtype), shape_str(info.shape), shape_str(p.shape));
    }
    // As from_pretrained(torch_dtype=...): every parameter rounded to the compute dtype.
    w->load([&](const std::string& name) { return ck.get_as(name, compute); });
    w_ = std::move(w);
}

AutoencoderKLCuda AutoencoderKLCuda::random(const Config& cfg, DType compute, uint64_t seed, cudaStream_t stream) {
    check_compute(compute);
    std::map<std::string, Shape> shapes;
    for (const ParamSpec& p : decoder_params(cfg)) shapes[p.name] = p.shape;
    std::mt19937_64 rng(seed);
    auto w = std::make_unique<Weights>();
    w->cfg = cfg;
    w->dt = compute;
    w->s = stream;
    w->load([&](const std::string& name) {
        const auto it = shapes.find(name);
        if (it == shapes.end()) raise<Error>("AutoencoderKLCuda::random: no parameter '{}'", name);
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
    return AutoencoderKLCuda(std::move(w));
}

const Config& AutoencoderKLCuda::config() const { return w_->cfg; }
DType AutoencoderKLCuda::compute_dtype() const { return w_->dt; }
cudaStream_t AutoencoderKLCuda::stream() const { return w_->s; }
size_t AutoencoderKLCuda::weight_bytes() const { return w_->weight_bytes; }

static float shift_for(const Config& cfg, DType dt) {
    return dt == DType::BF16 ? cpu::round_as<cpu::bf16_t>(float(cfg.shift_factor)) : float(cfg.shift_factor);
}

DTensor AutoencoderKLCuda::unscale_latents(const DTensor& latents) const {
    if (!latents.defined() || (latents.dtype() != DType::F32 && latents.dtype() != DType::BF16))
        raise<ShapeError>("AutoencoderKLCuda::unscale_latents: expects F32 or BF16 device latents");
    DTensor y = DTensor::empty(latents.shape(), w_->dt);
    cuda::vae::unscale(latents.raw(), latents.dtype(), y.raw(), w_->dt, latents.numel(), float(w_->cfg.scaling_factor),
                       shift_for(w_->cfg, w_->dt), w_->s);
    return y;
}

Tensor AutoencoderKLCuda::unscale_latents(const Tensor& latents) const {
    if (!latents.defined() || latents.device().type != DeviceType::CPU || !is_float(latents.dtype()))
        raise<ShapeError>("AutoencoderKLCuda::unscale_latents: expects a CPU float tensor");
    // latents.to(dtype) on the host first, as the CPU decoder does.
    return unscale_latents(DTensor::upload(latents.to(w_->dt), MemKind::Activation, w_->s)).download(w_->s);
}

DTensor AutoencoderKLCuda::decode(const DTensor& z) const { return w_->decode(z); }

Tensor AutoencoderKLCuda::decode(const Tensor& z) const {
    if (!z.defined() || z.device().type != DeviceType::CPU)
        raise<ShapeError>("AutoencoderKLCuda::decode: expects CPU float latents [B, {}, h, w]",
                          w_->cfg.latent_channels);
    w_->check_latents(z.shape(), z.dtype(), "decode");
    const DTensor dz = DTensor::upload(z.to(w_->dt), MemKind::Activation, w_->s);
    return w_->decode(dz).download(w_->s);
}

DTensor AutoencoderKLCuda::decode_to_u8(const DTensor& z) const { return postprocess_to_u8(w_->decode(z), w_->s); }

DTensor postprocess_to_u8(const DTensor& image, cudaStream_t stream) {
    if (!image.defined() || image.dim() != 4 || (image.dtype() != DType::F32 && image.dtype() != DType::BF16))
        raise<ShapeError>("postprocess_to_u8: expects a device F32 or BF16 image [B, C, H, W], got {}",
                          image.defined() ? shape_str(image.shape()) : "none");
    const int64_t B = image.size(0), C = image.size(1), H = image.size(2), W = image.size(3);
    DTensor out = DTensor::empty({B, H, W, C}, DType::U8);
    cuda::vae::postprocess_u8(image.raw(), image.dtype(), out.data<uint8_t>(), B, C, H, W, stream);
    return out;
}

}  // namespace qdit::vae
