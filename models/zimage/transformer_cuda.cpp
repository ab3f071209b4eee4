#ifdef QDIT_WITH_CUDA  // a CUDA build: this file is empty without the CUDA backend
#include "models/zimage/transformer_cuda.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>

#include <cuda_bf16.h>
#include <fmt/format.h>

#include "backend/cuda/row.h"
#include "backend/cuda/rope.h"
#include "backend/cuda/elementwise.h"
#include "backend/cpu/activation.h"
#include "nn/linear_cuda.h"
#include "backend/cpu/rope.h"
#include "parallel/communicator.h"
#include "nn/row_split_cuda.h"
#include "parallel/tensor_parallel.h"

namespace qdit::zimage {

using cuda::DTensor;
using cuda::MemKind;
using nn::gpu::Group;
using nn::gpu::Input;
using nn::gpu::Member;
using nn::gpu::make_input;
using nn::gpu::run_group;
using nn::gpu::set_outputs;

namespace {

constexpr int64_t kSeqMultiple = 32;
constexpr float kAttnNormEps = 1e-5f;
constexpr float kFinalNormEps = 1e-6f;

// Where the non-Linear weights come from (bf16 vectors: norms, pad tokens).
using VectorSource = std::function<DTensor(const std::string& name, int64_t n)>;

}  // namespace

// ---------------------------------------------------------------------------

struct Block {
    Group qkv, out, w13, w2, ada;  // ada: adaLN_modulation.0 (modulated blocks)
    DTensor norm_q, norm_k, attn_norm1, attn_norm2, ffn_norm1, ffn_norm2;
    bool modulated = false;
    int64_t hidden_p = 0;  // FFN hidden width padded to 16 (this rank's part of it under tensor parallelism)
    int64_t heads = 0;     // attention heads computed here (all, or this rank's)
};

// The transformer blocks of one sequence shape as a CUDA graph, with the buffers it reads and the
// allocator blocks it replays into.
struct StepGraph {
    cudaGraphExec_t exec = nullptr;
    int64_t lx = -1, lc = -1;
    std::array<int64_t, 3> grid{-1, -1, -1};
    DTensor u, freqs, adaln;  // inputs of the blocks, at fixed addresses
    std::vector<void*> held;  // activation blocks used inside the graph
    void reset() {
        if (exec) cudaGraphExecDestroy(exec);
        exec = nullptr;
        for (void* p : held) cuda::Allocator::instance().release(p);
        held.clear();
        u = freqs = adaln = DTensor();
        lx = lc = -1;
        grid = {-1, -1, -1};
    }
    StepGraph() = default;
    StepGraph(const StepGraph&) = delete;
    StepGraph& operator=(const StepGraph&) = delete;
    ~StepGraph() { reset(); }
};

struct ZImageTransformerCuda::Weights {
    Config cfg;
    bool use_graph = false;
    // Graphs of the last kGraphs sequence shapes (a CFG step alternates two), most recent last.
    static constexpr size_t kGraphs = 2;
    mutable std::vector<std::unique_ptr<StepGraph>> graphs;
    cudaStream_t stream = nullptr;
    cuda::AttentionImpl attention = cuda::AttentionImpl::Auto;
    int64_t patch = 2, f_patch = 1;
    Group t_mlp0, t_mlp2, cap_linear, x_embedder, final_linear, final_ada;
    DTensor cap_norm, x_pad, cap_pad;
    std::vector<Block> noise, context, layers;
    cpu::RopeEmbedder rope;
    int n_int8 = 0, n_linear = 0;
    size_t bytes = 0;
    // Several GPUs: this rank's communicator (null on one GPU) and how the model is split.
    parallel::Communicator* comm = nullptr;
    int rank = 0, world = 1;
    ParallelMode mode = ParallelMode::Tensor;
    bool tensor_parallel() const { return world > 1 && mode == ParallelMode::Tensor; }
    bool sequence_parallel() const { return world > 1 && mode == ParallelMode::Sequence; }

