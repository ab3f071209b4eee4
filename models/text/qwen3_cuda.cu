#include "models/text/qwen3_cuda.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <string>

#include <cuda_bf16.h>
#include <fmt/format.h>

#include "backend/cuda/bf16_gemm.h"
#include "backend/cuda/int8_gemm.h"
#include "backend/cuda/zimage_kernels.h"
#include "nn/rope_half.h"
#include "quant/int8.h"

namespace qdit::text {

using cuda::DTensor;
using cuda::MemKind;

namespace {

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// ---------------------------------------------------------------------------
// Linear layers: a Group is one or more Linears that read the same input and write column blocks of
// one output [M, n]; consecutive members of one precision are fused into one Part (one GEMM over
// their concatenated weights). The same scheme as models/zimage/transformer_cuda.cu.

struct Part {
    bool int8 = false;
    int64_t n = 0, col = 0;  // output columns [col, col + n)
    DTensor w;               // bf16 [n, k]
    DTensor q, wscale;       // int8 [n, kp], F32 [n]
    DTensor bias;            // bf16 [n] (bf16 part) or F32 [n] (int8 part), or undefined
};

struct Group {
    int64_t k = 0, kp = 0, n = 0;  // kp = k rounded up to 16: the int8 activations' row stride
    std::vector<Part> parts;
    bool needs_bf16() const {
        return std::any_of(parts.begin(), parts.end(), [](const Part& p) { return !p.int8; });
    }
    bool needs_int8() const {
        return std::any_of(parts.begin(), parts.end(), [](const Part& p) { return p.int8; });
    }
    size_t bytes() const {
        size_t b = 0;
        for (const Part& p : parts)
            for (const DTensor* t : {&p.w, &p.q, &p.wscale, &p.bias})
                if (t->defined()) b += t->nbytes();
        return b;
    }
};

// The activations a group reads: bf16 [m, ldx] and/or int8 [m, kp] with per-row scales.
struct Input {
    DTensor x;
    int64_t ldx = 0;
    DTensor q, qs;
};

void run_group(const Group& g, const Input& in, int64_t m, void* y, int64_t ldy, cudaStream_t s) {
    for (const Part& p : g.parts) {
        void* yp = static_cast<__nv_bfloat16*>(y) + p.col;
        if (p.int8)
            cuda::int8_gemm_bf16(in.q.data<int8_t>(), g.kp, in.qs.data<float>(), p.q.data<int8_t>(), g.kp,
                                 p.wscale.data<float>(), p.bias.defined() ? p.bias.data<float>() : nullptr, yp, ldy,
                                 m, p.n, g.kp, s);
        else
            cuda::bf16_gemm(in.x.raw(), in.ldx, p.w.raw(), g.k, p.bias.defined() ? p.bias.raw() : nullptr, yp, ldy,
                            m, p.n, g.k, s);
    }
}

Input make_input(const Group& g, int64_t m) {
    Input in;
    if (g.needs_bf16()) {
        in.x = DTensor::empty({m, g.k}, DType::BF16);
        in.ldx = g.k;
    }
    if (g.needs_int8()) {
        in.q = DTensor::empty({m, g.kp}, DType::I8);
        in.qs = DTensor::empty({m}, DType::F32);
    }
    return in;
}

void set_outputs(cuda::RowOp& op, Input& in, const Group& g) {
    if (in.x.defined()) {
        op.out = in.x.raw();
        op.ldo = in.ldx;
    }
    if (in.q.defined()) {
        op.q = in.q.data<int8_t>();
        op.qs = in.qs.data<float>();
        op.ldq = g.kp;
    }
}

// One member of a group: its plan, the rows it occupies (n_pad >= out_features, extra rows zero)
// and the columns its weight is read with (k_pad >= in_features, extra columns zero).
struct Member {
    const LayerPlan* plan;
    int64_t n_pad, k_pad;
};

// Host weight [out, in] of one Linear as the plan says: int8 (stored, or quantized here from the
// stored weight as load_linear does) or bf16; bias F32 for int8, bf16 otherwise.
void host_linear(const Checkpoint& ck, const LayerPlan& l, Tensor* w, Tensor* scale, Tensor* bias) {
    const std::string& name = l.spec.name;
    const bool int8 = l.precision == Precision::Int8;
    *bias = l.spec.bias ? ck.get_as(name + ".bias", int8 ? DType::F32 : DType::BF16) : Tensor();
    if (l.prequantized) {
        *w = ck.get(name + ".weight");
        *scale = ck.get_as(name + ".weight_scale", DType::F32).view({l.spec.out_features});
    } else if (int8) {
        Tensor q;
        quantize_weight_int8(ck.get(name + ".weight"), &q, scale);
        *w = q;
    } else {
        *w = ck.get_as(name + ".weight", DType::BF16);
    }
}

// Rows [r0, r0 + n) of dst [*, kdst] ← src [n, k] (host, same element size); the rest left as is.
void copy_block(const Tensor& src, Tensor& dst, int64_t r0, int64_t kdst) {
    const int64_t n = src.size(0), k = src.size(1);
    const size_t es = dtype_size(src.dtype());
    for (int64_t r = 0; r < n; ++r)
        std::memcpy(static_cast<uint8_t*>(dst.raw()) + size_t((r0 + r) * kdst) * es,
                    static_cast<const uint8_t*>(src.raw()) + size_t(r * k) * es, size_t(k) * es);
}

Part make_part(const Checkpoint& ck, const std::vector<Member>& ms, bool int8, int64_t k, int64_t kp, int64_t col,
               cudaStream_t s) {
    Part p;
    p.int8 = int8;
    p.col = col;
    for (const Member& m : ms) p.n += m.n_pad;
    const bool any_bias = std::any_of(ms.begin(), ms.end(), [](const Member& m) { return m.plan->spec.bias; });
    Tensor wcat = Tensor::zeros({p.n, int8 ? kp : k}, int8 ? DType::I8 : DType::BF16);
    Tensor scat = Tensor::empty({p.n}, DType::F32), bcat = Tensor::zeros({p.n}, DType::F32);
    for (int64_t i = 0; i < p.n; ++i) scat.data<float>()[i] = 1.f;
    int64_t r0 = 0;
    for (const Member& m : ms) {
        Tensor w, scale, bias;
        host_linear(ck, *m.plan, &w, &scale, &bias);
        if (w.dim() != 2 || w.size(0) != m.plan->spec.out_features || w.size(1) != m.plan->spec.in_features)
            raise<ShapeError>("{}: weight is {}, expected [{}, {}]", m.plan->spec.name, shape_str(w.shape()),
                              m.plan->spec.out_features, m.plan->spec.in_features);
        // A zero-padded K (down_proj reading the padded intermediate) is placed by row, so the
        // extra columns of wcat stay zero.
        copy_block(w, wcat, r0, int8 ? kp : k);
        if (int8) std::memcpy(scat.data<float>() + r0, scale.raw(), size_t(w.size(0)) * 4);
        if (bias.defined()) std::memcpy(bcat.data<float>() + r0, bias.to(DType::F32).raw(), size_t(w.size(0)) * 4);
        r0 += m.n_pad;
    }
    if (int8) {
        p.q = DTensor::upload(wcat, MemKind::Weight, s);
        p.wscale = DTensor::upload(scat, MemKind::Weight, s);
    } else {
        p.w = DTensor::upload(wcat, MemKind::Weight, s);
    }
    if (any_bias) p.bias = DTensor::upload(int8 ? bcat : bcat.to(DType::BF16), MemKind::Weight, s);
    return p;
}

// k: the (padded) input width every member is read with.
Group make_group(const Checkpoint& ck, const std::vector<Member>& ms, int64_t k, cudaStream_t s) {
    Group g;
    g.k = k;
    g.kp = round_up(k, 16);
    for (const Member& m : ms) {
        if (m.k_pad != k)
            raise<ShapeError>("{}: fused with layers of {} inputs, has {}", m.plan->spec.name, k, m.k_pad);
        g.n += m.n_pad;
    }
    size_t i = 0;
    int64_t col = 0;
    while (i < ms.size()) {
        const bool int8 = ms[i].plan->precision == Precision::Int8;
        std::vector<Member> run;
        while (i < ms.size() && (ms[i].plan->precision == Precision::Int8) == int8) run.push_back(ms[i++]);
        g.parts.push_back(make_part(ck, run, int8, g.k, g.kp, col, s));
        col += g.parts.back().n;
    }
    return g;
}

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
        Group g = make_group(ck, ms, ms[0].k_pad, stream);
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
        if (L.o.needs_int8()) {
            oin.q = DTensor::empty({n, L.o.kp}, DType::I8);
            oin.qs = DTensor::empty({n}, DType::F32);
            cuda::RowOp op;
            op.x = oin.x.raw();
            op.ldx = H * hd;
            op.q = oin.q.data<int8_t>();
            op.qs = oin.qs.data<float>();
            op.ldq = L.o.kp;
            op.m = n;
            op.k = H * hd;
            cuda::row_op(op, s);
        }
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
