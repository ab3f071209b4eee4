// QwenImageTransformer2DModel (diffusers; Qwen-Image and Qwen-Image-2512): the dual-stream MMDiT,
// written once over the op layer, so it runs on the CPU (F32 or BF16) and on a GPU (BF16). Modules
// are named like the checkpoint keys; every Linear is loaded as the quantization plan says.
#pragma once
#include <array>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "models/loader.h"
#include "models/model_spec.h"
#include "nn/linear_group.h"
#include "ops/graph.h"
#include "ops/context.h"

namespace qdit::qwen_image {

struct Config {
    int64_t patch_size = 2;     // latent pixels per token along each side
    int64_t in_channels = 64;   // features of a packed token: patch² · latent channels
    int64_t out_channels = 16;  // latent channels (absent: 16; null: in_channels, as diffusers)
    int64_t num_layers = 60;    // dual-stream blocks
    int64_t attention_head_dim = 128;
    int64_t num_attention_heads = 24;
    int64_t joint_attention_dim = 3584;               // the text encoder's hidden size
    std::vector<int64_t> axes_dims_rope{16, 56, 56};  // RoPE dims of the frame, height and width axes

    static constexpr int64_t kTimestepChannels = 256;  // the sinusoidal features of time_proj
    static constexpr int64_t kMlpMult = 4;             // FeedForward's default mult
    static constexpr double kRopeTheta = 10000.0;
    static constexpr int64_t kRopePositions = 4096;    // the reference's table: positions [-4096, 4096)
    static constexpr float kEps = 1e-6f;               // every LayerNorm and RMSNorm of the model

    int64_t dim() const { return num_attention_heads * attention_head_dim; }
    int64_t out_features() const { return patch_size * patch_size * out_channels; }

    static Config from_json(const nlohmann::json& j, const std::string& where);
};

ModelSpec model_spec(const Config& c);

// Where the transformer keeps weights that the denoising loop does not read.
struct Placement {
    // On a GPU: the modulation Linears' weights (img_mod, txt_mod: a third of the model, read only
    // when set_timesteps computes a schedule's modulation, or by a forward whose timesteps it did
    // not keep) in page-locked host memory, uploaded block by block when read (PCIe: a new
    // schedule takes a fraction of a second more, a forward outside the kept schedule much more),
    // and the kept modulation there too (each step uploads its rows, 4.4 MiB at the published
    // size). Nothing changes on the CPU.
    bool modulation_on_host = false;
};

class QwenImageTransformer {
public:
    // Loads every module of `src` (a prepared folder, or random weights: a GPU context) onto ctx's
    // device with activations in `compute` (the CPU: F32 or BF16; a GPU: BF16).
    QwenImageTransformer(const ModelSource<Config>& src, DType compute, const ops::Context& ctx = {},
                         const Placement& placement = {});

    const Config& config() const { return cfg_; }
    DType compute_dtype() const { return dt_; }
    size_t weight_bytes() const { return bytes_; }            // on the device
    size_t host_weight_bytes() const { return host_bytes_; }  // in pinned host memory (Placement)
    int int8_layers() const { return n_int8_; }

    // diffusers' forward:
    //   hidden_states [B, L, in_channels]: the packed latents, L = F·H·W tokens of the grid
    //     {F, H, W} (one grid for every item, as the reference's RoPE assumes);
    //   encoder_hidden_states [B, T, joint_attention_dim];
    //   each on the host (any float dtype; cast and moved to the model's device) or already on the
    //     model's device in the compute dtype (read there; the CPU's own tensors are both);
    //   mask [B, T] on the host (U8, I32, I64, F32 or BF16; nonzero: a real token), or undefined (all
    //     real): masked text tokens are never attended to;
    //   timestep F32 [B] on the host: sigma in [0, 1] (the pipeline's t / 1000).
    // Returns the velocity [B, L, patch²·out_channels] in the compute dtype, on the host when
    // hidden_states is there, else on the model's device (a tensor of its own).
    Tensor forward(const Tensor& hidden_states, const Tensor& encoder_hidden_states, const Tensor& mask,
                   const Tensor& timestep, const std::array<int64_t, 3>& grid) const;

    // The modulation Linears (img_mod, txt_mod: a third of the weights) read only the timestep. For
    // the timesteps of a denoising schedule (the values forward will get, every item at the same
    // one) their outputs are computed here at once (a GPU reads each int8 weight once per 8
    // timesteps instead of once per step) and kept on the device (with
    // Placement::modulation_on_host in page-locked host memory, a step's rows uploaded by forward);
    // forward then reads the kept rows whenever every item's timestep equals one of `t`, and
    // computes them otherwise. The values are those forward computes, up to the rounding of the
    // dense timestep_embedder (and dense modulation) GEMMs over more rows. It costs
    // modulation_cache_bytes(t.size()) of memory; more than kModulationCacheLimit keeps nothing. An
    // empty list frees it; the list kept already does nothing. Like forward, not to be called from
    // two threads at once.
    void set_timesteps(const std::vector<float>& t) const;
    size_t modulation_cache_bytes(int64_t steps) const;
    static constexpr size_t kModulationCacheLimit = size_t(1) << 30;

    // On a GPU context with its own stream: run the blocks (and norm_out, proj_out) as one CUDA
    // graph per shape and text mask (ops/graph.h; the two most recent are kept). The same kernels
    // in the same order: results are unchanged. Off while ops::Profile is on.
    void set_cuda_graph(bool on) { graphs_.enable(on); }
    // The attention kernel of a GPU context (ops/context.h: Simple for checks, Fp8 for cuDNN's FP8
    // joint attention); the CUDA graphs captured so far, which replay the old kernel, are dropped.
    void set_attention(ops::AttentionImpl impl) {
        ctx_.attention = impl;
        graphs_.clear();
    }

private:
    struct Stream {  // one stream's modules in a block (image: to_q..., text: add_q_proj...)
        nn::LinearGroup mod, qkv, out, mlp_in, mlp_out;
        Tensor norm_q, norm_k;
    };
    struct Block {
        Stream img, txt;
    };

    Tensor conditioning(const float* t, int64_t n) const;
    // Block `block`'s modulation Linears on the rows of SiLU(temb) `cond` [n, dim]: img_mod into
    // rows [0, n) of out [2n, 6·dim] (on the device), txt_mod into rows [n, 2n).
    void modulation_rows(const Tensor& cond, int64_t block, Tensor& out) const;

    Config cfg_;
    DType dt_ = DType::F32;
    ops::Context ctx_;
    Placement placement_;
    std::string where_;
    nn::LinearGroup img_in_, txt_in_, t_linear_1_, t_linear_2_, norm_out_, proj_out_;
    Tensor txt_norm_;
    std::vector<Block> blocks_;
    size_t bytes_ = 0, host_bytes_ = 0;
    int n_int8_ = 0;
    mutable ops::GraphCache graphs_;
    mutable std::vector<float> mod_t_;  // set_timesteps' list
    mutable Tensor mod_cond_;            // its SiLU(temb) rows [steps, dim]
    mutable Tensor mod_cache_;           // its modulation rows: [(2·block + stream)·steps + step, 6·dim]
                                         // (on the host with Placement::modulation_on_host)
};

}  // namespace qdit::qwen_image
