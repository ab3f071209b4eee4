// ZImageTransformer2DModel (diffusers): the basic, non-omni text-to-image forward, written once over
// the op layer, so it runs on the CPU (F32 or BF16) and on a GPU (BF16). Modules are named like the
// checkpoint keys; every Linear is loaded as the quantization plan says (dense, or int8 W8A8 whose
// activations the producing op quantizes per token on a GPU).
#pragma once
#include <array>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "models/loader.h"
#include "models/model_spec.h"
#include "nn/linear_group.h"
#include "ops/context.h"
#include "ops/graph.h"
#include "ops/rope.h"

namespace qdit::zimage {

// ZImageTransformer2DModel's config.json (diffusers) and the parameter layout it implies.
struct Config {
    std::vector<int64_t> all_patch_size{2};    // (height and width) patch of each embedder / final layer
    std::vector<int64_t> all_f_patch_size{1};  // its frame patch
    int64_t in_channels = 16;                  // latent channels
    int64_t dim = 3840;
    int64_t n_layers = 30;
    int64_t n_refiner_layers = 2;  // blocks of the noise refiner, and of the context refiner
    int64_t n_heads = 30;
    int64_t n_kv_heads = 30;
    double norm_eps = 1e-5;
    bool qk_norm = true;          // RMSNorm of each q and k head
    int64_t cap_feat_dim = 2560;  // the text encoder's hidden size
    double rope_theta = 256.0;
    double t_scale = 1000.0;                         // the timestep's factor before its embedding
    std::vector<int64_t> axes_dims{32, 48, 48};      // RoPE dims of the caption/frame, height, width axes
    std::vector<int64_t> axes_lens{1024, 512, 512};  // and the positions each table holds
    int64_t siglip_feat_dim = 0;  // 0: absent (no Omni SigLIP branch)

    static constexpr int64_t kAdalnEmbedDim = 256;    // ADALN_EMBED_DIM in diffusers
    static constexpr int64_t kTimestepFreqDim = 256;  // sinusoidal features of the timestep
    static constexpr int64_t kTimestepHidden = 1024;  // the timestep MLP's hidden width

    int64_t head_dim() const { return dim / n_heads; }
    int64_t ffn_hidden() const { return int64_t(double(dim) / 3.0 * 8.0); }  // int(dim / 3 * 8)

    static Config from_json(const nlohmann::json& j, const std::string& where);
};

ModelSpec model_spec(const Config& c);

using ParallelMode = ops::ParallelMode;

// The token layout forward_tokens reads and writes, on the host. patchify: a latent [C, F, H, W] (any
// float dtype) with F a multiple of f_patch and H, W of patch → F32 [tokens, f_patch·patch²·C] of the
// token grid {F/f_patch, H/patch, W/patch}, token (f, h, w) holding its values ordered (pf, ph, pw, c),
// c fastest (ShapeError otherwise). unpatchify: tokens of that layout (any dtype, kept) → [C, F, H, W].
Tensor patchify(const Tensor& latent, int64_t patch, int64_t f_patch);
Tensor unpatchify(const Tensor& tokens, const Shape& latent_shape, int64_t patch, int64_t f_patch);

class ZImageTransformer {
public:
    // Loads every module of `src` (a prepared folder, or random weights: a GPU context) onto ctx's
    // device with activations in `compute` (the CPU: F32 or BF16; a GPU: BF16). The first (patch,
    // frame patch) pair of the config is the one used.
    // With a communicator in ctx (one rank of a group, models/zimage/transformer_parallel.h) the
    // model is this rank's part, split as ctx.parallel says; forward / forward_tokens are then
    // collective (every rank calls them with the same inputs and gets the whole output), CUDA
    // graphs are not used, and the model needs n_heads >= world (with as many kv heads):
    //   Tensor (parallel/tensor_parallel.h's Megatron layout): q/k/v by whole heads and w1/w3 by
    //     16-wide blocks of the padded hidden width (column split), to_out and w2 by the matching
    //     input columns (row split); the embedders, adaLN layers, norms and the final layer are
    //     whole on every rank, as is the residual stream. Two all-reduces of [tokens, dim] per block.
    //   Sequence (Ulysses): whole weights; each block runs on 1/world of the tokens and attention
    //     gathers every token for 1/world of the heads by all-to-all (two per block). The padded
    //     image and caption token counts (multiples of 32) must divide by world: 2, 4, 8 GPUs.
    // Random weights with a communicator: each rank draws its own part, so the values differ from
    // the one-GPU model's; shapes, plans and the work are the real ones.
    ZImageTransformer(const ModelSource<Config>& src, DType compute, const ops::Context& ctx = {});