    void load(const QuantPlan& plan, const nn::gpu::WeightSource& src, const VectorSource& vector);
    // A block's last residual, x += gate · rms(y; w), left for the next block's first pass over x
    // to apply (saving one pass over the residual stream); flush() applies it alone.
    struct Pending {
        DTensor y, mod;  // y [L, D]; mod holds the gate
        const void* w = nullptr;
        const float* gate = nullptr;
        bool defined() const { return y.defined(); }
    };
    void block_forward(const Block& b, DTensor& x, const float* freqs, const DTensor& adaln, Pending& pending) const;
    // Sequence parallelism: attention of this rank's tokens' q|k|v [Lr, 3·D] (RoPE applied) over the
    // whole sequence (Lr·world tokens) into out [Lr, D], through two all-to-alls.
    void ulysses_attention(const DTensor& qkv, int64_t Lr, void* out) const;
    void flush(DTensor& x, Pending& pending) const;
};

void ZImageTransformerCuda::Weights::load(const QuantPlan& plan, const nn::gpu::WeightSource& src,
                                          const VectorSource& vector) {
    std::map<std::string, const LayerPlan*> plans;
    for (const LayerPlan& l : plan.layers) {
        plans[l.spec.name] = &l;
        ++n_linear;
        if (l.precision == Precision::Int8) ++n_int8;
    }
    auto member = [&](const std::string& name, int64_t n_pad = 0, int64_t k_pad = 0) {
        auto it = plans.find(name);
        if (it == plans.end()) raise<ShapeError>("Z-Image (CUDA): no Linear layer '{}' in the model plan", name);
        const LinearSpec& l = it->second->spec;
        return Member{it->second, std::max(n_pad, l.out_features), std::max(k_pad, l.in_features)};
    };
    auto group = [&](std::vector<Member> ms) {
        Group g = nn::gpu::make_group(ms, ms[0].k_pad, src);
        bytes += g.bytes();
        return g;
    };
    auto vec = [&](const std::string& name, int64_t n) {
        DTensor t = vector(name, n);
        bytes += t.nbytes();
        return t;
    };
    // A rank's window of a Linear (tensor parallelism): rows [r0, r0 + n), input columns [c0, c0 + k).
    auto shard = [&](const std::string& name, int64_t n, int64_t k, int64_t r0, int64_t c0) {
        auto it = plans.find(name);
        if (it == plans.end()) raise<ShapeError>("Z-Image (CUDA): no Linear layer '{}' in the model plan", name);
        return Member{it->second, n, k, true, r0, c0};
    };
    const int64_t D = cfg.dim, hd = cfg.head_dim();
    if (world > 1 && (cfg.n_heads < world || cfg.n_kv_heads != cfg.n_heads))
        raise<UsageError>("Z-Image (CUDA): {} parallelism over {} GPUs needs at least {} attention heads with as "
                          "many key/value heads; this model has {} heads, {} key/value heads",
                          mode == ParallelMode::Tensor ? "tensor" : "sequence", world, world, cfg.n_heads,
                          cfg.n_kv_heads);
    auto block = [&](const std::string& p, bool modulated) {
        Block b;
        b.modulated = modulated;
        const int64_t hidden = plans.at(p + ".feed_forward.w1")->spec.out_features;
        b.hidden_p = round_up(hidden, 16);
        if (!tensor_parallel()) {  // one GPU, or sequence parallelism: whole weights
            b.heads = cfg.n_heads;
            b.qkv = group({member(p + ".attention.to_q"), member(p + ".attention.to_k"), member(p + ".attention.to_v")});
            b.out = group({member(p + ".attention.to_out.0")});
            b.w13 = group({member(p + ".feed_forward.w1", b.hidden_p), member(p + ".feed_forward.w3", b.hidden_p)});
            // w2 reads the padded hidden activations: its K is padded with zero columns.
            b.w2 = group({member(p + ".feed_forward.w2", 0, b.hidden_p)});
        } else {
            // Megatron layout: whole heads of q/k/v and a block of the (padded) hidden width of
            // w1/w3 by rows (column split), to_out and w2 by the matching input columns (row split).
            const parallel::Range h = parallel::split(cfg.n_heads, rank, world);
            const parallel::Range f = parallel::split(b.hidden_p, rank, world, 16);
            b.heads = h.size();
            const int64_t dq = h.size() * hd;
            b.qkv = group({shard(p + ".attention.to_q", dq, D, h.begin * hd, 0),
                           shard(p + ".attention.to_k", dq, D, h.begin * hd, 0),
                           shard(p + ".attention.to_v", dq, D, h.begin * hd, 0)});
            b.out = group({shard(p + ".attention.to_out.0", D, dq, 0, h.begin * hd)});
            b.hidden_p = f.size();
            b.w13 = group({shard(p + ".feed_forward.w1", f.size(), D, f.begin, 0),
                           shard(p + ".feed_forward.w3", f.size(), D, f.begin, 0)});
            b.w2 = group({shard(p + ".feed_forward.w2", D, f.size(), 0, f.begin)});
        }
        if (cfg.qk_norm) {
            b.norm_q = vec(p + ".attention.norm_q.weight", hd);
            b.norm_k = vec(p + ".attention.norm_k.weight", hd);
        }
        b.attn_norm1 = vec(p + ".attention_norm1.weight", D);
        b.attn_norm2 = vec(p + ".attention_norm2.weight", D);
        b.ffn_norm1 = vec(p + ".ffn_norm1.weight", D);
        b.ffn_norm2 = vec(p + ".ffn_norm2.weight", D);
        if (modulated) b.ada = group({member(p + ".adaLN_modulation.0")});
        return b;
    };
    patch = cfg.all_patch_size[0];
    f_patch = cfg.all_f_patch_size[0];
    const std::string key = fmt::format("{}-{}", patch, f_patch);
    t_mlp0 = group({member("t_embedder.mlp.0")});
    t_mlp2 = group({member("t_embedder.mlp.2")});
    cap_norm = vec("cap_embedder.0.weight", cfg.cap_feat_dim);
    cap_linear = group({member("cap_embedder.1")});
    x_embedder = group({member("all_x_embedder." + key)});
    final_linear = group({member("all_final_layer." + key + ".linear")});
    final_ada = group({member("all_final_layer." + key + ".adaLN_modulation.1")});
    x_pad = vec("x_pad_token", D);
    cap_pad = vec("cap_pad_token", D);
    for (int64_t i = 0; i < cfg.n_refiner_layers; ++i) noise.push_back(block(fmt::format("noise_refiner.{}", i), true));
    for (int64_t i = 0; i < cfg.n_refiner_layers; ++i)
        context.push_back(block(fmt::format("context_refiner.{}", i), false));
    for (int64_t i = 0; i < cfg.n_layers; ++i) layers.push_back(block(fmt::format("layers.{}", i), true));
    rope = cpu::RopeEmbedder(cfg.rope_theta, cfg.axes_dims, cfg.axes_lens);
}

// x [L, D] updated in place; freqs F32 [L, hd/2, 2]; adaln bf16 [1, adaLN width].
// The residual-only pass: x += gate · rms(y).
void ZImageTransformerCuda::Weights::flush(DTensor& x, Pending& pending) const {
    if (!pending.defined()) return;
    cuda::RowOp op;
    op.x = x.raw();
    op.ldx = cfg.dim;
    op.y = pending.y.raw();
    op.ldy = cfg.dim;
    op.w_res = pending.w;
    op.eps_res = float(cfg.norm_eps);
    op.gate = pending.gate;
    op.m = x.size(0);
    op.k = cfg.dim;
    cuda::row_op(op, stream);
    pending = Pending();
}

// `pending` (another block's last residual on the same x, or empty) is applied in this block's
// first pass; this block's own last residual is left in it.
void ZImageTransformerCuda::Weights::block_forward(const Block& b, DTensor& x, const float* freqs,
                                                   const DTensor& adaln, Pending& pending) const {
    cudaStream_t s = stream;
    // H heads of q/k/v here (all of them, or this rank's under tensor parallelism), Dq = H·hd wide.
    const int64_t L = x.size(0), D = cfg.dim, H = b.heads, hd = cfg.head_dim(), Dq = H * hd;
    if (L == 0) return;
    // mod = [1 + scale_msa, tanh(gate_msa), 1 + scale_mlp, tanh(gate_mlp)] in F32.
    DTensor mod;
    const float *scale_msa = nullptr, *gate_msa = nullptr, *scale_mlp = nullptr, *gate_mlp = nullptr;
    if (b.modulated) {
        DTensor raw = DTensor::empty({1, 4 * D}, DType::BF16);
        Input ain;
        ain.x = adaln;
        ain.ldx = adaln.size(1);
        run_group(b.ada, ain, 1, raw.raw(), 4 * D, s);
        mod = DTensor::empty({4 * D}, DType::F32);
        cuda::modulation(raw.raw(), 4, D, 0b1010u, mod.data<float>(), s);
        scale_msa = mod.data<float>();
        gate_msa = scale_msa + D;
        scale_mlp = scale_msa + 2 * D;
        gate_mlp = scale_msa + 3 * D;
    }

    // Attention: (the previous block's residual, then) norm1 (· scale) → q|k|v → q/k norm + RoPE →
    // SDPA → to_out.
    Input qin = make_input(b.qkv, L);
    {
        cuda::RowOp op;
        op.x = x.raw();
        op.ldx = D;
        if (pending.defined()) {
            op.y = pending.y.raw();
            op.ldy = D;
            op.w_res = pending.w;
            op.eps_res = float(cfg.norm_eps);
            op.gate = pending.gate;
        }
        op.norm = cuda::RowNorm::Rms;
        op.w = b.attn_norm1.raw();
        op.eps = float(cfg.norm_eps);
        op.scale = scale_msa;
        op.m = L;
        op.k = D;
        set_outputs(op, qin, b.qkv);
        cuda::row_op(op, s);
        pending = Pending();
    }
    DTensor qkv = DTensor::empty({L, 3 * Dq}, DType::BF16);
    run_group(b.qkv, qin, L, qkv.raw(), 3 * Dq, s);
    qin = Input();
    cuda::qk_norm_rope(qkv.raw(), 3 * Dq, Dq, L, H, hd, b.norm_q.defined() ? b.norm_q.raw() : nullptr,
                       b.norm_k.defined() ? b.norm_k.raw() : nullptr, kAttnNormEps, freqs, s);
    Input oin;
    oin.x = DTensor::empty({L, Dq}, DType::BF16);
    oin.ldx = Dq;
    if (sequence_parallel()) {
        ulysses_attention(qkv, L, oin.x.raw());
    } else {
        const __nv_bfloat16* qp = qkv.data<__nv_bfloat16>();
        cuda::attention(qp, 3 * Dq, qp + Dq, 3 * Dq, qp + 2 * Dq, 3 * Dq, oin.x.raw(), Dq, L, H, hd, s, attention);
    }
    qkv = DTensor();
    DTensor y = DTensor::empty({L, D}, DType::BF16);
    if (!tensor_parallel()) {
        nn::gpu::quantize_input(b.out, oin, L, s);
        run_group(b.out, oin, L, y.raw(), D, s);
    } else {
        nn::gpu::run_row_split(b.out, oin, L, y.raw(), D, *comm, s);  // every rank gets the whole y
    }
    oin = Input();

    // x += gate_msa · norm2(attn); then ffn_norm1(x) · scale_mlp, in one pass.
    Input fin = make_input(b.w13, L);
    {
        cuda::RowOp op;
        op.x = x.raw();
        op.ldx = D;
        op.y = y.raw();
        op.ldy = D;
        op.w_res = b.attn_norm2.raw();
        op.eps_res = float(cfg.norm_eps);
        op.gate = gate_msa;
        op.norm = cuda::RowNorm::Rms;
        op.w = b.ffn_norm1.raw();
        op.eps = float(cfg.norm_eps);
        op.scale = scale_mlp;
        op.m = L;
        op.k = D;
        set_outputs(op, fin, b.w13);
        cuda::row_op(op, s);
    }
    const int64_t Hp = b.hidden_p;
    DTensor h = DTensor::empty({L, 2 * Hp}, DType::BF16);
    run_group(b.w13, fin, L, h.raw(), 2 * Hp, s);
    fin = Input();
    if (!tensor_parallel()) {
        Input gin = make_input(b.w2, L);
        cuda::swiglu(h.raw(), 2 * Hp, L, Hp, gin.x.defined() ? gin.x.raw() : nullptr, Hp,
                     gin.q.defined() ? gin.q.data<int8_t>() : nullptr, gin.q.defined() ? gin.qs.data<float>() : nullptr,
                     b.w2.kp, s);
        h = DTensor();
        run_group(b.w2, gin, L, y.raw(), D, s);
    } else {
        // The row split quantizes with the whole token's absmax, so SwiGLU writes bf16 only.
        Input gin;
        gin.x = DTensor::empty({L, Hp}, DType::BF16);
        gin.ldx = Hp;
        cuda::swiglu(h.raw(), 2 * Hp, L, Hp, gin.x.raw(), Hp, nullptr, nullptr, 0, s);
        h = DTensor();
        nn::gpu::run_row_split(b.w2, gin, L, y.raw(), D, *comm, s);
    }

    // x += gate_mlp · ffn_norm2(ffn): left to the next block's first pass (or flush()).
    pending.y = y;
    pending.mod = mod;
    pending.w = b.ffn_norm2.raw();
    pending.gate = gate_mlp;
}

// Ulysses: every rank sends each rank j the q|k|v of its own tokens for j's heads split(H, j) and
// receives every token for its heads; attention runs on those; the second all-to-all returns each
// rank its tokens with every head. Blocks are padded to the largest head count (heads need not
// divide evenly); the padding columns are zeros and never read. The received rows are in global token order
// (rank s's block holds tokens [s·Lr, (s+1)·Lr)), so attention sees the keys in the one-GPU order.
void ZImageTransformerCuda::Weights::ulysses_attention(const DTensor& qkv, int64_t Lr, void* out) const {
    cudaStream_t s = stream;
    const int64_t D = cfg.dim, H = cfg.n_heads, hd = cfg.head_dim(), L = Lr * world;
    const int64_t Hm = parallel::split(H, 0, world).size(), wq = 3 * Hm * hd;  // a received row: q|k|v, Hm heads each
    DTensor send = DTensor::empty({world * Lr, wq}, DType::BF16), recv = DTensor::empty({L, wq}, DType::BF16);
    const size_t es = 2;
    const bool uneven = Hm * world != H;  // then some blocks carry padding: zeroed, so no byte sent is undefined
    if (uneven) cuda::check(cudaMemsetAsync(send.raw(), 0, send.nbytes(), s), "sequence parallel: padding");
    for (int j = 0; j < world; ++j) {
        const parallel::Range h = parallel::split(H, j, world);
        for (int part = 0; part < 3; ++part)
            cuda::check(cudaMemcpy2DAsync(send.data<__nv_bfloat16>() + j * Lr * wq + part * Hm * hd, size_t(wq) * es,
                                          qkv.data<__nv_bfloat16>() + part * D + h.begin * hd, size_t(3 * D) * es,
                                          size_t(h.size() * hd) * es, size_t(Lr), cudaMemcpyDeviceToDevice, s),
                        "sequence parallel: packing q|k|v");
    }
    comm->all_to_all(send.raw(), recv.raw(), Lr * wq, DType::BF16, s);
    send = DTensor();
    const int64_t Hr = parallel::split(H, rank, world).size();
    DTensor o = DTensor::empty({L, Hm * hd}, DType::BF16), back = DTensor::empty({world * Lr, Hm * hd}, DType::BF16);
    if (Hr < Hm) cuda::check(cudaMemsetAsync(o.raw(), 0, o.nbytes(), s), "sequence parallel: padding");
    const __nv_bfloat16* qp = recv.data<__nv_bfloat16>();
    cuda::attention(qp, wq, qp + Hm * hd, wq, qp + 2 * Hm * hd, wq, o.raw(), Hm * hd, L, Hr, hd, s, attention);
    recv = DTensor();
    comm->all_to_all(o.raw(), back.raw(), Lr * Hm * hd, DType::BF16, s);  // o's rows are the ranks' blocks
    for (int j = 0; j < world; ++j) {
        const parallel::Range h = parallel::split(H, j, world);
        cuda::check(cudaMemcpy2DAsync(static_cast<__nv_bfloat16*>(out) + h.begin * hd, size_t(D) * es,
                                      back.data<__nv_bfloat16>() + j * Lr * Hm * hd, size_t(Hm * hd) * es,
                                      size_t(h.size() * hd) * es, size_t(Lr), cudaMemcpyDeviceToDevice, s),
                    "sequence parallel: unpacking the attention output");
    }
}

// ---------------------------------------------------------------------------

ZImageTransformerCuda::ZImageTransformerCuda(std::unique_ptr<Weights> w) : w_(std::move(w)) {}
ZImageTransformerCuda::ZImageTransformerCuda(ZImageTransformerCuda&&) noexcept = default;
ZImageTransformerCuda::~ZImageTransformerCuda() = default;

ZImageTransformerCuda::ZImageTransformerCuda(const PreparedModel& m, cudaStream_t stream)
    : ZImageTransformerCuda(m, stream, nullptr, ParallelMode::Tensor) {}

ZImageTransformerCuda::ZImageTransformerCuda(const PreparedModel& m, parallel::Communicator& comm, ParallelMode mode)
    : ZImageTransformerCuda(m, comm.stream(), &comm, mode) {}

ZImageTransformerCuda::ZImageTransformerCuda(const PreparedModel& m, cudaStream_t stream, parallel::Communicator* comm,
                                             ParallelMode mode)
    : w_(std::make_unique<Weights>()) {
    w_->cfg = Config::from_json(m.folder.config, m.folder.config_path);
    w_->stream = stream;
    if (comm) {
        w_->comm = comm;
        w_->rank = comm->rank();
        w_->world = comm->world();
        w_->mode = mode;
    }
    const Checkpoint& ck = *m.checkpoint;
    w_->load(m.plan, nn::gpu::WeightSource{&ck, 0, stream}, [&](const std::string& name, int64_t n) {
        return DTensor::upload(ck.get_as(name, DType::BF16).view({n}), MemKind::Weight, stream);
    });
}

ZImageTransformerCuda ZImageTransformerCuda::random(const Config& cfg, const QuantConfig& quant, uint64_t seed,
                                                    parallel::Communicator& comm, ParallelMode mode) {
    return random_impl(cfg, quant, seed, comm.stream(), &comm, mode);
}

ZImageTransformerCuda ZImageTransformerCuda::random(const Config& cfg, const QuantConfig& quant, uint64_t seed,
                                                    cudaStream_t stream) {
    return random_impl(cfg, quant, seed, stream, nullptr, ParallelMode::Tensor);
}

ZImageTransformerCuda ZImageTransformerCuda::random_impl(const Config& cfg, const QuantConfig& quant, uint64_t seed,
                                                         cudaStream_t stream, parallel::Communicator* comm,
                                                         ParallelMode mode) {
    auto w = std::make_unique<Weights>();
    w->cfg = cfg;
    w->stream = stream;
    if (comm) {
        w->comm = comm;
        w->rank = comm->rank();
        w->world = comm->world();
        w->mode = mode;
    }
    const ModelSpec spec = model_spec(cfg);
    const QuantPlan plan = make_quant_plan(spec, quant, std::vector<DType>(spec.linears.size(), DType::BF16),
                                           std::vector<bool>(spec.linears.size(), false));
    w->load(plan, nn::gpu::WeightSource{nullptr, seed, stream}, [&](const std::string& name, int64_t n) {
        DTensor t = DTensor::empty({n}, DType::BF16, MemKind::Weight);
        const bool norm = name.find("norm") != std::string::npos || name == "cap_embedder.0.weight";
        nn::gpu::fill_normal(t, seed ^ std::hash<std::string>()(name), norm ? 1.f : 0.f, 0.02f, stream);
        return t;
    });
    cuda::check(cudaStreamSynchronize(stream), "random weights");
    return ZImageTransformerCuda(std::move(w));
}

const Config& ZImageTransformerCuda::config() const { return w_->cfg; }
int ZImageTransformerCuda::int8_layers() const { return w_->n_int8; }
int ZImageTransformerCuda::linear_layers() const { return w_->n_linear; }
size_t ZImageTransformerCuda::weight_bytes() const { return w_->bytes; }
int ZImageTransformerCuda::world() const { return w_->world; }
ParallelMode ZImageTransformerCuda::parallel_mode() const { return w_->mode; }
cudaStream_t ZImageTransformerCuda::stream() const { return w_->stream; }
void ZImageTransformerCuda::set_attention(cuda::AttentionImpl impl) {
    w_->attention = impl;
    w_->graphs.clear();
}
void ZImageTransformerCuda::set_cuda_graph(bool on) {
    w_->use_graph = on;
    if (!on) w_->graphs.clear();
}

DTensor ZImageTransformerCuda::forward_tokens(const DTensor& patches, const std::array<int64_t, 3>& grid,
                                              const DTensor& cap_feats, float t) const {
    const Weights& W = *w_;
    const Config& cfg = W.cfg;
    cudaStream_t s = W.stream;
    const int64_t D = cfg.dim, hd = cfg.head_dim();
    const int64_t n_img = grid[0] * grid[1] * grid[2], n_cap = cap_feats.size(0);
    const int64_t patch_dim = W.patch * W.patch * W.f_patch * cfg.in_channels;
    if (patches.dtype() != DType::BF16 || patches.dim() != 2 || patches.size(0) != n_img ||
        patches.size(1) != patch_dim || cap_feats.dtype() != DType::BF16 || cap_feats.dim() != 2 || n_cap < 1 ||
        cap_feats.size(1) != cfg.cap_feat_dim)
        raise<ShapeError>("Z-Image (CUDA): patches must be bf16 [{}, {}] and caption features bf16 [L >= 1, {}], "
                          "got {} and {}",
                          n_img, patch_dim, cfg.cap_feat_dim, shape_str(patches.shape()),
                          shape_str(cap_feats.shape()));
    const int64_t Lx = round_up(n_img, kSeqMultiple), Lc = round_up(n_cap, kSeqMultiple), Lu = Lx + Lc;

    // Timestep embedding: sinusoidal features on the host (tiny), the MLP on the device.
    DTensor adaln;
    {
        Tensor ts = Tensor::empty({1}, DType::F32);
        ts.data<float>()[0] = t * float(cfg.t_scale);
        Input in;
        in.x = DTensor::upload(cpu::timestep_embedding(ts, W.t_mlp0.k).to(DType::BF16), MemKind::Activation, s);
        in.ldx = W.t_mlp0.k;
        DTensor h = DTensor::empty({1, W.t_mlp0.n}, DType::BF16);
        run_group(W.t_mlp0, in, 1, h.raw(), W.t_mlp0.n, s);
        in.x = DTensor::empty({1, W.t_mlp0.n}, DType::BF16);
        in.ldx = W.t_mlp0.n;
        cuda::silu(h.raw(), W.t_mlp0.n, in.x.raw(), s);
        adaln = DTensor::empty({1, W.t_mlp2.n}, DType::BF16);
        run_group(W.t_mlp2, in, 1, adaln.raw(), W.t_mlp2.n, s);
    }

    // With a graph, the blocks read u, freqs and adaln at fixed addresses; the RoPE table depends
    // on the grid and caption length only, so it is kept with the graph.
    // (Not under tensor parallelism: the local test group's collectives run on the host.)
    const bool graph = W.use_graph && s != nullptr && W.world == 1;
    StepGraph* G = nullptr;  // this shape's graph (most recent last in W.graphs)
    if (graph) {
        auto& gs = W.graphs;
        auto it = std::find_if(gs.begin(), gs.end(), [&](const std::unique_ptr<StepGraph>& g) {
            return g->lx == Lx && g->lc == Lc && g->grid == grid && g->adaln.shape() == adaln.shape();
        });
        std::unique_ptr<StepGraph> found;
        if (it != gs.end()) {
            found = std::move(*it);
            gs.erase(it);
        } else {
            if (gs.size() >= Weights::kGraphs) gs.erase(gs.begin());
            found = std::make_unique<StepGraph>();
        }
        gs.push_back(std::move(found));
        G = gs.back().get();
    }

    // RoPE table of the unified sequence: image tokens (cap_len + 1 + f, h, w), image pad rows
    // (0, 0, 0), caption tokens (1 + j, 0, 0). The refiners use its two row ranges.
    DTensor freqs;
    if (graph && G->freqs.defined()) {
        freqs = G->freqs;
    } else {
        std::vector<int64_t> pos;
        for (int64_t f = 0; f < grid[0]; ++f)
            for (int64_t h = 0; h < grid[1]; ++h)
                for (int64_t w = 0; w < grid[2]; ++w) pos.insert(pos.end(), {Lc + 1 + f, h, w});
        pos.resize(size_t(Lx * 3), 0);
        for (int64_t j = 0; j < Lc; ++j) pos.insert(pos.end(), {1 + j, 0, 0});
        freqs = DTensor::upload(W.rope.freqs(pos), MemKind::Activation, s);
    }

    if (graph) {
        if (!G->u.defined()) {
            G->u = DTensor::empty({Lu, D}, DType::BF16);
            G->freqs = freqs;
            G->adaln = DTensor::empty(adaln.shape(), DType::BF16);
            G->lx = Lx;
            G->lc = Lc;
            G->grid = grid;
        }
        cuda::check(cudaMemcpyAsync(G->adaln.raw(), adaln.raw(), adaln.nbytes(), cudaMemcpyDeviceToDevice, s),
                    "step graph adaln");
        adaln = G->adaln;
    }

    // Unified residual stream u = [image (padded), caption (padded)].
    DTensor u = graph ? G->u : DTensor::empty({Lu, D}, DType::BF16);
    {
        Input in;
        in.x = patches;
        in.ldx = patch_dim;
        run_group(W.x_embedder, in, n_img, u.raw(), D, s);
        for (int64_t r = n_img; r < Lx; ++r)
            cuda::check(cudaMemcpyAsync(u.rows(r, r + 1).raw(), W.x_pad.raw(), size_t(D) * 2, cudaMemcpyDeviceToDevice, s),
                        "x_pad_token");
    }
    {
        cuda::RowOp op;
        Input in;
        in.x = DTensor::empty({n_cap, cfg.cap_feat_dim}, DType::BF16);
        in.ldx = cfg.cap_feat_dim;
        op.x = cap_feats.raw();
        op.ldx = cfg.cap_feat_dim;
        op.norm = cuda::RowNorm::Rms;
        op.w = W.cap_norm.raw();
        op.eps = float(cfg.norm_eps);
        op.out = in.x.raw();
        op.ldo = cfg.cap_feat_dim;
        op.m = n_cap;
        op.k = cfg.cap_feat_dim;
        cuda::row_op(op, s);
        run_group(W.cap_linear, in, n_cap, u.rows(Lx, Lx + n_cap).raw(), D, s);
        for (int64_t r = Lx + n_cap; r < Lu; ++r)
            cuda::check(cudaMemcpyAsync(u.rows(r, r + 1).raw(), W.cap_pad.raw(), size_t(D) * 2,
                                        cudaMemcpyDeviceToDevice, s),
                        "cap_pad_token");
    }

    const float* fr = freqs.data<float>();
    DTensor xs = u.rows(0, Lx), cs = u.rows(Lx, Lu);
    auto blocks = [&] {
        Weights::Pending pending;
        for (const Block& b : W.noise) W.block_forward(b, xs, fr, adaln, pending);
        W.flush(xs, pending);
        for (const Block& b : W.context) W.block_forward(b, cs, fr + Lx * hd, adaln, pending);
        W.flush(cs, pending);
        for (const Block& b : W.layers) W.block_forward(b, u, fr, adaln, pending);
        W.flush(u, pending);
    };
    // Sequence parallelism: every rank holds u whole at the stage boundaries and runs each stage's
    // blocks on its 1/world of that stage's tokens (image tokens, caption tokens, then the unified
    // sequence); in-place all-gathers put the stage's rows back together on every rank.
    auto sp_blocks = [&] {
        const int R = W.world, r = W.rank;
        if (Lx % R || Lc % R)
            raise<UsageError>("Z-Image (CUDA): sequence parallelism over {} GPUs needs image and caption token counts "
                              "divisible by {} (they are {} and {}, multiples of {}): use 2, 4 or 8 GPUs",
                              R, R, Lx, Lc, kSeqMultiple);
        const int64_t lx = Lx / R, lc = Lc / R, lu = Lu / R;
        Weights::Pending pending;
        DTensor xr = u.rows(r * lx, (r + 1) * lx), cr = u.rows(Lx + r * lc, Lx + (r + 1) * lc);
        for (const Block& b : W.noise) W.block_forward(b, xr, fr + r * lx * hd, adaln, pending);
        W.flush(xr, pending);
        for (const Block& b : W.context) W.block_forward(b, cr, fr + (Lx + r * lc) * hd, adaln, pending);
        W.flush(cr, pending);
        W.comm->all_gather(xr.raw(), u.raw(), lx * D, DType::BF16, s);
        W.comm->all_gather(cr.raw(), u.rows(Lx, Lu).raw(), lc * D, DType::BF16, s);
        DTensor ur = u.rows(r * lu, (r + 1) * lu);
        for (const Block& b : W.layers) W.block_forward(b, ur, fr + r * lu * hd, adaln, pending);
        W.flush(ur, pending);
        W.comm->all_gather(ur.raw(), u.raw(), lu * D, DType::BF16, s);
    };
    if (W.sequence_parallel()) {
        sp_blocks();
    } else if (!graph) {
        blocks();
    } else {
        if (!G->exec) {
            auto& alloc = cuda::Allocator::instance();
            cudaGraph_t g = nullptr;
            alloc.begin_record();
            cuda::check(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed), "step graph capture");
            try {
                blocks();
            } catch (...) {
                cudaStreamEndCapture(s, &g);
                if (g) cudaGraphDestroy(g);
                for (void* p : alloc.end_record()) alloc.release(p);
                cudaGetLastError();
                throw;
            }
            const cudaError_t e = cudaStreamEndCapture(s, &g);
            G->held = alloc.end_record();
            const cudaError_t ei = e == cudaSuccess ? cudaGraphInstantiate(&G->exec, g, 0) : e;
            if (g) cudaGraphDestroy(g);
            if (ei != cudaSuccess) {
                G->exec = nullptr;
                G->reset();
                cuda::check(ei, "step graph capture");
            }
        }
        cuda::check(cudaGraphLaunch(G->exec, s), "step graph launch");
    }

