#include "models/qwen_image/transformer.h"

#include <algorithm>
#include <cmath>
#include <optional>

#include <fmt/format.h>

#include "io/files.h"
#include "ops/attention.h"
#include "ops/elementwise.h"
#include "ops/glu.h"
#include "ops/graph.h"
#include "ops/profile.h"
#include "ops/rope.h"
#include "ops/row.h"

using nlohmann::json;

namespace qdit::qwen_image {

namespace {

// The two streams' module names in a block.
struct StreamNames {
    const char *mod, *q, *k, *v, *out, *norm_q, *norm_k, *mlp;
};
constexpr StreamNames kImage{"img_mod", "to_q", "to_k", "to_v", "to_out.0", "norm_q", "norm_k", "img_mlp"};
constexpr StreamNames kText{"txt_mod", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "norm_added_q",
                            "norm_added_k", "txt_mlp"};

// A block's modulation [shift, scale, gate] for the attention half, then for the MLP half; the gates
// have no tanh. norm_out's is [scale, shift].
const std::vector<ops::Mod> kBlockMods = {ops::Mod::Plain, ops::Mod::OnePlus, ops::Mod::Plain,
                                          ops::Mod::Plain, ops::Mod::OnePlus, ops::Mod::Plain};
const std::vector<ops::Mod> kOutMods = {ops::Mod::OnePlus, ops::Mod::Plain};

}  // namespace

// ---------------------------------------------------------------------------
// Config and parameter layout

Config Config::from_json(const json& j, const std::string& where) {
    using namespace config_limits;
    Config c;
    require_config(j.is_object(), where, "config must be a JSON object");
    read_config_field(j, where, "patch_size", &c.patch_size, {1, 16});
    read_config_field(j, where, "in_channels", &c.in_channels, {1, 4096});
    // diffusers: `out_channels or in_channels`, the field defaulting to 16: absent means 16, null in_channels.
    if (j.contains("out_channels") && j["out_channels"].is_null()) c.out_channels = c.in_channels;
    read_config_field(j, where, "out_channels", &c.out_channels, {1, 4096});
    read_config_field(j, where, "num_layers", &c.num_layers, {0, kLayers});
    read_config_field(j, where, "attention_head_dim", &c.attention_head_dim, {2, 1024});
    read_config_field(j, where, "num_attention_heads", &c.num_attention_heads, {1, kHeads});
    read_config_field(j, where, "joint_attention_dim", &c.joint_attention_dim, {1, kWidth});
    read_config_field(j, where, "axes_dims_rope", &c.axes_dims_rope, {2, 1024});
    require_config(c.dim() <= kWidth, where,
                   fmt::format("num_attention_heads × attention_head_dim = {} is more than the {} supported", c.dim(), kWidth));
    // Variants this port does not implement (guidance-distilled, Edit-2511, Layered).
    for (const char* flag : {"guidance_embeds", "zero_cond_t", "use_additional_t_cond", "use_layer3d_rope"}) {
        bool on = false;
        read_config_field(j, where, flag, &on);
        require_config(!on, where, fmt::format("field '{}' is true; only the text-to-image Qwen-Image transformer (false) "
                                               "is supported",
                                               flag));
    }
    require_config(c.axes_dims_rope.size() == 3, where, "axes_dims_rope must list 3 axes (frame, height, width)");
    check_rope_axes(c.axes_dims_rope, c.attention_head_dim, where, "axes_dims_rope", "attention_head_dim");
    return c;
}

ModelSpec model_spec(const Config& c) {
    ModelSpec s;
    s.class_name = "QwenImageTransformer2DModel";
    const int64_t D = c.dim(), hd = c.attention_head_dim, F = Config::kMlpMult * D;
    auto linear = [&](const std::string& name, int64_t out, int64_t in) { s.add_linear(name, out, in, true); };
    linear("img_in", D, c.in_channels);
    s.params.push_back({"txt_norm.weight", {c.joint_attention_dim}});
    linear("txt_in", D, c.joint_attention_dim);
    linear("time_text_embed.timestep_embedder.linear_1", D, Config::kTimestepChannels);
    linear("time_text_embed.timestep_embedder.linear_2", D, D);
    for (int64_t i = 0; i < c.num_layers; ++i) {
        const std::string b = fmt::format("transformer_blocks.{}.", i);
        for (const StreamNames& n : {kImage, kText}) {
            linear(b + n.mod + ".1", 6 * D, D);
            for (const char* p : {n.q, n.k, n.v, n.out}) linear(b + "attn." + p, D, D);
            s.params.push_back({b + "attn." + n.norm_q + ".weight", {hd}});
            s.params.push_back({b + "attn." + n.norm_k + ".weight", {hd}});
            linear(b + n.mlp + ".net.0.proj", F, D);
            linear(b + n.mlp + ".net.2", D, F);
        }
    }
    linear("norm_out.linear", 2 * D, D);
    linear("proj_out", c.out_features(), D);
    // The embedders, the conditioning path and the output stay in high precision; the modulation
    // Linears (a third of the parameters, reading one conditioning vector per item) get int8
    // weights with their input unquantized.
    s.keep_high_precision = {"img_in", "txt_in", "time_text_embed", "norm_out", "proj_out"};
    s.weight_only_int8 = {"img_mod", "txt_mod"};
    return s;
}

// ---------------------------------------------------------------------------
// Loading

QwenImageTransformer::QwenImageTransformer(const ModelSource<Config>& src, DType compute, const ops::Context& ctx,
                                           const Placement& placement)
    : cfg_(src.config), dt_(compute), ctx_(ctx), placement_(placement), where_(src.weights.where) {
    nn::WeightLoader w(src.weights, "Qwen-Image", dt_, ctx_);
    // The MLP's hidden width padded to 16 columns for the GPU's int8 GEMM (zeros change nothing).
    const int64_t Fp = round_up(Config::kMlpMult * cfg_.dim(), 16);
    size_t moved = 0;  // device bytes of the weights moved to the host
    img_in_ = w.one("img_in");
    txt_norm_ = w.tensor("txt_norm.weight", {cfg_.joint_attention_dim});
    txt_in_ = w.one("txt_in");
    t_linear_1_ = w.one("time_text_embed.timestep_embedder.linear_1");
    t_linear_2_ = w.one("time_text_embed.timestep_embedder.linear_2");
    for (int64_t i = 0; i < cfg_.num_layers; ++i) {
        const std::string b = fmt::format("transformer_blocks.{}.", i);
        Block blk;
        for (auto [names, st] : {std::pair{&kImage, &blk.img}, std::pair{&kText, &blk.txt}}) {
            const std::string a = b + "attn.";
            st->mod = w.one(b + names->mod + ".1");
            if (placement.modulation_on_host) {  // moved as soon as loaded: the device never holds them all
                const size_t on_device = st->mod.weight_bytes();
                try {
                    st->mod.keep_on_host();
                } catch (const Error& e) {
                    raise<ResourceError>("{}{}.1: its weights could not move to page-locked host memory ({}); with "
                                         "too little host memory keep the modulation weights on the GPU (qdit: "
                                         "--offload none; Placement::modulation_on_host = false)",
                                         b, names->mod, e.what());
                }
                moved += on_device - st->mod.weight_bytes();
                host_bytes_ += st->mod.host_bytes();
            }
            st->qkv = w.group({w.member(a + names->q), w.member(a + names->k), w.member(a + names->v)});
            st->out = w.one(a + names->out);
            st->norm_q = w.tensor(a + names->norm_q + ".weight", {cfg_.attention_head_dim});
            st->norm_k = w.tensor(a + names->norm_k + ".weight", {cfg_.attention_head_dim});
            st->mlp_in = w.group({w.member(b + names->mlp + ".net.0.proj", Fp)});
            st->mlp_out = w.group({w.member(b + names->mlp + ".net.2", 0, Fp)});
        }
        blocks_.push_back(std::move(blk));
    }
    norm_out_ = w.one("norm_out.linear");
    proj_out_ = w.one("proj_out");
    bytes_ = w.bytes() - moved;
    n_int8_ = w.int8_members();
}

// ---------------------------------------------------------------------------
// Forward

// SiLU(temb) [n, dim] on the model's device for the timesteps t[0..n): what every modulation reads.
// time_proj: t rounded to the compute dtype; the frequencies exp(−ln(10000)·k/128) in f32 rounded to
// it too; the angle 1000·(t·f_k) in f32; [cos, sin], cast to the compute dtype; then
// timestep_embedder's linear_1, SiLU, linear_2 and the SiLU that the modulation Linears apply.
Tensor QwenImageTransformer::conditioning(const float* t, int64_t n) const {
    const int64_t C = Config::kTimestepChannels, half = C / 2;
    Tensor tf = Tensor::empty({n, C}, DType::F32);
    for (int64_t b = 0; b < n; ++b)
        for (int64_t k = 0; k < half; ++k) {
            const float f = std::exp(float(-std::log(10000.0)) * float(k) / float(half));
            const float arg = 1000.0f * (round_to_dtype(t[b], dt_) * f);
            tf.data<float>()[b * C + k] = std::cos(arg);
            tf.data<float>()[b * C + half + k] = std::sin(arg);
        }
    const Tensor temb = t_linear_2_.forward(
        {ops::silu(t_linear_1_.forward({ops::to_device(tf.to(dt_), ctx_), {}, {}}), ctx_), {}, {}});
    return ops::silu(temb, ctx_);
}

size_t QwenImageTransformer::modulation_cache_bytes(int64_t steps) const {
    return size_t(steps) * blocks_.size() * 2 * size_t(kBlockMods.size() * cfg_.dim()) * dtype_size(dt_);
}

void QwenImageTransformer::modulation_rows(const Tensor& cond, int64_t block, Tensor& out) const {
    const ops::Activation c{cond, {}, {}};
    const int64_t n = cond.size(0);
    const Block& blk = blocks_[size_t(block)];
    Tensor img = out.slice_rows(0, n), txt = out.slice_rows(n, 2 * n);
    blk.img.mod.forward_into(c, img);
    blk.txt.mod.forward_into(c, txt);
}

void QwenImageTransformer::set_timesteps(const std::vector<float>& t) const {
    if (t == mod_t_) return;
    mod_t_.clear();
    mod_cache_ = mod_cond_ = Tensor();
    const int64_t S = int64_t(t.size()), nb = int64_t(blocks_.size()), W = int64_t(kBlockMods.size()) * cfg_.dim();
    if (S == 0 || modulation_cache_bytes(S) > kModulationCacheLimit) return;
    const Tensor cond = conditioning(t.data(), S);
    // Row (2·block + stream)·S + step: each Linear's S rows written in one piece. With the
    // modulation weights on the host the rows go there too, a block at a time.
    const bool host = placement_.modulation_on_host && ctx_.cuda();
    Tensor cache = host ? ops::pinned_empty({nb * 2 * S, W}, dt_, ctx_) : ops::empty({nb * 2 * S, W}, dt_, ctx_);
    Tensor rows = host ? ops::empty({2 * S, W}, dt_, ctx_) : Tensor();
    for (int64_t i = 0; i < nb; ++i) {
        Tensor dst = host ? rows : cache.slice_rows(2 * i * S, (2 * i + 2) * S);
        modulation_rows(cond, i, dst);
        if (host) ops::copy_rows(cache, 2 * i * S, rows, 0, 2 * S, ctx_);
    }
    mod_cache_ = cache;
    mod_cond_ = cond;
    mod_t_ = t;
}

Tensor QwenImageTransformer::forward(const Tensor& hidden_states, const Tensor& encoder_hidden_states,
                                     const Tensor& mask, const Tensor& timestep,
                                     const std::array<int64_t, 3>& grid) const {
    const int64_t D = cfg_.dim(), H = cfg_.num_attention_heads, hd = cfg_.attention_head_dim;
    const float eps = Config::kEps;
    const Tensor &hs = hidden_states, &enc = encoder_hidden_states;
    if (hs.dim() != 3 || hs.size(2) != cfg_.in_channels || hs.size(0) < 1 || hs.size(1) < 1 || !is_float(hs.dtype()))
        raise<ShapeError>("Qwen-Image: hidden_states must be float [B, L, {}], got {} {}", cfg_.in_channels,
                          dtype_name(hs.dtype()), shape_str(hs.shape()));
    const int64_t B = hs.size(0), L = hs.size(1);
    if (enc.dim() != 3 || enc.size(0) != B || enc.size(1) < 1 || enc.size(2) != cfg_.joint_attention_dim ||
        !is_float(enc.dtype()))
        raise<ShapeError>("Qwen-Image: encoder_hidden_states must be float [{}, T >= 1, {}], got {} {}", B,
                          cfg_.joint_attention_dim, dtype_name(enc.dtype()), shape_str(enc.shape()));
    const int64_t T = enc.size(1);
    if (mask.defined() && (mask.shape() != Shape{B, T} || mask.device().type != DeviceType::CPU))
        raise<ShapeError>("Qwen-Image: the text mask must be [{}, {}] on the host, got {}", B, T, shape_str(mask.shape()));
    if (timestep.dtype() != DType::F32 || timestep.shape() != Shape{B})
        raise<ShapeError>("Qwen-Image: timestep must be F32 [{}], got {} {}", B, dtype_name(timestep.dtype()),
                          shape_str(timestep.shape()));
    const auto [Fg, Hg, Wg] = grid;
    if (Fg < 1 || Hg < 1 || Wg < 1 || Fg * Hg * Wg != L)
        raise<ShapeError>("Qwen-Image: a token grid of {}×{}×{} does not hold the {} image tokens", Fg, Hg, Wg, L);
    // Positions: image token (f, i, j) at (f, i − ceil(H/2), j − ceil(W/2)) (centred); text token k
    // at max(H/2, W/2) + k on all three axes. The reference's tables cover [−4096, 4096).
    const int64_t txt0 = std::max(Hg / 2, Wg / 2), lim = Config::kRopePositions;
    if (Fg > lim || Hg - Hg / 2 > lim || Wg - Wg / 2 > lim || txt0 + T > lim)
        raise<ShapeError>("Qwen-Image: a {}×{}×{} token grid with {} text tokens needs RoPE positions past the "
                          "reference's {} (fewer tokens, or a smaller image)",
                          Fg, Hg, Wg, T, lim);
    // An input on the model's device in the compute dtype: as it is, or cast and moved from the host.
    auto on_device = [&](const Tensor& t, const char* what) {
        if (t.device() == ctx_.device && t.dtype() == dt_) return t;
        if (t.device().type != DeviceType::CPU)
            raise<ShapeError>("Qwen-Image: {} must be on the host or {} on {}, got {} on {}", what, dtype_name(dt_),
                              ctx_.device.str(), dtype_name(t.dtype()), t.device().str());
        return ops::to_device(t.to(dt_), ctx_);
    };
    // Which text tokens are real, as runs [begin, end) of consecutive ones per item.
    std::vector<std::vector<std::pair<int64_t, int64_t>>> runs(static_cast<size_t>(B));
    {
        const Tensor m = mask.defined() ? mask.to(DType::F32) : Tensor();
        for (int64_t b = 0; b < B; ++b)
            for (int64_t k = 0; k < T; ++k)
                if (!m.defined() || m.data<float>()[b * T + k] != 0.f) {
                    auto& r = runs[size_t(b)];
                    if (r.empty() || r.back().second != k) r.push_back({k, k});
                    r.back().second = k + 1;
                }
    }
    // The joint attention's rows: item b holds S = L + (most real text tokens of an item) rows,
    // [its image tokens, its real text tokens, padding]; a masked text token is never a key, so
    // leaving it out is the reference's masked attention (keys in another order: the same sums up
    // to rounding).
    std::vector<int64_t> n_real(static_cast<size_t>(B), 0);
    std::string key = fmt::format("{}x{}x{}/{}/{}", Fg, Hg, Wg, B, T);
    for (int64_t b = 0; b < B; ++b) {
        key += ";";
        for (auto [s, e] : runs[size_t(b)]) {
            n_real[size_t(b)] += e - s;
            key += fmt::format("{}-{},", s, e);
        }
    }
    const bool all_real = std::all_of(n_real.begin(), n_real.end(), [&](int64_t n) { return n == T; });
    // The modulation Linears' outputs kept by set_timesteps, when every item is at one of its
    // timesteps: each block's modulation is then one item's, shared by the whole batch.
    int64_t step = -1;
    for (size_t i = 0; i < mod_t_.size() && step < 0; ++i)
        if (std::all_of(timestep.data<float>(), timestep.data<float>() + B, [&](float t) { return t == mod_t_[i]; }))
            step = int64_t(i);
    if (step >= 0) key += ";kept modulation";
    const bool fp8 = ctx_.attention == ops::AttentionImpl::Fp8;
    // On a GPU (bf16 attention) the items are a multiple of 128 rows apart: room for the zero keys
    // ops::attention_padded adds up to that multiple.
    const int64_t S_real = L + *std::max_element(n_real.begin(), n_real.end()),
                  S = ctx_.cuda() && !fp8 ? (S_real + 127) / 128 * 128 : S_real;
    // The text stream holds only the real tokens: item b's n_real[b] rows from `first[b]` on (a
    // masked token reaches only the discarded text output, and every op on the stream is per row).
    std::vector<int64_t> lengths(static_cast<size_t>(B)), first(static_cast<size_t>(B) + 1, 0);
    for (int64_t b = 0; b < B; ++b) {
        lengths[size_t(b)] = L + n_real[size_t(b)];
        first[size_t(b) + 1] = first[size_t(b)] + n_real[size_t(b)];
    }
    const int64_t N = first[size_t(B)];  // 0 when the mask leaves no text token: image tokens only
    // f(row of encoder_hidden_states [B·T, ·], text stream row, k, n) for each run of n real tokens
    // from token k on.
    auto text_runs = [&](auto&& f) {
        for (int64_t b = 0; b < B; ++b) {
            int64_t row = first[size_t(b)];
            for (auto [s, e] : runs[size_t(b)]) {
                f(b * T + s, row, s, e - s);
                row += e - s;
            }
        }
    };
    // f(text stream row, joint row, n) for each item's text tokens.
    auto to_joint = [&](auto&& f) {
        for (int64_t b = 0; b < B; ++b)
            if (n_real[size_t(b)] > 0) f(first[size_t(b)], b * S + L, n_real[size_t(b)]);
    };

    // With a CUDA graph the blocks read the streams, SiLU(temb) and the RoPE tables at the fixed
    // addresses of this shape's slots (the tables depend on the shape only: made once) and write
    // the output to a slot.
    ops::GraphCache::Entry* G = ops::Profile::enabled() ? nullptr : graphs_.entry_if_on(ctx_, key);
    auto buffer = [&](const char* name, Shape shape, DType dt, bool* fresh = nullptr) {
        if (fresh) *fresh = true;
        return G ? G->slot(name, shape, dt, ctx_, fresh) : ops::empty(std::move(shape), dt, ctx_);
    };
    // The positions above; every item has the same.
    bool fresh = true;
    Tensor img_freqs = buffer("img_freqs", {L, hd / 2, 2}, DType::F32, &fresh);
    Tensor txt_freqs = buffer("txt_freqs", {N, hd / 2, 2}, DType::F32);
    if (fresh) {
        std::vector<int64_t> img_pos, txt_pos;
        for (int64_t f = 0; f < Fg; ++f)
            for (int64_t i = 0; i < Hg; ++i)
                for (int64_t j = 0; j < Wg; ++j) img_pos.insert(img_pos.end(), {f, i - (Hg - Hg / 2), j - (Wg - Wg / 2)});
        text_runs([&](int64_t, int64_t, int64_t k0, int64_t n) {
            for (int64_t k = k0; k < k0 + n; ++k) txt_pos.insert(txt_pos.end(), {txt0 + k, txt0 + k, txt0 + k});
        });
        auto put = [&](Tensor& dst, const std::vector<int64_t>& pos) {
            const int64_t n = dst.size(0);
            const Tensor table = ops::to_device(ops::rope_table(Config::kRopeTheta, cfg_.axes_dims_rope, pos), ctx_);
            Tensor d2 = dst.view({n, hd});
            ops::copy_rows(d2, 0, table.view({n, hd}), 0, n, ctx_);
        };
        put(img_freqs, img_pos);
        if (N > 0) put(txt_freqs, txt_pos);
    }

    // SiLU(temb): what every modulation reads. Embeddings: img_in; txt_in(RMSNorm(text)).
    Tensor cond = buffer("cond", {B, D}, dt_);
    Tensor img = buffer("img", {B * L, D}, dt_), txt = buffer("txt", {N, D}, dt_);
    const int64_t nb = int64_t(blocks_.size()), S_t = int64_t(mod_t_.size());
    // Every block's modulation, [(2·block + stream)·mod_items + item, 6·dim]: the kept rows of this
    // step (one item's, shared by the batch) or, for timesteps set_timesteps did not keep, every
    // item's, computed here, before the blocks (and outside their graph: the weights may be on the
    // host).
    const int64_t mod_items = step >= 0 ? 1 : B;
    Tensor mods = buffer("mods", {2 * nb * mod_items, int64_t(kBlockMods.size()) * D}, dt_);
    {
        ops::Region r("embeddings", ctx_);
        if (step >= 0) {  // norm_out reads row 0 only
            ops::copy_rows(cond, 0, mod_cond_, step, 1, ctx_);
            ops::copy_rows(mods, 0, mod_cache_, step, 2 * nb, ctx_, S_t);
        } else {
            ops::copy_rows(cond, 0, conditioning(timestep.data<float>(), B), 0, B, ctx_);
        }
        img_in_.forward_into({on_device(hs, "hidden_states").view({B * L, cfg_.in_channels}), {}, {}}, img);
        Tensor e = on_device(enc, "encoder_hidden_states").view({B * T, cfg_.joint_attention_dim});
        if (!all_real && N > 0) {  // the real tokens' rows
            Tensor real = ops::empty({N, cfg_.joint_attention_dim}, dt_, ctx_);
            text_runs([&](int64_t t, int64_t row, int64_t, int64_t n) { ops::copy_rows(real, row, e, t, n, ctx_); });
            e = real;
        }
        if (N > 0)
            txt_in_.forward_into(ops::row(e, {}, {ops::Norm::Rms, txt_norm_, eps, {}, {}}, txt_in_.input_spec(), ctx_),
                                 txt);
    }
    if (step < 0) {
        ops::Region r("modulation", ctx_);
        for (int64_t i = 0; i < nb; ++i) {
            Tensor dst = mods.slice_rows(2 * i * B, (2 * i + 2) * B);
            modulation_rows(cond, i, dst);
        }
    }
    Tensor out = buffer("out", {B * L, cfg_.out_features()}, dt_);

    auto body = [&] {
        const ops::Activation c{cond, {}, {}};
        // Each stream's MLP residual, x += gate · y, is applied by the next row op on its stream.
        struct Pending {
            Tensor y, gate;
        };
        Pending p_img, p_txt;
        // A block's modulation holds one item's vectors (kept ones, shared by the batch: the rows
        // are then one group) or every item's.
        const std::vector<int64_t> txt_groups = step >= 0 ? std::vector<int64_t>{} : n_real;
        auto chunk = [&](const Tensor& m, int64_t i) { return ops::modulation_chunk(m, i, mod_items); };
        // FP8 attention: q and k written as E4M3 by the norm + RoPE kernels (ops::Fp8Qk), at scales
        // made before the text stream's q and k of the block are.
        auto make_f8 = [&](const Block& blk) {
            return fp8 ? ops::fp8_qk(B * S, 3 * D, {blk.img.norm_q, blk.txt.norm_q}, {blk.img.norm_k, blk.txt.norm_k},
                                     hd, ctx_)
                       : ops::Fp8Qk{};
        };
        // x += gate · out(attention); LayerNorm · (1 + scale) + shift → MLP (GELU-tanh), per stream,
        // issued on `on`. parts > 1: the MLP itself (its two GEMMs and the GELU pass) runs on that many
        // equal parts of the rows in turn, which the image stream does per CFG item: a shorter step
        // and a smaller activation peak (bench/cuda/NOTES.md, "The joint attention and the image MLP
        // per CFG item").
        auto mlp = [&](const char* name, const Stream& st, Tensor& x, const Tensor& y, const Tensor& m, Pending& p,
                       const std::vector<int64_t>& groups, int64_t parts, const ops::Context& on) {
            ops::Region r(name, on);
            const ops::Activation a = ops::row(x, {y, {}, eps, chunk(m, 2)},
                                               {ops::Norm::LayerNorm, {}, eps, chunk(m, 4), chunk(m, 3)},
                                               st.mlp_in.input_spec(), on, groups);
            const int64_t rows = x.size(0), n = rows / parts;
            Tensor out = ops::empty({rows, x.size(1)}, x.dtype(), on);
            for (int64_t r0 = 0; r0 < rows; r0 += n) {
                Tensor part = out.slice_rows(r0, r0 + n);
                st.mlp_out.forward_into(ops::gelu_tanh(st.mlp_in.forward(a.slice_rows(r0, r0 + n), &on),
                                                       st.mlp_out.input_spec(), on),
                                        part, &on);
            }
            p = {out, chunk(m, 5)};
        };
        // The text stream's attention half of block bj, issued on `on`: its modulation, (the last
        // MLP residual, then) LayerNorm · (1 + scale) + shift → q|k|v → q/k RMSNorm + RoPE.
        struct TextHalf {
            Tensor mod, qkv;
            ops::Fp8Qk qk8;  // FP8 attention: q and k in E4M3 at the block's scales (f8's)
        };
        ops::Fp8Qk f8;  // the FP8 scales and rows of the block whose attention comes next
        auto text_half = [&](int64_t bj, const ops::Context& on) {
            const Block& b = blocks_[size_t(bj)];
            TextHalf t;
            {
                ops::Region r("modulation", on);
                t.mod = ops::modulation(mods.slice_rows((2 * bj + 1) * mod_items, (2 * bj + 2) * mod_items), kBlockMods, on);
            }
            ops::Region r("text q|k|v", on);
            t.qkv = b.txt.qkv.forward(ops::row(txt, {p_txt.y, {}, eps, p_txt.gate},
                                               {ops::Norm::LayerNorm, {}, eps, chunk(t.mod, 1), chunk(t.mod, 0)},
                                               b.txt.qkv.input_spec(), on, txt_groups),
                                      &on);
            if (fp8) t.qk8 = f8.like(N, on);
            ops::qk_rms_norm_rope(t.qkv, H, H, hd, b.txt.norm_q, b.txt.norm_k, eps, txt_freqs,
                                  ops::RopeLayout::Interleaved, on, fp8 ? &t.qk8 : nullptr);
            return t;
        };
        // The text stream runs beside the image stream (ops::Fork): from one block's attention to
        // the next one's its work is issued on the fork's side, the image's on ctx_, and the two
        // meet before each attention. Everything the side reads was written before the fork opened
        // (the streams, the modulation, the FP8 scales) or on the side itself.
        std::optional<ops::Fork> fork;
        TextHalf th;
        if (nb > 0) f8 = make_f8(blocks_[0]);
        if (nb > 0 && N > 0) {
            fork.emplace(ctx_);
            th = text_half(0, fork->side());
        }
        for (int64_t bi = 0; bi < nb; ++bi) {
            const Block& blk = blocks_[size_t(bi)];
            Tensor m_img;
            {
                ops::Region r("modulation", ctx_);
                m_img = ops::modulation(mods.slice_rows(2 * bi * mod_items, (2 * bi + 1) * mod_items), kBlockMods, ctx_);
            }
            // Attention half of the image stream: as the text's, written into the joint rows.
            Tensor joint = ops::empty({B * S, 3 * D}, dt_, ctx_);
            // FP8 attention reads the padding rows (ops::attention_padded): they hold zeros there, in
            // the bf16 q|k|v and the E4M3 q and k.
            if (fp8)
                for (int64_t b = 0; b < B; ++b) {
                    const int64_t pad0 = b * S + lengths[size_t(b)], npad = S - lengths[size_t(b)];
                    ops::zero_rows(joint, pad0, npad, ctx_);
                    ops::zero_rows(f8.y, pad0, npad, ctx_);
                }
            {
                ops::Region r("image q|k|v", ctx_);
                const ops::Activation a = ops::row(img, {p_img.y, {}, eps, p_img.gate},
                                                   {ops::Norm::LayerNorm, {}, eps, chunk(m_img, 1), chunk(m_img, 0)},
                                                   blk.img.qkv.input_spec(), ctx_);
                for (int64_t b = 0; b < B; ++b) {
                    Tensor rows = joint.slice_rows(b * S, b * S + L);
                    blk.img.qkv.forward_into(a.slice_rows(b * L, (b + 1) * L), rows);
                    const ops::Fp8Qk rows8 = fp8 ? f8.slice_rows(b * S, b * S + L) : ops::Fp8Qk{};
                    ops::qk_rms_norm_rope(rows, H, H, hd, blk.img.norm_q, blk.img.norm_k, eps, img_freqs,
                                          ops::RopeLayout::Interleaved, ctx_, fp8 ? &rows8 : nullptr);
                }
            }
            fork.reset();  // the streams meet
            to_joint([&](int64_t t, int64_t j, int64_t n) {
                ops::copy_rows(joint, j, th.qkv, t, n, ctx_);
                if (fp8) ops::copy_rows(f8.y, j, th.qk8.y, t, n, ctx_);
            });
            const bool last = bi + 1 == nb;  // the last block's text stream is unused
            ops::Activation o;
            {
                ops::Region r("attention", ctx_);
                // Written as both output projections read it (the same width; dense rows where
                // either is kept in bf16).
                ops::ActivationSpec spec = blk.img.out.input_spec();
                if (!last && N > 0) {
                    const ops::ActivationSpec t = blk.txt.out.input_spec();
                    spec.dense = spec.dense || t.dense;
                    if (t.int8 && spec.int8 && t.kp != spec.kp)
                        spec = {true, false, spec.k, 0};  // each Linear quantizes for itself
                    else if (t.int8 && !spec.int8)
                        spec.int8 = true, spec.kp = t.kp;
                }
                o = ops::attention_padded(joint, lengths, H, H, hd, spec, ctx_, fp8 ? &f8 : nullptr);
            }
            joint = Tensor();
            const Tensor m_txt = th.mod;
            th = TextHalf{};
            if (!last) f8 = make_f8(blocks_[size_t(bi + 1)]);
            // The rest of the text stream's block, then its next attention half, on the side.
            if (!last && N > 0) {
                ops::Activation attn_txt = ops::empty_rows(o, N, ctx_);
                to_joint([&](int64_t t, int64_t j, int64_t n) { ops::copy_rows(attn_txt, t, o, j, n, ctx_); });
                fork.emplace(ctx_);
                const ops::Context& side = fork->side();
                Tensor y_txt;
                {
                    ops::Region r("text attention out", side);
                    y_txt = blk.txt.out.forward(attn_txt, &side);
                }
                mlp("text MLP", blk.txt, txt, y_txt, m_txt, p_txt, txt_groups, 1, side);
                th = text_half(bi + 1, side);
            }
            // The image stream's MLP half.
            Tensor y_img = ops::empty({B * L, D}, dt_, ctx_);
            {
                ops::Region r("image attention out", ctx_);
                for (int64_t b = 0; b < B; ++b) {
                    Tensor rows = y_img.slice_rows(b * L, (b + 1) * L);
                    blk.img.out.forward_into(o.slice_rows(b * S, b * S + L), rows);
                }
            }
            mlp("image MLP", blk.img, img, y_img, m_img, p_img, {}, B, ctx_);
        }
        fork.reset();
        // norm_out: LayerNorm · (1 + scale) + shift from SiLU(temb), then proj_out. The text stream
        // ends with the last block.
        ops::Region r("norm_out, proj_out", ctx_);
        const Tensor m_out =
            ops::modulation(norm_out_.forward(step >= 0 ? ops::Activation{cond.slice_rows(0, 1), {}, {}} : c), kOutMods, ctx_);
        proj_out_.forward_into(ops::row(img, {p_img.y, {}, eps, p_img.gate},
                                        {ops::Norm::LayerNorm, {}, eps, chunk(m_out, 0), chunk(m_out, 1)},
                                        proj_out_.input_spec(), ctx_),
                               out);
    };
    if (G)
        graphs_.run(*G, ctx_, body);
    else
        body();
    if (hs.device().type == DeviceType::CPU) return ops::to_host(out, ctx_).view({B, L, cfg_.out_features()});
    if (!G) return out.view({B, L, cfg_.out_features()});
    // The graph's next replay rewrites its output slot: the caller gets a copy.
    Tensor y = ops::empty({B * L, cfg_.out_features()}, dt_, ctx_);
    ops::copy_rows(y, 0, out, 0, B * L, ctx_);
    return y.view({B, L, cfg_.out_features()});
}

}  // namespace qdit::qwen_image
