#include "models/text/qwen3_cuda.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <string>

#include <cuda_bf16.h>
#include <fmt/format.h>

#include "backend/cuda/zimage_kernels.h"
#include "nn/linear_cuda.h"
#include "nn/rope_half.h"

namespace qdit::text {

using cuda::DTensor;
using cuda::MemKind;
using nn::gpu::Group;
using nn::gpu::Input;
using nn::gpu::Member;
using nn::gpu::make_input;
using nn::gpu::run_group;
using nn::gpu::set_outputs;

namespace {

struct Layer {
    Group qkv, o, gate_up, down;
    DTensor input_norm, post_norm, q_norm, k_norm;  // bf16 [hidden] / [head_dim]
};

}  // namespace

// ---------------------------------------------------------------------------

struct Qwen3TextModelCuda::Weights {
    Qwen3Config cfg;
    std::string where;  // the folder, for errors
    cudaStream_t stream = nullptr;
    cuda::AttentionImpl attention = cuda::AttentionImpl::Auto;
    DTensor embed;  // bf16 [vocab, hidden]
    std::vector<Layer> layers;
    DTensor norm;
    nn::RotaryHalf rope;
    int64_t inter_p = 0;  // intermediate_size padded to 16
    int n_int8 = 0, n_linear = 0;
    size_t bytes = 0;
};

Qwen3TextModelCuda::Qwen3TextModelCuda(Qwen3TextModelCuda&&) noexcept = default;
Qwen3TextModelCuda::~Qwen3TextModelCuda() = default;

Qwen3TextModelCuda::Qwen3TextModelCuda(const PreparedModel& m, cudaStream_t stream)
    : w_(std::make_unique<Weights>()) {
    Weights& W = *w_;
    W.cfg = Qwen3Config::from_json(m.folder.config, m.folder.config_path);
    W.where = m.folder.root;
    W.stream = stream;
    const Qwen3Config& c = W.cfg;
    const Checkpoint& ck = *m.checkpoint;
    const int64_t D = c.hidden_size, hd = c.head_dim, I = c.intermediate_size;
    W.inter_p = round_up(I, 16);

    std::map<std::string, const LayerPlan*> plans;
    for (const LayerPlan& l : m.plan.layers) {
        plans[l.spec.name] = &l;
        ++W.n_linear;
        if (l.precision == Precision::Int8) ++W.n_int8;
    }
    auto member = [&](const std::string& name, int64_t n_pad = 0, int64_t k_pad = 0) {
        auto it = plans.find(name);
        if (it == plans.end())
            raise<ShapeError>("{}: no Linear layer '{}' in the model plan (Qwen3, CUDA)", W.where, name);
        const LinearSpec& sp = it->second->spec;
        return Member{it->second, std::max(n_pad, sp.out_features), std::max(k_pad, sp.in_features)};
    };
    auto group = [&](const std::vector<Member>& ms) {
        Group g = nn::gpu::make_group(ms, ms[0].k_pad, nn::gpu::WeightSource{&ck, 0, stream});
        W.bytes += g.bytes();
        return g;
    };
    auto vec = [&](const std::string& name, int64_t n) {
        Tensor t = ck.get_as(name, DType::BF16);
        if (t.numel() != n)
            raise<ShapeError>("{}: '{}' has {} values, expected {}", W.where, name, t.numel(), n);
        DTensor d = DTensor::upload(t.view({n}), MemKind::Weight, stream);
        W.bytes += d.nbytes();
        return d;
    };

    const std::string p = c.prefix();
    {
        // bf16 rows as the CPU model gathers them (an f32 table rounded to nearest even).
        const std::string name = p + "embed_tokens.weight";
        Tensor t = ck.get_as(name, DType::BF16);
        if (t.dim() != 2 || t.size(0) != c.vocab_size || t.size(1) != D)
            raise<ShapeError>("{}: '{}' is {}, expected [{}, {}]", W.where, name, shape_str(t.shape()), c.vocab_size,
                              D);
        W.embed = DTensor::upload(t, MemKind::Weight, stream);
        W.bytes += W.embed.nbytes();
    }
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
        const std::string l = fmt::format("{}layers.{}.", p, i);
        Layer L;
        L.qkv = group({member(l + "self_attn.q_proj"), member(l + "self_attn.k_proj"),
                       member(l + "self_attn.v_proj")});
        L.o = group({member(l + "self_attn.o_proj")});
        L.gate_up = group({member(l + "mlp.gate_proj", W.inter_p), member(l + "mlp.up_proj", W.inter_p)});
        L.down = group({member(l + "mlp.down_proj", 0, W.inter_p)});
        L.input_norm = vec(l + "input_layernorm.weight", D);
        L.post_norm = vec(l + "post_attention_layernorm.weight", D);
        L.q_norm = vec(l + "self_attn.q_norm.weight", hd);
        L.k_norm = vec(l + "self_attn.k_norm.weight", hd);
        W.layers.push_back(std::move(L));
    }
    W.norm = vec(p + "norm.weight", D);
    W.rope = nn::RotaryHalf(c.rope_theta, hd);
    cuda::check(cudaStreamSynchronize(stream), "Qwen3 (CUDA) weights");
}

