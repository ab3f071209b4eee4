#include "models/zimage/transformer.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <map>

#include <fmt/format.h>

#include "backend/cpu/activation.h"
#include "backend/cpu/attention.h"
#include "backend/cpu/elementwise.h"

namespace qdit::zimage {

namespace {

constexpr int64_t kSeqMultiple = 32;   // SEQ_MULTI_OF: segments are padded to this
constexpr float kAttnNormEps = 1e-5f;  // diffusers' Attention(eps=1e-5) for norm_q / norm_k
constexpr float kFinalNormEps = 1e-6f;

int64_t round_up(int64_t n) { return (n + kSeqMultiple - 1) / kSeqMultiple * kSeqMultiple; }

// F32 [B, D] from rows of `m` [B, n·D] (chunk c of each row), each value
// mapped by f and rounded to the compute dtype as torch's bf16 op would.
template <typename F>
Tensor chunk_map(const Tensor& m, int64_t chunks, int64_t c, F&& f) {
    const int64_t B = m.size(0), D = m.size(1) / chunks;
    Tensor out = Tensor::empty({B, D}, DType::F32);
    cpu::dispatch_float(m.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const T* src = m.data<T>();
        float* dst = out.data<float>();
        for (int64_t b = 0; b < B; ++b)
            for (int64_t i = 0; i < D; ++i)
                dst[b * D + i] = cpu::round_as<T>(f(cpu::load(src, b * m.size(1) + c * D + i)));
    });
    return out;
}

// U8 [B, L] with 1 on the first lens[b] keys, or undefined when no item is
// shorter than L (diffusers builds no mask then).
Tensor key_mask(const std::vector<int64_t>& lens, int64_t L) {
    if (std::all_of(lens.begin(), lens.end(), [&](int64_t n) { return n == L; })) return Tensor();
    Tensor m = Tensor::zeros({int64_t(lens.size()), L}, DType::U8);
    for (size_t b = 0; b < lens.size(); ++b)
        std::memset(m.data<uint8_t>() + int64_t(b) * L, 1, size_t(lens[b]));
    return m;
}

// Per-item rotation tables (F32 [n_b, half, 2]) stacked into [B, L, half, 2];
// rows past an item's length (batch padding) stay zero as in diffusers.
Tensor stack_freqs(const std::vector<Tensor>& items, int64_t L) {
    const int64_t half = items[0].size(1);
    Tensor out = Tensor::zeros({int64_t(items.size()), L, half, 2}, DType::F32);
    for (size_t b = 0; b < items.size(); ++b)
        std::memcpy(out.data<float>() + int64_t(b) * L * half * 2, items[b].raw(), items[b].nbytes());
    return out;
}

// Copies `n` rows of `dim` elements of the same dtype.
void copy_rows(const Tensor& src, int64_t src_row, Tensor& dst, int64_t dst_row, int64_t n,
               int64_t dim) {
    const size_t es = dtype_size(src.dtype()), bytes = size_t(dim) * es;
    std::memcpy(static_cast<uint8_t*>(dst.raw()) + size_t(dst_row) * bytes,
                static_cast<const uint8_t*>(src.raw()) + size_t(src_row) * bytes, bytes * size_t(n));
}

// Lays the embedded real rows of each item (concatenated in `emb`) out as
// [B, L, D]: item b's n_real[b] rows, then the pad token up to padded[b];
// rows past that stay zero (batch padding).
Tensor pad_segments(const Tensor& emb, const std::vector<int64_t>& n_real,
                    const std::vector<int64_t>& padded, int64_t L, const Tensor& pad_token) {
    const int64_t B = int64_t(n_real.size()), D = emb.size(-1);
    Tensor out = Tensor::zeros({B, L, D}, emb.dtype());
    int64_t row0 = 0;
    for (int64_t b = 0; b < B; ++b) {
        copy_rows(emb, row0, out, b * L, n_real[size_t(b)], D);
        for (int64_t r = n_real[size_t(b)]; r < padded[size_t(b)]; ++r)
            copy_rows(pad_token, 0, out, b * L + r, 1, D);
        row0 += n_real[size_t(b)];
    }
    return out;
}

}  // namespace

// ---------------------------------------------------------------------------
// Blocks

