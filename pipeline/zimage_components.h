// The three models of a Z-Image pipeline (text encoder, transformer, VAE decoder) on one device, as
// the pipeline's denoising loop calls them. The prompt embeddings and the image cross this interface
// on the host; the transformer's inputs and outputs live on loop_context()'s device, where the
// denoising loop keeps its latents between steps.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "models/loader.h"
#include "ops/context.h"
#include "pipeline/pipeline_common.h"  // PipelineOptions, Lazy

namespace qdit {

class ZImageComponents {
public:
    // offload (PipelineOptions::offload_text_encoder): the text encoder is loaded by encode and freed
    // by release_text_encoder; the transformer is loaded by load_transformer (or its first call).
    explicit ZImageComponents(bool offload = false) : offload_(offload) {}
    virtual ~ZImageComponents() = default;
    virtual void release_text_encoder() const = 0;
    virtual void load_transformer() const = 0;
    // Seconds spent loading weights since the last call (offload).
    double take_load_seconds() const { return std::exchange(load_seconds_, 0.0); }
    // hidden_states[-2] of the prompt's valid tokens (Qwen3TextModel::encode): [n_valid, hidden].
    virtual Tensor encode(const std::vector<int32_t>& ids, const std::vector<uint8_t>& mask) const = 0;
    // Where the denoising loop keeps the latents and the transformer's inputs: the transformer's own
    // device (the CPU, or the GPU of a one-GPU pipeline), or the host when the transformer is split
    // over several GPUs. The transformer's activation dtype is loop_dtype().
    virtual ops::Context loop_context() const = 0;
    virtual DType loop_dtype() const = 0;
    // The transformer's velocity for one item (zimage::ZImageTransformer::forward_tokens): patches
    // [tokens, patch_dim] of the token grid and caption features [L, hidden], both loop_dtype() on
    // loop_context()'s device; t = 1 − sigma. Returns [tokens, patch_dim] there.
    virtual Tensor transformer(const Tensor& patches, const std::array<int64_t, 3>& grid, const Tensor& caps,
                               float t) const = 0;
    // The final latents [1, C, h, w] (F32) → unscaled, decoded, post-processed: U8 [H, W, 3].
    virtual Tensor decode(const Tensor& latents) const = 0;

protected:
    const bool offload_;
    mutable double load_seconds_ = 0;
};

// Components on the CPU (oneDNN / our int8 kernels), activations in opt.dtype.
std::unique_ptr<ZImageComponents> make_zimage_cpu_components(const std::string& dir, const PipelineOptions& opt,
                                                             const PreparedModel& text_encoder,
                                                             const PreparedModel& transformer);

// Components on CUDA device opt.device.index (bf16 activations): throws qdit::UsageError in a
// build without the CUDA backend, qdit::Error when that device is not usable.
std::unique_ptr<ZImageComponents> make_zimage_cuda_components(const std::string& dir, const PipelineOptions& opt,
                                                              const PreparedModel& text_encoder,
                                                              const PreparedModel& transformer);

}  // namespace qdit