const Qwen3Config& Qwen3TextModelCuda::config() const { return w_->cfg; }
int Qwen3TextModelCuda::int8_layers() const { return w_->n_int8; }
int Qwen3TextModelCuda::linear_layers() const { return w_->n_linear; }
size_t Qwen3TextModelCuda::weight_bytes() const { return w_->bytes; }
cudaStream_t Qwen3TextModelCuda::stream() const { return w_->stream; }
void Qwen3TextModelCuda::set_attention(cuda::AttentionImpl impl) { w_->attention = impl; }

DTensor Qwen3TextModelCuda::encode_device(const std::vector<int32_t>& ids, const std::vector<uint8_t>& mask,
                                          int from_end) const {
    const Weights& W = *w_;
    const Qwen3Config& c = W.cfg;
    cudaStream_t s = W.stream;
    const int64_t N = c.num_hidden_layers, D = c.hidden_size, hd = c.head_dim, H = c.num_attention_heads,
                  Hkv = c.num_key_value_heads, Ip = W.inter_p;
    const float eps = float(c.rms_norm_eps);

    // The CPU model's checks, with its messages.
    if (mask.size() != ids.size())
        raise<ShapeError>("Qwen3: {} ids but {} mask values", ids.size(), mask.size());
    if (from_end < 1 || from_end > N + 1)
        raise<ShapeError>("Qwen3: hidden state -{} does not exist (the model has {} hidden states, choose 1..{})",
                          from_end, N + 1, N + 1);
    std::vector<int32_t> kept;
    std::vector<int64_t> pos;
    for (size_t i = 0; i < ids.size(); ++i)
        if (mask[i]) {
            if (ids[i] < 0 || ids[i] >= c.vocab_size)
                raise<ShapeError>("{}: token id {} at position {} is outside the vocabulary [0, {})", W.where, ids[i],
                                  i, c.vocab_size);
            kept.push_back(ids[i]);
            pos.push_back(int64_t(i));
        }
    if (kept.empty()) raise<ShapeError>("Qwen3: the attention mask selects no token");
    const int64_t n = int64_t(kept.size());

    // Residual stream x [n, D] ← embedding rows.
    DTensor x = DTensor::empty({n, D}, DType::BF16);
    {
        Tensor hid = Tensor::empty({n}, DType::I32);
        std::memcpy(hid.raw(), kept.data(), size_t(n) * sizeof(int32_t));
        DTensor did = DTensor::upload(hid, MemKind::Activation, s);
        cuda::embedding_rows(W.embed.raw(), c.vocab_size, D, did.data<int32_t>(), n, x.raw(), D, s);
    }
    // hidden_states[-k] for k >= 2 is the output of the first N + 1 − k layers.
    const int64_t run_layers = from_end == 1 ? N : N + 1 - from_end;
    if (run_layers == 0) return x;
    const DTensor freqs = DTensor::upload(W.rope.freqs(pos), MemKind::Activation, s);

    const int64_t qkv_w = (H + 2 * Hkv) * hd;
    Input qin;  // the next layer's input_layernorm output
    {
        const Layer& L = W.layers[0];
        qin = make_input(L.qkv, n);
        cuda::RowOp op;
        op.x = x.raw();
        op.ldx = D;
        op.norm = cuda::RowNorm::Rms;
        op.w = L.input_norm.raw();
        op.eps = eps;
        op.m = n;
        op.k = D;
        set_outputs(op, qin, L.qkv);
        cuda::row_op(op, s);
    }
    DTensor out;  // the final norm's output (from_end 1)
    for (int64_t li = 0; li < run_layers; ++li) {
        const Layer& L = W.layers[size_t(li)];
        // Attention: q|k|v → q/k RMSNorm + RoPE → causal GQA → o_proj.
        DTensor qkv = DTensor::empty({n, qkv_w}, DType::BF16);
        run_group(L.qkv, qin, n, qkv.raw(), qkv_w, s);
        qin = Input();
        cuda::qk_norm_rope(qkv.raw(), qkv_w, H * hd, n, H, hd, L.q_norm.raw(), L.k_norm.raw(), eps,
                           freqs.data<float>(), s, cuda::RopeLayout::Half, Hkv);
        Input oin;
        oin.x = DTensor::empty({n, H * hd}, DType::BF16);
        oin.ldx = H * hd;
        const __nv_bfloat16* qp = qkv.data<__nv_bfloat16>();
        cuda::attention(qp, qkv_w, qp + H * hd, qkv_w, qp + (H + Hkv) * hd, qkv_w, oin.x.raw(), H * hd, n, H, hd, s,
                        W.attention, Hkv, /*causal=*/true);
        qkv = DTensor();
        nn::gpu::quantize_input(L.o, oin, n, s);
        DTensor y = DTensor::empty({n, D}, DType::BF16);
        run_group(L.o, oin, n, y.raw(), D, s);
        oin = Input();

        // x += attn; post_attention_layernorm(x) → gate|up → SwiGLU → down_proj.
        Input fin = make_input(L.gate_up, n);
        {
            cuda::RowOp op;
            op.x = x.raw();
            op.ldx = D;
            op.y = y.raw();
            op.ldy = D;
            op.norm = cuda::RowNorm::Rms;
            op.w = L.post_norm.raw();
            op.eps = eps;
            op.m = n;
            op.k = D;
            set_outputs(op, fin, L.gate_up);
            cuda::row_op(op, s);
        }
        DTensor h = DTensor::empty({n, 2 * Ip}, DType::BF16);
        run_group(L.gate_up, fin, n, h.raw(), 2 * Ip, s);
        fin = Input();
        Input gin = make_input(L.down, n);
        cuda::swiglu(h.raw(), 2 * Ip, n, Ip, gin.x.defined() ? gin.x.raw() : nullptr, Ip,
                     gin.q.defined() ? gin.q.data<int8_t>() : nullptr,
                     gin.q.defined() ? gin.qs.data<float>() : nullptr, L.down.kp, s);
        h = DTensor();
        run_group(L.down, gin, n, y.raw(), D, s);
        gin = Input();

        // x += mlp, fused with the next RMSNorm: the next layer's input_layernorm, or the final norm
        // when hidden_states[-1] is asked for, or none.
        cuda::RowOp op;
        op.x = x.raw();
        op.ldx = D;
        op.y = y.raw();
        op.ldy = D;
        op.m = n;
        op.k = D;
        if (li + 1 < run_layers) {
            const Layer& next = W.layers[size_t(li + 1)];
            qin = make_input(next.qkv, n);
            op.norm = cuda::RowNorm::Rms;
            op.w = next.input_norm.raw();
            op.eps = eps;
            set_outputs(op, qin, next.qkv);
        } else if (from_end == 1) {
            out = DTensor::empty({n, D}, DType::BF16);
            op.norm = cuda::RowNorm::Rms;
            op.w = W.norm.raw();
            op.eps = eps;
            op.out = out.raw();
            op.ldo = D;
        }
        cuda::row_op(op, s);
    }
    return from_end == 1 ? out : x;
}

Tensor Qwen3TextModelCuda::encode(const std::vector<int32_t>& ids, const std::vector<uint8_t>& mask,
                                  int from_end) const {
    return encode_device(ids, mask, from_end).download(w_->stream);
}

}  // namespace qdit::text