Tensor Attention::forward(const Tensor& x, const Tensor& mask, const Tensor& freqs) const {
    const int64_t B = x.size(0), L = x.size(1), D = x.size(2), hd = D / heads;
    Tensor q = to_q.forward(x).view({B, L, heads, hd});
    Tensor k = to_k.forward(x).view({B, L, heads, hd});
    Tensor v = to_v.forward(x).view({B, L, heads, hd});
    if (!norm_q.name().empty()) {
        q = norm_q.forward(q);
        k = norm_k.forward(k);
    }
    cpu::apply_rope(q, freqs);
    cpu::apply_rope(k, freqs);
    Tensor o = cpu::scaled_dot_product_attention(q, k, v, mask);
    return to_out.forward(o.view({B, L, D}));
}

Tensor TransformerBlock::forward(const Tensor& x_in, const Tensor& mask, const Tensor& freqs,
                                 const Tensor& adaln) const {
    Tensor x = x_in.to(x_in.dtype());  // the residual stream is updated in place below
    if (!modulated) {
        attention_norm2.add_to(x, attention.forward(attention_norm1.forward(x), mask, freqs), {});
        ffn_norm2.add_to(x, feed_forward.forward(ffn_norm1.forward(x)), {});
        return x;
    }
    // mod = [scale_msa, gate_msa, scale_mlp, gate_mlp]; scales become 1 + s, gates tanh(g).
    Tensor mod = adaLN_modulation.forward(adaln);
    auto one_plus = [](float s) { return 1.0f + s; };
    auto tanh = [](float g) { return std::tanh(g); };
    Tensor scale_msa = chunk_map(mod, 4, 0, one_plus), gate_msa = chunk_map(mod, 4, 1, tanh),
           scale_mlp = chunk_map(mod, 4, 2, one_plus), gate_mlp = chunk_map(mod, 4, 3, tanh);
    attention_norm2.add_to(
        x, attention.forward(attention_norm1.forward_scaled(x, scale_msa), mask, freqs), gate_msa);
    ffn_norm2.add_to(x, feed_forward.forward(ffn_norm1.forward_scaled(x, scale_mlp)), gate_mlp);
    return x;
}

// ---------------------------------------------------------------------------
// Loading

ZImageTransformer::ZImageTransformer(const PreparedModel& m, DType compute)
    : cfg_(Config::from_json(m.folder.config, m.folder.config_path)), dt_(compute) {
    if (compute != DType::F32 && compute != DType::BF16)
        raise<ConfigError>("Z-Image runs in F32 or BF16, not {}", dtype_name(compute));
    std::map<std::string, const LayerPlan*> plans;
    for (const LayerPlan& l : m.plan.layers) plans[l.spec.name] = &l;
    auto linear = [&](const std::string& name) {
        auto it = plans.find(name);
        if (it == plans.end())
            raise<ShapeError>("{}: no Linear layer '{}' in the model plan", m.folder.root, name);
        return load_linear(m, *it->second, dt_);
    };
    auto tensor = [&](const std::string& name) { return m.checkpoint->get_as(name, dt_); };
    const float eps = float(cfg_.norm_eps);
    auto rms = [&](const std::string& name, float e) {
        return cpu::RMSNorm(name, tensor(name + ".weight"), e);
    };
    auto block = [&](const std::string& p, bool modulated) {
        TransformerBlock b;
        b.name = p;
        b.attention.to_q = linear(p + ".attention.to_q");
        b.attention.to_k = linear(p + ".attention.to_k");
        b.attention.to_v = linear(p + ".attention.to_v");
        b.attention.to_out = linear(p + ".attention.to_out.0");
        if (cfg_.qk_norm) {
            b.attention.norm_q = rms(p + ".attention.norm_q", kAttnNormEps);
            b.attention.norm_k = rms(p + ".attention.norm_k", kAttnNormEps);
        }
        b.attention.heads = cfg_.n_heads;
        b.feed_forward = {linear(p + ".feed_forward.w1"), linear(p + ".feed_forward.w2"),
                          linear(p + ".feed_forward.w3")};
        b.attention_norm1 = rms(p + ".attention_norm1", eps);
        b.attention_norm2 = rms(p + ".attention_norm2", eps);
        b.ffn_norm1 = rms(p + ".ffn_norm1", eps);
        b.ffn_norm2 = rms(p + ".ffn_norm2", eps);
        b.modulated = modulated;
        if (modulated) b.adaLN_modulation = linear(p + ".adaLN_modulation.0");
        return b;
    };

    patch_ = cfg_.all_patch_size[0];
    f_patch_ = cfg_.all_f_patch_size[0];
    const std::string key = fmt::format("{}-{}", patch_, f_patch_);
    t_mlp0_ = linear("t_embedder.mlp.0");
    t_mlp2_ = linear("t_embedder.mlp.2");
    cap_norm_ = rms("cap_embedder.0", eps);
    cap_linear_ = linear("cap_embedder.1");
    x_embedder_ = linear("all_x_embedder." + key);
    final_linear_ = linear("all_final_layer." + key + ".linear");
    final_adaLN_ = linear("all_final_layer." + key + ".adaLN_modulation.1");
    x_pad_token_ = tensor("x_pad_token").view({cfg_.dim});
    cap_pad_token_ = tensor("cap_pad_token").view({cfg_.dim});
    for (int64_t i = 0; i < cfg_.n_refiner_layers; ++i)
        noise_refiner_.push_back(block(fmt::format("noise_refiner.{}", i), true));
    for (int64_t i = 0; i < cfg_.n_refiner_layers; ++i)
        context_refiner_.push_back(block(fmt::format("context_refiner.{}", i), false));
    for (int64_t i = 0; i < cfg_.n_layers; ++i)
        layers_.push_back(block(fmt::format("layers.{}", i), true));
    rope_ = cpu::RopeEmbedder(cfg_.rope_theta, cfg_.axes_dims, cfg_.axes_lens);
}