    // Final layer on the real image tokens: linear(LayerNorm(x) · (1 + adaLN(SiLU(adaln)))).
    DTensor scale = DTensor::empty({D}, DType::F32);
    {
        Input in;
        in.x = DTensor::empty({1, adaln.size(1)}, DType::BF16);
        in.ldx = adaln.size(1);
        cuda::silu(adaln.raw(), adaln.size(1), in.x.raw(), s);
        DTensor m = DTensor::empty({1, D}, DType::BF16);
        run_group(W.final_ada, in, 1, m.raw(), D, s);
        cuda::modulation(m.raw(), 1, D, 0u, scale.data<float>(), s);
    }
    Input fin;
    fin.x = DTensor::empty({n_img, D}, DType::BF16);
    fin.ldx = D;
    {
        cuda::RowOp op;
        op.x = u.raw();
        op.ldx = D;
        op.norm = cuda::RowNorm::LayerNorm;
        op.eps = kFinalNormEps;
        op.scale = scale.data<float>();
        op.out = fin.x.raw();
        op.ldo = D;
        op.m = n_img;
        op.k = D;
        cuda::row_op(op, s);
    }
    DTensor out = DTensor::empty({n_img, patch_dim}, DType::BF16);
    run_group(W.final_linear, fin, n_img, out.raw(), patch_dim, s);
    return out;
}

