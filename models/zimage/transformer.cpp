#include "models/zimage/transformer.h"

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "io/files.h"
#include "ops/attention.h"
#include "ops/elementwise.h"
#include "ops/glu.h"
#include "ops/row.h"
#include "parallel/tensor_parallel.h"

using nlohmann::json;

namespace qdit::zimage {

namespace {

constexpr int64_t kSeqMultiple = 32;   // SEQ_MULTI_OF: the image and caption segments are padded to it
constexpr float kAttnNormEps = 1e-5f;  // diffusers' Attention(eps=1e-5) for norm_q / norm_k
constexpr float kFinalNormEps = 1e-6f;

// Token (f, h, w) of a patchified latent holds the values ordered (pf, ph, pw, c), c fastest: the
// element index in the latent [C, F, H, W] of token `tok`'s value `e`.
struct PatchLayout {
    int64_t C, F, H, W, pF, pH, pW, Ht, Wt;
    int64_t dim() const { return pF * pH * pW * C; }
    int64_t index(int64_t tok, int64_t e) const {
        const int64_t f = tok / (Ht * Wt), h = (tok / Wt) % Ht, w = tok % Wt;
        const int64_t c = e % C, pw = (e / C) % pW, ph = (e / (C * pW)) % pH, pf = e / (C * pW * pH);
        return ((c * F + f * pF + pf) * H + h * pH + ph) * W + w * pW + pw;
    }
};

}  // namespace

// ---------------------------------------------------------------------------
// Config and parameter layout

Config Config::from_json(const json& j, const std::string& where) {
    using namespace config_limits;
    Config c;
    read_config_field(j, where, "all_patch_size", &c.all_patch_size, {1, 16});
    read_config_field(j, where, "all_f_patch_size", &c.all_f_patch_size, {1, 16});
    read_config_field(j, where, "in_channels", &c.in_channels, {1, 1024});
    read_config_field(j, where, "dim", &c.dim, {1, kWidth});
    read_config_field(j, where, "n_layers", &c.n_layers, {0, kLayers});
    read_config_field(j, where, "n_refiner_layers", &c.n_refiner_layers, {0, kLayers});
    read_config_field(j, where, "n_heads", &c.n_heads, {1, kHeads});
    read_config_field(j, where, "n_kv_heads", &c.n_kv_heads, {1, kHeads});
    read_config_field(j, where, "norm_eps", &c.norm_eps, {1e-12, 1.0});
    read_config_field(j, where, "qk_norm", &c.qk_norm);
    read_config_field(j, where, "cap_feat_dim", &c.cap_feat_dim, {1, kWidth});
    read_config_field(j, where, "siglip_feat_dim", &c.siglip_feat_dim, {0, kWidth});
    read_config_field(j, where, "rope_theta", &c.rope_theta, {1.0, 1e12});
    read_config_field(j, where, "t_scale", &c.t_scale, {1e-6, 1e6});
    read_config_field(j, where, "axes_dims", &c.axes_dims, {2, kWidth});
    read_config_field(j, where, "axes_lens", &c.axes_lens, {1, kPositions});

    require_config(c.all_patch_size.size() == c.all_f_patch_size.size() && !c.all_patch_size.empty(),
                   where, "all_patch_size and all_f_patch_size must be non-empty lists of equal length");
    require_config(c.dim % c.n_heads == 0, where,
                   fmt::format("dim ({}) must be a multiple of n_heads ({})", c.dim, c.n_heads));
    require_config(c.axes_dims.size() == 3 && c.axes_lens.size() == 3, where,
                   "axes_dims and axes_lens must list 3 axes (caption/frame, height, width)");
    check_rope_axes(c.axes_dims, c.head_dim(), where, "axes_dims", "the head dim dim/n_heads");
    int64_t rope_table = 0;  // f32 values of the cos/sin tables: sum of axes_lens[i] * axes_dims[i]
    for (size_t i = 0; i < c.axes_dims.size(); ++i) rope_table += c.axes_lens[i] * c.axes_dims[i];
    require_config(rope_table <= kRopeTableValues, where,
                   fmt::format("the RoPE tables of axes_lens x axes_dims hold {} values, more than the {} supported",
                               rope_table, kRopeTableValues));
    return c;
}

ModelSpec model_spec(const Config& c) {
    ModelSpec s;
    s.class_name = "ZImageTransformer2DModel";
    const int64_t D = c.dim, adaln = std::min<int64_t>(D, Config::kAdalnEmbedDim);
    auto param = [&](const std::string& name, Shape shape) { s.params.push_back({name, shape}); };
    auto block = [&](const std::string& p, bool modulation) {
        const int64_t hd = c.head_dim(), ffn = c.ffn_hidden();
        s.add_linear(p + ".attention.to_q", D, D, false);
        s.add_linear(p + ".attention.to_k", D, D, false);
        s.add_linear(p + ".attention.to_v", D, D, false);
        s.add_linear(p + ".attention.to_out.0", D, D, false);
        if (c.qk_norm) {
            param(p + ".attention.norm_q.weight", {hd});
            param(p + ".attention.norm_k.weight", {hd});
        }
        s.add_linear(p + ".feed_forward.w1", ffn, D, false);
        s.add_linear(p + ".feed_forward.w2", D, ffn, false);
        s.add_linear(p + ".feed_forward.w3", ffn, D, false);
        for (const char* n : {"attention_norm1", "ffn_norm1", "attention_norm2", "ffn_norm2"})
            param(p + "." + n + ".weight", {D});
        if (modulation) s.add_linear(p + ".adaLN_modulation.0", 4 * D, adaln, true);
    };

    for (size_t i = 0; i < c.all_patch_size.size(); ++i) {
        int64_t p = c.all_patch_size[i], f = c.all_f_patch_size[i];
        std::string key = fmt::format("{}-{}", p, f);
        s.add_linear("all_x_embedder." + key, D, f * p * p * c.in_channels, true);
        std::string fl = "all_final_layer." + key;
        s.add_linear(fl + ".linear", p * p * f * c.in_channels, D, true);
        s.add_linear(fl + ".adaLN_modulation.1", D, adaln, true);
    }
    for (int64_t i = 0; i < c.n_refiner_layers; ++i) block(fmt::format("noise_refiner.{}", i), true);
    for (int64_t i = 0; i < c.n_refiner_layers; ++i)
        block(fmt::format("context_refiner.{}", i), false);
    s.add_linear("t_embedder.mlp.0", Config::kTimestepHidden, Config::kTimestepFreqDim, true);
    s.add_linear("t_embedder.mlp.2", adaln, Config::kTimestepHidden, true);
    param("cap_embedder.0.weight", {c.cap_feat_dim});
    s.add_linear("cap_embedder.1", D, c.cap_feat_dim, true);
    if (c.siglip_feat_dim > 0) {
        param("siglip_embedder.0.weight", {c.siglip_feat_dim});
        s.add_linear("siglip_embedder.1", D, c.siglip_feat_dim, true);
        for (int64_t i = 0; i < c.n_refiner_layers; ++i)
            block(fmt::format("siglip_refiner.{}", i), false);
        param("siglip_pad_token", {1, D});
    }
    param("x_pad_token", {1, D});
    param("cap_pad_token", {1, D});
    for (int64_t i = 0; i < c.n_layers; ++i) block(fmt::format("layers.{}", i), true);

    // Embedders, the timestep MLP, the final layer and the per-block adaLN
    // modulation stay in high precision by default: together they are under
    // 2% of the weights, the adaLN GEMVs run on a single token (nothing to gain
    // from int8), and published W8A8 recipes keep the same set.
    s.keep_high_precision = {"t_embedder", "cap_embedder", "siglip_embedder", "all_x_embedder",
                             "all_final_layer", "adaLN_modulation"};
    return s;
}

// ---------------------------------------------------------------------------
// Loading

ZImageTransformer::ZImageTransformer(const ModelSource<Config>& src, DType compute, const ops::Context& ctx)
    : cfg_(src.config), dt_(compute), ctx_(ctx), where_(src.weights.where) {
    const int world = ctx_.world();
    if (world > 1 && (cfg_.n_heads < world || cfg_.n_kv_heads != cfg_.n_heads))
        raise<UsageError>("{}: {} parallelism over {} GPUs needs at least {} attention heads with as many key/value "
                          "heads; this model has {} heads, {} key/value heads",
                          where_, ctx_.tensor_parallel() ? "tensor" : "sequence", world, world, cfg_.n_heads,
                          cfg_.n_kv_heads);
    nn::WeightLoader w(src.weights, "Z-Image", dt_, ctx_);
    const int64_t D = cfg_.dim, hd = cfg_.head_dim();
    auto block = [&](const std::string& p, bool modulated) {
        Block b;
        b.modulated = modulated;
        // The FFN's hidden width padded to 16 for the GPU's int8 GEMM (zero rows / columns).
        const int64_t hidden_p = round_up(w.plan(p + ".feed_forward.w1").spec.out_features, 16);
        if (!ctx_.tensor_parallel()) {
            b.heads = cfg_.n_heads;
            b.qkv = w.group({w.member(p + ".attention.to_q"), w.member(p + ".attention.to_k"),
                             w.member(p + ".attention.to_v")});
            b.out = w.one(p + ".attention.to_out.0");
            b.w13 = w.group({w.member(p + ".feed_forward.w1", hidden_p), w.member(p + ".feed_forward.w3", hidden_p)});
            b.w2 = w.group({w.member(p + ".feed_forward.w2", 0, hidden_p)});
        } else {
            // This rank's whole heads of q/k/v and block of the padded hidden width of w1/w3 (column
            // split); to_out and w2 take the matching input columns and sum over the ranks (row split).
            const parallel::Range h = parallel::split(cfg_.n_heads, ctx_.rank(), world);
            const parallel::Range f = parallel::split(hidden_p, ctx_.rank(), world, 16);
            const int64_t dq = h.size() * hd, q0 = h.begin * hd;
            b.heads = h.size();
            b.qkv = w.group({w.window(p + ".attention.to_q", dq, D, q0, 0), w.window(p + ".attention.to_k", dq, D, q0, 0),
                             w.window(p + ".attention.to_v", dq, D, q0, 0)});
            b.out = w.group({w.window(p + ".attention.to_out.0", D, dq, 0, q0)}, /*row_split=*/true);
            b.w13 = w.group({w.window(p + ".feed_forward.w1", f.size(), D, f.begin, 0),
                             w.window(p + ".feed_forward.w3", f.size(), D, f.begin, 0)});
            b.w2 = w.group({w.window(p + ".feed_forward.w2", D, f.size(), 0, f.begin)}, /*row_split=*/true);
        }
        if (cfg_.qk_norm) {
            b.norm_q = w.tensor(p + ".attention.norm_q.weight", {hd});
            b.norm_k = w.tensor(p + ".attention.norm_k.weight", {hd});
        }
        b.attention_norm1 = w.tensor(p + ".attention_norm1.weight", {D});
        b.attention_norm2 = w.tensor(p + ".attention_norm2.weight", {D});
        b.ffn_norm1 = w.tensor(p + ".ffn_norm1.weight", {D});
        b.ffn_norm2 = w.tensor(p + ".ffn_norm2.weight", {D});
        if (modulated) b.ada = w.one(p + ".adaLN_modulation.0");
        return b;
    };
    patch_ = cfg_.all_patch_size[0];
    f_patch_ = cfg_.all_f_patch_size[0];
    const std::string key = fmt::format("{}-{}", patch_, f_patch_);
    t_mlp0_ = w.one("t_embedder.mlp.0");
    t_mlp2_ = w.one("t_embedder.mlp.2");
    cap_norm_ = w.tensor("cap_embedder.0.weight", {cfg_.cap_feat_dim}, /*norm=*/true);
    cap_linear_ = w.one("cap_embedder.1");
    x_embedder_ = w.one("all_x_embedder." + key);
    final_linear_ = w.one("all_final_layer." + key + ".linear");
    final_ada_ = w.one("all_final_layer." + key + ".adaLN_modulation.1");
    x_pad_token_ = w.tensor("x_pad_token", {1, D});
    cap_pad_token_ = w.tensor("cap_pad_token", {1, D});
    for (int64_t i = 0; i < cfg_.n_refiner_layers; ++i)
        noise_refiner_.push_back(block(fmt::format("noise_refiner.{}", i), true));
    for (int64_t i = 0; i < cfg_.n_refiner_layers; ++i)
        context_refiner_.push_back(block(fmt::format("context_refiner.{}", i), false));
    for (int64_t i = 0; i < cfg_.n_layers; ++i) layers_.push_back(block(fmt::format("layers.{}", i), true));
    rope_ = ops::AxesRope(cfg_.rope_theta, cfg_.axes_dims, cfg_.axes_lens);
    bytes_ = w.bytes();
    n_int8_ = w.int8_members();
    n_linear_ = int(src.weights.plan.layers.size());
}

// ---------------------------------------------------------------------------
// Blocks

// x [L, dim] updated in place; freqs F32 [L, head_dim/2, 2]. `pending` (the previous block's last
// residual on the same rows, or empty) is applied in this block's first row op; this block's own
// last residual is left in it.
void ZImageTransformer::block_forward(const Block& b, Tensor& x, const Tensor& freqs, const ops::Activation& adaln,
                                      Pending& pending) const {
    const int64_t H = b.heads, hd = cfg_.head_dim();
    const float eps = float(cfg_.norm_eps);
    // Modulated: [1 + scale_msa, tanh(gate_msa), 1 + scale_mlp, tanh(gate_mlp)].
    Tensor mod;
    auto chunk = [&](int64_t c) { return b.modulated ? ops::modulation_chunk(mod, c, 1) : Tensor(); };
    if (b.modulated)
        mod = ops::modulation(b.ada.forward(adaln), {ops::Mod::OnePlus, ops::Mod::Tanh, ops::Mod::OnePlus, ops::Mod::Tanh},
                              ctx_);
    // Attention: (the previous residual, then) attention_norm1 (· scale) → q|k|v → q/k RMSNorm +
    // RoPE → SDPA → to_out.
    const ops::Activation a = ops::row(x, {pending.y, pending.w, eps, pending.gate},
                                       {ops::Norm::Rms, b.attention_norm1, eps, chunk(0), {}}, b.qkv.input_spec(), ctx_);
    pending = Pending();
    // FP8 attention: q and k written as E4M3 by the norm + RoPE kernel (ops::Fp8Qk; sequence
    // parallelism runs bf16, and without q/k norms the attention converts q and k itself).
    const bool fp8 = ctx_.attention == ops::AttentionImpl::Fp8 && !ctx_.sequence_parallel() && b.norm_q.defined();
    const int64_t L = x.size(0);
    // bf16 attention on a GPU whose output the int8 to_out reads: q|k|v rows up to a multiple of
    // 128, room for the zero keys ops::attention_padded adds.
    const bool padded = ctx_.cuda() && !fp8 && !ctx_.sequence_parallel() && b.out.input_spec().int8;
    Tensor qkv_rows = ops::empty({padded ? (L + 127) / 128 * 128 : L, b.qkv.width()}, dt_, ctx_);
    Tensor qkv = qkv_rows.slice_rows(0, L);
    b.qkv.forward_into(a, qkv);
    const ops::Fp8Qk f8 = fp8 ? ops::fp8_qk(L, qkv.size(1), {b.norm_q}, {b.norm_k}, hd, ctx_) : ops::Fp8Qk{};
    ops::qk_rms_norm_rope(qkv, H, H, hd, b.norm_q, b.norm_k, kAttnNormEps, freqs, ops::RopeLayout::Interleaved, ctx_,
                          fp8 ? &f8 : nullptr);
    Tensor y = b.out.forward(fp8       ? ops::Activation{ops::attention_padded(qkv, {L}, H, H, hd, ctx_, &f8), {}, {}}
                             : padded ? ops::attention_padded(qkv_rows, {L}, H, H, hd, b.out.input_spec(), ctx_)
                                            .slice_rows(0, L)
                                      : ops::Activation{ops::attention(qkv, 1, H, H, hd, false, Tensor(), ctx_), {}, {}});
    qkv = qkv_rows = Tensor();
    // x += gate_msa · attention_norm2(attention); ffn_norm1(x) · scale_mlp → w1|w3 → SwiGLU → w2.
    const Tensor h = b.w13.forward(ops::row(x, {y, b.attention_norm2, eps, chunk(1)},
                                            {ops::Norm::Rms, b.ffn_norm1, eps, chunk(2), {}}, b.w13.input_spec(), ctx_));
    // x += gate_mlp · ffn_norm2(ffn): left to the next row op on these rows (or flush()).
    pending = {b.w2.forward(ops::swiglu(h, b.w13.column(1), b.w2.input_spec(), ctx_)), b.ffn_norm2, chunk(3)};
}

void ZImageTransformer::flush(Tensor& x, Pending& pending) const {
    if (!pending.y.defined()) return;
    ops::row(x, {pending.y, pending.w, float(cfg_.norm_eps), pending.gate}, {}, {}, ctx_);
    pending = Pending();
}

// ---------------------------------------------------------------------------
// Forward

Tensor ZImageTransformer::forward_tokens(const Tensor& patches, const std::array<int64_t, 3>& grid,
                                         const Tensor& cap_feats, float t) const {
    const int64_t D = cfg_.dim, n_img = grid[0] * grid[1] * grid[2];
    const int64_t patch_dim = patch_ * patch_ * f_patch_ * cfg_.in_channels;
    if (patches.dtype() != dt_ || patches.shape() != Shape{n_img, patch_dim} || cap_feats.dtype() != dt_ ||
        cap_feats.dim() != 2 || cap_feats.size(0) < 1 || cap_feats.size(1) != cfg_.cap_feat_dim)
        raise<ShapeError>("Z-Image: patches must be {} [{}, {}] and caption features {} [L >= 1, {}], got {} {} and {} {}",
                          dtype_name(dt_), n_img, patch_dim, dtype_name(dt_), cfg_.cap_feat_dim,
                          dtype_name(patches.dtype()), shape_str(patches.shape()), dtype_name(cap_feats.dtype()),
                          shape_str(cap_feats.shape()));
    const int64_t n_cap = cap_feats.size(0), Lx = round_up(n_img, kSeqMultiple),
                  Lc = round_up(n_cap, kSeqMultiple), Lu = Lx + Lc;

    // t_embedder(t · t_scale): sinusoidal features in f32, cast to the compute dtype, Linear → SiLU →
    // Linear. The result (no SiLU) feeds every adaLN.
    Tensor ts = Tensor::empty({1}, DType::F32);
    ts.data<float>()[0] = t * float(cfg_.t_scale);
    const Tensor features = ops::timestep_embedding(ts, Config::kTimestepFreqDim).to(dt_);
    ops::Activation adaln{
        t_mlp2_.forward({ops::silu(t_mlp0_.forward({ops::to_device(features, ctx_), {}, {}}), ctx_), {}, {}}), {}, {}};

    // With a graph, the blocks read u, the RoPE table and adaln at the fixed addresses of this
    // shape's slots; the table depends on the shape only, so it is made once.
    const std::string key = fmt::format("{}x{}x{}+{}", grid[0], grid[1], grid[2], Lc);
    ops::GraphCache::Entry* G = ctx_.world() == 1 ? graphs_.entry_if_on(ctx_, key) : nullptr;
    if (G) {
        Tensor& slot = G->slot("adaln", adaln.x.shape(), dt_, ctx_);
        ops::copy_rows(slot, 0, adaln.x, 0, adaln.x.size(0), ctx_);
        adaln.x = slot;
    }

    // RoPE of the unified sequence [image (padded), caption (padded)]: image token (f, h, w) at
    // (Lc + 1 + f, h, w), image pad rows at (0, 0, 0), caption token j (pad included) at (1 + j, 0, 0).
    // The refiners read its two row ranges.
    std::vector<int64_t> pos;
    for (int64_t f = 0; f < grid[0]; ++f)
        for (int64_t h = 0; h < grid[1]; ++h)
            for (int64_t w = 0; w < grid[2]; ++w) pos.insert(pos.end(), {Lc + 1 + f, h, w});
    pos.resize(size_t(Lx * 3), 0);
    for (int64_t j = 0; j < Lc; ++j) pos.insert(pos.end(), {1 + j, 0, 0});
    const int64_t hd = cfg_.head_dim();
    bool fresh = true;
    Tensor freqs = G ? G->slot("freqs", {Lu, hd / 2, 2}, DType::F32, ctx_, &fresh) : Tensor();
    if (!G) {
        freqs = ops::to_device(rope_.table(pos), ctx_);
    } else if (fresh) {
        Tensor f2 = freqs.view({Lu, hd});
        ops::copy_rows(f2, 0, ops::to_device(rope_.table(pos), ctx_).view({Lu, hd}), 0, Lu, ctx_);
    }

    // The residual stream u: the embedded patches then x_pad_token; the caption's RMSNorm + Linear
    // then cap_pad_token.
    Tensor u = G ? G->slot("u", {Lu, D}, dt_, ctx_) : ops::empty({Lu, D}, dt_, ctx_);
    ops::copy_rows(u, 0, x_embedder_.forward({patches, {}, {}}), 0, n_img, ctx_);
    for (int64_t r = n_img; r < Lx; ++r) ops::copy_rows(u, r, x_pad_token_, 0, 1, ctx_);
    Tensor cap = cap_feats;
    ops::copy_rows(u, Lx,
                   cap_linear_.forward(ops::row(cap, {}, {ops::Norm::Rms, cap_norm_, float(cfg_.norm_eps), {}, {}},
                                                cap_linear_.input_spec(), ctx_)),
                   0, n_cap, ctx_);
    for (int64_t r = Lx + n_cap; r < Lu; ++r) ops::copy_rows(u, r, cap_pad_token_, 0, 1, ctx_);

    // The noise refiner on the image rows, the context refiner on the caption rows, then the main
    // layers on both. Under sequence parallelism u is whole on every rank between these stages: a
    // stage runs on this rank's 1/R of its rows, which are then gathered.
    const int R = ctx_.sequence_parallel() ? ctx_.world() : 1, r = R > 1 ? ctx_.rank() : 0;
    if (Lx % R || Lc % R)
        raise<UsageError>("{}: sequence parallelism over {} GPUs needs token counts divisible by {}; this image has {} "
                          "and the caption {} (both padded to multiples of {})",
                          where_, R, R, Lx, Lc, kSeqMultiple);
    auto stage = [&](const std::vector<Block>& stage_blocks, int64_t begin, int64_t end) {
        const int64_t n = (end - begin) / R, b0 = begin + r * n;
        Tensor rows = u.slice_rows(b0, b0 + n);
        const Tensor f = freqs.slice_rows(b0, b0 + n);
        Pending pending;
        for (const Block& b : stage_blocks) block_forward(b, rows, f, adaln, pending);
        flush(rows, pending);
        Tensor all = u.slice_rows(begin, end);
        if (R > 1) ops::gather_rows(all, ctx_);
    };
    auto blocks = [&] {
        stage(noise_refiner_, 0, Lx);
        stage(context_refiner_, Lx, Lu);
        stage(layers_, 0, Lu);
    };
    if (G)
        graphs_.run(*G, ctx_, blocks);
    else
        blocks();

    // Final layer on the real image tokens: linear(LayerNorm(x) · (1 + adaLN_modulation.1(SiLU(adaln)))).
    const Tensor scale = ops::modulation(final_ada_.forward({ops::silu(adaln.x, ctx_), {}, {}}), {ops::Mod::OnePlus}, ctx_);
    Tensor img = u.slice_rows(0, n_img);
    return final_linear_.forward(ops::row(img, {}, {ops::Norm::LayerNorm, {}, kFinalNormEps, scale, {}},
                                          final_linear_.input_spec(), ctx_));
}

std::vector<Tensor> ZImageTransformer::forward(const std::vector<Tensor>& xs, const Tensor& t,
                                               const std::vector<Tensor>& caps) const {
    const size_t B = xs.size();
    if (B == 0 || caps.size() != B)
        raise<ShapeError>("Z-Image forward: {} latents and {} caption feature tensors (need the same number, at "
                          "least 1)",
                          xs.size(), caps.size());
    if (t.dtype() != DType::F32 || t.dim() != 1 || t.size(0) != int64_t(B))
        raise<ShapeError>("Z-Image forward: t must be F32 [{}], got {} {}", B, dtype_name(t.dtype()),
                          shape_str(t.shape()));
    for (size_t b = 0; b < B; ++b) {
        const Tensor &x = xs[b], &c = caps[b];
        if (x.dim() != 4 || x.size(0) != cfg_.in_channels || x.size(1) % f_patch_ || x.size(2) % patch_ ||
            x.size(3) % patch_ || x.numel() == 0 || !is_float(x.dtype()))
            raise<ShapeError>("Z-Image forward: latent {} must be float [{}, F, H, W] with F a multiple of {} and H, W "
                              "multiples of {}, got {} {}",
                              b, cfg_.in_channels, f_patch_, patch_, dtype_name(x.dtype()), shape_str(x.shape()));
        if (c.dim() != 2 || c.size(0) < 1 || c.size(1) != cfg_.cap_feat_dim || !is_float(c.dtype()))
            raise<ShapeError>("Z-Image forward: cap_feats {} must be float [L >= 1, {}], got {} {}", b,
                              cfg_.cap_feat_dim, dtype_name(c.dtype()), shape_str(c.shape()));
    }
    std::vector<Tensor> out;
    for (size_t b = 0; b < B; ++b) {
        const Tensor patches = patchify(xs[b], patch_, f_patch_);
        const std::array<int64_t, 3> grid{xs[b].size(1) / f_patch_, xs[b].size(2) / patch_, xs[b].size(3) / patch_};
        const Tensor y = ops::to_host(forward_tokens(ops::to_device(patches.to(dt_), ctx_), grid,
                                                     ops::to_device(caps[b].to(dt_), ctx_), t.data<float>()[b]),
                                      ctx_);
        out.push_back(unpatchify(y, xs[b].shape(), patch_, f_patch_));
    }
    return out;
}

Tensor patchify(const Tensor& latent, int64_t patch, int64_t f_patch) {
    const Tensor& l = latent;
    if (l.dim() != 4 || l.numel() == 0 || !is_float(l.dtype()) || l.size(1) % f_patch || l.size(2) % patch ||
        l.size(3) % patch)
        raise<ShapeError>("Z-Image: a latent must be float [C, F, H, W] with F a multiple of {} and H, W multiples of "
                          "{}, got {} {}",
                          f_patch, patch, dtype_name(l.dtype()), shape_str(l.shape()));
    const Tensor x = l.to(DType::F32);
    const int64_t C = x.size(0), F = x.size(1), H = x.size(2), W = x.size(3);
    const PatchLayout p{C, F, H, W, f_patch, patch, patch, H / patch, W / patch};
    const int64_t tokens = (F / f_patch) * p.Ht * p.Wt, pd = p.dim();
    Tensor out = Tensor::empty({tokens, pd}, DType::F32);
    const float* src = x.data<float>();
    float* dst = out.data<float>();
    for (int64_t tok = 0; tok < tokens; ++tok)
        for (int64_t e = 0; e < pd; ++e) dst[tok * pd + e] = src[p.index(tok, e)];
    return out;
}

Tensor unpatchify(const Tensor& tokens, const Shape& latent_shape, int64_t patch, int64_t f_patch) {
    const Shape& s = latent_shape;
    if (s.size() != 4 || s[1] % f_patch || s[2] % patch || s[3] % patch ||
        tokens.shape() != Shape{(s[1] / f_patch) * (s[2] / patch) * (s[3] / patch), f_patch * patch * patch * s[0]})
        raise<ShapeError>("Z-Image: tokens {} are not the {}x{} patches of a latent {}", shape_str(tokens.shape()),
                          patch, patch, shape_str(s));
    const PatchLayout p{s[0], s[1], s[2], s[3], f_patch, patch, patch, s[2] / patch, s[3] / patch};
    const int64_t n = tokens.size(0), pd = p.dim();
    Tensor v = Tensor::empty(s, tokens.dtype());
    const size_t es = dtype_size(tokens.dtype());
    uint8_t* dst = static_cast<uint8_t*>(v.raw());
    const uint8_t* src = static_cast<const uint8_t*>(tokens.raw());
    for (int64_t tok = 0; tok < n; ++tok)
        for (int64_t e = 0; e < pd; ++e)
            std::memcpy(dst + size_t(p.index(tok, e)) * es, src + size_t(tok * pd + e) * es, es);
    return v;
}

}  // namespace qdit::zimage