    const Config& config() const { return cfg_; }
    DType compute_dtype() const { return dt_; }
    int int8_layers() const { return n_int8_; }
    int linear_layers() const { return n_linear_; }
    size_t weight_bytes() const { return bytes_; }  // on the device (this rank's part)
    const ops::Context& context() const { return ctx_; }
    // The attention kernel of a GPU context (ops/context.h: Simple for checks, Fp8 for cuDNN's FP8
    // attention); the CUDA graphs captured so far, which replay the old kernel, are dropped.
    void set_attention(ops::AttentionImpl impl) {
        ctx_.attention = impl;
        graphs_.clear();
    }

    // diffusers' forward(x, t, cap_feats) in basic mode, on host tensors:
    //   x[i] [C, F, H, W] (any float dtype, cast to the compute dtype),
    //   t F32 [B] (1 − sigma; multiplied by t_scale inside),
    //   cap_feats[i] [L_i, cap_feat_dim] (L_i >= 1, may differ between items).
    // Returns the velocity prediction [C, F, H, W] per item in the compute dtype. Items run one
    // after another, each unpadded: an item's output does not depend on the others (diffusers pads
    // a batch to its longest item and masks the padding out).
    std::vector<Tensor> forward(const std::vector<Tensor>& x, const Tensor& t,
                                const std::vector<Tensor>& cap_feats) const;

    // One item on the device: patches [F·H·W tokens, patch_dim] of the token grid {F, H, W}
    // (patchified as forward does), caption features [L, cap_feat_dim], both in the compute dtype
    // on ctx's device; t is 1 − sigma. Returns [tokens, patch_dim] on the device.
    Tensor forward_tokens(const Tensor& patches, const std::array<int64_t, 3>& grid, const Tensor& cap_feats,
                          float t) const;

    // On a GPU context with its own stream: forward_tokens runs the transformer blocks as one CUDA
    // graph per sequence shape (ops/graph.h; the two most recent shapes are kept, so a guided step
    // replays both). Off (default): every kernel is launched on each call. Results are the same.
    void set_cuda_graph(bool on) { graphs_.enable(on); }

private:
    // One ZImageTransformerBlock: sandwich RMSNorms around attention and the SwiGLU FFN, with
    // scale-and-gate modulation from the timestep embedding when adaLN_modulation is present.
    struct Block {
        nn::LinearGroup qkv, out, w13, w2, ada;  // ada: adaLN_modulation.0 (modulated blocks)
        Tensor norm_q, norm_k;                   // undefined without qk_norm
        Tensor attention_norm1, attention_norm2, ffn_norm1, ffn_norm2;
        bool modulated = false;
        int64_t heads = 0;  // q/k/v heads here: all, or this rank's under tensor parallelism
    };
    // A block's last residual, x += gate · ffn_norm2(y), left for the next row op on the same rows.
    struct Pending {
        Tensor y, w, gate;
    };
    void block_forward(const Block& b, Tensor& x, const Tensor& freqs, const ops::Activation& adaln,
                       Pending& pending) const;
    void flush(Tensor& x, Pending& pending) const;

    Config cfg_;
    DType dt_ = DType::F32;
    ops::Context ctx_;
    std::string where_;
    int64_t patch_ = 2, f_patch_ = 1;
    nn::LinearGroup t_mlp0_, t_mlp2_, cap_linear_, x_embedder_, final_linear_, final_ada_;
    Tensor cap_norm_, x_pad_token_, cap_pad_token_;  // [dim] / [1, dim] in the compute dtype
    std::vector<Block> noise_refiner_, context_refiner_, layers_;
    ops::AxesRope rope_;
    mutable ops::GraphCache graphs_;
    int n_int8_ = 0, n_linear_ = 0;
    size_t bytes_ = 0;
};

}  // namespace qdit::zimage