std::vector<Tensor> ZImageTransformerCuda::forward(const std::vector<Tensor>& xs, const Tensor& t,
                                                   const std::vector<Tensor>& caps) const {
    const Config& cfg = w_->cfg;
    const int64_t C = cfg.in_channels, pH = w_->patch, pW = w_->patch, pF = w_->f_patch, patch_dim = pF * pH * pW * C;
    const size_t B = xs.size();
    if (B == 0 || caps.size() != B)
        raise<ShapeError>("Z-Image (CUDA): got {} latents and {} caption tensors (one each per item)", xs.size(),
                          caps.size());
    if (t.dtype() != DType::F32 || t.numel() != int64_t(B))
        raise<ShapeError>("Z-Image (CUDA): t must be F32 [{}] (one timestep per item), got {} {}", B,
                          dtype_name(t.dtype()), shape_str(t.shape()));
    for (const Tensor& x0 : xs)
        if (x0.dim() != 4 || x0.size(0) != C || x0.size(1) % pF || x0.size(2) % pH || x0.size(3) % pW ||
            x0.numel() == 0 || !is_float(x0.dtype()))
            raise<ShapeError>("Z-Image (CUDA): latent must be float [{}, F, H, W] (F % {}, H, W % {}), got {}", C,
                              pF, pH, shape_str(x0.shape()));
    // Items run one after another: with its own sequence lengths an item's output does not depend
    // on the others (diffusers pads a batch to its longest item and masks the padding out).
    std::vector<Tensor> ys;
    for (size_t b = 0; b < B; ++b) {
        const Tensor& x0 = xs[b];
        const int64_t F = x0.size(1), H = x0.size(2), W = x0.size(3);
        const std::array<int64_t, 3> grid{F / pF, H / pH, W / pW};
        const int64_t tokens = grid[0] * grid[1] * grid[2];
        // Patchify (token (f, h, w) holds (pf, ph, pw, c), c fastest), as the CPU forward does.
        Tensor xf = x0.to(DType::F32);
        Tensor patches = Tensor::empty({tokens, patch_dim}, DType::F32);
        auto index = [&](int64_t tok, int64_t e) {
            const int64_t f = tok / (grid[1] * grid[2]), h = (tok / grid[2]) % grid[1], w = tok % grid[2];
            const int64_t c = e % C, pw = (e / C) % pW, ph = (e / (C * pW)) % pH, pf = e / (C * pW * pH);
            return ((c * F + f * pF + pf) * H + h * pH + ph) * W + w * pW + pw;
        };
        for (int64_t tok = 0; tok < tokens; ++tok)
            for (int64_t e = 0; e < patch_dim; ++e)
                patches.data<float>()[tok * patch_dim + e] = xf.data<float>()[index(tok, e)];
        cudaStream_t s = w_->stream;
        DTensor dp = DTensor::upload(patches.to(DType::BF16), MemKind::Activation, s);
        DTensor dc = DTensor::upload(caps[b].to(DType::BF16), MemKind::Activation, s);
        Tensor out = forward_tokens(dp, grid, dc, t.data<float>()[b]).download(s);
        Tensor y = Tensor::empty({C, F, H, W}, DType::BF16);
        for (int64_t tok = 0; tok < tokens; ++tok)
            for (int64_t e = 0; e < patch_dim; ++e)
                y.data<uint16_t>()[index(tok, e)] = out.data<uint16_t>()[tok * patch_dim + e];
        ys.push_back(y);
    }
    return ys;
}

}  // namespace qdit::zimage

#endif  // QDIT_WITH_CUDA