// ---------------------------------------------------------------------------
// Forward

// t_embedder(t · t_scale): sinusoidal features in f32, cast to the weight
// dtype, Linear → SiLU → Linear. The result (no SiLU) feeds every adaLN.
Tensor ZImageTransformer::timestep_embed(const Tensor& t) const {
    Tensor ts = Tensor::empty(t.shape(), DType::F32);
    for (int64_t i = 0; i < t.numel(); ++i)
        ts.data<float>()[i] = t.data<float>()[i] * float(cfg_.t_scale);
    Tensor f = cpu::timestep_embedding(ts, t_mlp0_.in_features()).to(dt_);
    return t_mlp2_.forward(cpu::silu(t_mlp0_.forward(f)));
}

std::vector<Tensor> ZImageTransformer::forward(const std::vector<Tensor>& xs, const Tensor& t,
                                               const std::vector<Tensor>& caps) const {
    const int64_t B = int64_t(xs.size()), D = cfg_.dim, C = cfg_.in_channels;
    const int64_t pH = patch_, pW = patch_, pF = f_patch_, patch_dim = pF * pH * pW * C;
    if (B == 0 || int64_t(caps.size()) != B)
        raise<ShapeError>("Z-Image forward: {} latents and {} caption feature tensors (need the "
                          "same number, at least 1)",
                          xs.size(), caps.size());
    if (t.dtype() != DType::F32 || t.dim() != 1 || t.size(0) != B)
        raise<ShapeError>("Z-Image forward: t must be F32 [{}], got {} {}", B, dtype_name(t.dtype()),
                          shape_str(t.shape()));

    // Token counts: an item's image and caption segments are each padded to a
    // multiple of 32; the main layers see [image (padded), caption (padded)].
    const size_t nb = xs.size();
    std::vector<int64_t> n_img(nb), img_len(nb), n_cap(nb), cap_len(nb), uni_len(nb);
    std::vector<std::array<int64_t, 3>> grid(nb);  // F, H, W in tokens
    for (int64_t b = 0; b < B; ++b) {
        const Tensor& x = xs[b];
        const Tensor& c = caps[b];
        if (x.dim() != 4 || x.size(0) != C || x.size(1) % pF || x.size(2) % pH || x.size(3) % pW ||
            x.numel() == 0 || !is_float(x.dtype()))
            raise<ShapeError>("Z-Image forward: latent {} must be float [{}, F, H, W] with F a "
                              "multiple of {} and H, W multiples of {}, got {} {}",
                              b, C, pF, pH, dtype_name(x.dtype()), shape_str(x.shape()));
        if (c.dim() != 2 || c.size(0) < 1 || c.size(1) != cfg_.cap_feat_dim || !is_float(c.dtype()))
            raise<ShapeError>("Z-Image forward: cap_feats {} must be float [L >= 1, {}], got {} {}", b,
                              cfg_.cap_feat_dim, dtype_name(c.dtype()), shape_str(c.shape()));
        grid[b] = {x.size(1) / pF, x.size(2) / pH, x.size(3) / pW};
        n_img[b] = grid[b][0] * grid[b][1] * grid[b][2];
        img_len[b] = round_up(n_img[b]);
        n_cap[b] = c.size(0);
        cap_len[b] = round_up(n_cap[b]);
        uni_len[b] = img_len[b] + cap_len[b];
    }
    const int64_t Lx = *std::max_element(img_len.begin(), img_len.end());
    const int64_t Lc = *std::max_element(cap_len.begin(), cap_len.end());
    const int64_t Lu = *std::max_element(uni_len.begin(), uni_len.end());

    Tensor adaln = timestep_embed(t);

    // Positions. Caption token j (pad included): (1 + j, 0, 0). Image token
    // (f, h, w): (cap_len + 1 + f, h, w); image pad tokens (0, 0, 0).
    std::vector<Tensor> x_freqs, cap_freqs, uni_freqs;
    for (int64_t b = 0; b < B; ++b) {
        std::vector<int64_t> pos;
        for (int64_t j = 0; j < cap_len[b]; ++j) pos.insert(pos.end(), {1 + j, 0, 0});
        cap_freqs.push_back(rope_.freqs(pos));
        pos.clear();
        const auto [Ft, Ht, Wt] = grid[b];
        for (int64_t f = 0; f < Ft; ++f)
            for (int64_t h = 0; h < Ht; ++h)
                for (int64_t w = 0; w < Wt; ++w) pos.insert(pos.end(), {cap_len[b] + 1 + f, h, w});
        pos.resize(size_t(img_len[b] * 3), 0);
        x_freqs.push_back(rope_.freqs(pos));
        Tensor u = Tensor::empty({uni_len[b], x_freqs.back().size(1), 2}, DType::F32);
        std::memcpy(u.raw(), x_freqs.back().raw(), x_freqs.back().nbytes());
        std::memcpy(static_cast<uint8_t*>(u.raw()) + x_freqs.back().nbytes(), cap_freqs.back().raw(),
                    cap_freqs.back().nbytes());
        uni_freqs.push_back(u);
    }

    // Patchify: token (f, h, w) holds the values ordered (pf, ph, pw, c), c fastest.
    int64_t total_img = 0;
    for (int64_t n : n_img) total_img += n;
    Tensor patches = Tensor::empty({total_img, patch_dim}, dt_);
    {
        int64_t row0 = 0;
        for (int64_t b = 0; b < B; ++b) {
            Tensor x = xs[b].to(DType::F32);
            const float* xp = x.data<float>();
            const int64_t F = x.size(1), H = x.size(2), W = x.size(3);
            const int64_t Ht = grid[b][1], Wt = grid[b][2], tokens = n_img[b];
            cpu::dispatch_float(dt_, [&](auto tag) {
                using T = decltype(tag);
                T* out = patches.data<T>() + row0 * patch_dim;
                for (int64_t tok = 0; tok < tokens; ++tok) {
                    const int64_t f = tok / (Ht * Wt), h = (tok / Wt) % Ht, w = tok % Wt;
                    for (int64_t e = 0; e < patch_dim; ++e) {
                        const int64_t c = e % C, pw = (e / C) % pW, ph = (e / (C * pW)) % pH,
                                      pf = e / (C * pW * pH);
                        const int64_t src = ((c * F + f * pF + pf) * H + h * pH + ph) * W + w * pW + pw;
                        cpu::store(out, tok * patch_dim + e, xp[src]);
                    }
                }
            });
            row0 += n_img[b];
        }
    }

    // Embed only the real patches: diffusers embeds copies of the last patch
    // in the pad rows and then overwrites them with x_pad_token, so the result
    // is the same. Rows past an item's padded length are zero (batch padding).
    Tensor x = pad_segments(x_embedder_.forward(patches), n_img, img_len, Lx, x_pad_token_);
    {
        const Tensor mask = key_mask(img_len, Lx), freqs = stack_freqs(x_freqs, Lx);
        for (const TransformerBlock& blk : noise_refiner_) x = blk.forward(x, mask, freqs, adaln);
    }

    // Caption: RMSNorm + Linear on the real tokens, then pad tokens.
    int64_t total_cap = 0;
    for (int64_t n : n_cap) total_cap += n;
    Tensor cap_in = Tensor::empty({total_cap, cfg_.cap_feat_dim}, dt_);
    {
        int64_t row0 = 0;
        for (int64_t b = 0; b < B; ++b) {
            Tensor c = caps[b].to(dt_);
            copy_rows(c, 0, cap_in, row0, n_cap[b], cfg_.cap_feat_dim);
            row0 += n_cap[b];
        }
    }
    Tensor cap = pad_segments(cap_linear_.forward(cap_norm_.forward(cap_in)), n_cap, cap_len, Lc,
                              cap_pad_token_);
    {
        const Tensor mask = key_mask(cap_len, Lc), freqs = stack_freqs(cap_freqs, Lc);
        for (const TransformerBlock& blk : context_refiner_) cap = blk.forward(cap, mask, freqs, {});
    }

    // Unified sequence per item: [image (padded), caption (padded)].
    Tensor u = Tensor::zeros({B, Lu, D}, dt_);
    for (int64_t b = 0; b < B; ++b) {
        copy_rows(x, b * Lx, u, b * Lu, img_len[b], D);
        copy_rows(cap, b * Lc, u, b * Lu + img_len[b], cap_len[b], D);
    }
    {
        const Tensor mask = key_mask(uni_len, Lu), freqs = stack_freqs(uni_freqs, Lu);
        for (const TransformerBlock& blk : layers_) u = blk.forward(u, mask, freqs, adaln);
    }

    // Final layer, row-wise, so only the real image tokens are computed:
    // linear(LayerNorm(x) · (1 + adaLN_modulation.1(SiLU(adaln)))).
    const int64_t Ti = *std::max_element(n_img.begin(), n_img.end());
    Tensor img = Tensor::zeros({B, Ti, D}, dt_);
    for (int64_t b = 0; b < B; ++b) copy_rows(u, b * Lu, img, b * Ti, n_img[b], D);
    Tensor scale = chunk_map(final_adaLN_.forward(cpu::silu(adaln)), 1, 0,
                             [](float s) { return 1.0f + s; });
    Tensor out = final_linear_.forward(cpu::layer_norm(img, kFinalNormEps, scale));

    // Unpatchify: the inverse of the patch layout above.
    std::vector<Tensor> result;
    for (int64_t b = 0; b < B; ++b) {
        const Tensor& x0 = xs[b];
        const int64_t F = x0.size(1), H = x0.size(2), W = x0.size(3);
        const auto [Ft, Ht, Wt] = grid[b];
        Tensor y = Tensor::empty({C, F, H, W}, dt_);
        const size_t es = dtype_size(dt_);
        const uint8_t* src = static_cast<const uint8_t*>(out.raw()) + size_t(b * Ti * patch_dim) * es;
        uint8_t* dst = static_cast<uint8_t*>(y.raw());
        for (int64_t tok = 0; tok < Ft * Ht * Wt; ++tok) {
            const int64_t f = tok / (Ht * Wt), h = (tok / Wt) % Ht, w = tok % Wt;
            for (int64_t e = 0; e < patch_dim; ++e) {
                const int64_t c = e % C, pw = (e / C) % pW, ph = (e / (C * pW)) % pH,
                              pf = e / (C * pW * pH);
                const int64_t d = ((c * F + f * pF + pf) * H + h * pH + ph) * W + w * pW + pw;
                std::memcpy(dst + size_t(d) * es, src + size_t(tok * patch_dim + e) * es, es);
            }
        }
        result.push_back(y);
    }
    return result;
}

}  // namespace qdit::zimage
