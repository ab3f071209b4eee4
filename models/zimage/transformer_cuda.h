// ZImageTransformer2DModel on one CUDA GPU, bf16 activations. Every Linear runs as the
// quantization plan says: bf16 through cuBLASLt, or int8 W8A8 through the int8 GEMM, its
// activations quantized per token by the kernel that produces them (norm, SwiGLU) rather than by a
// separate pass. Numerics follow the CPU forward (models/zimage/transformer.h, docs/zimage.md).
//
// Layout: to_q / to_k / to_v run as one GEMM (N = 3·dim), w1 / w3 as one (N = 2·hidden), when the
// parts share a precision. The FFN hidden width is padded with zeros to a multiple of 16 and int8
// activations are written with rows padded to a multiple of 16, which the int8 GEMM requires; the
// padding adds exact zeros, so results are those of the unpadded model.
#pragma once
#include <array>
#include <memory>
#include <vector>

#include <cuda_runtime.h>

#include "backend/cuda/attention.h"
#include "backend/cuda/device_tensor.h"
#include "models/zimage/zimage_config.h"
#include "models/loader.h"

namespace qdit::parallel {
class Communicator;
}

namespace qdit::zimage {

// How a model is split over the ranks of a group (see the constructor taking a Communicator).
enum class ParallelMode { Tensor, Sequence };

class ZImageTransformerCuda {
public:
    // Loads the model's weights onto the current device (quantizing as m.plan says).
    explicit ZImageTransformerCuda(const PreparedModel& m, cudaStream_t stream = nullptr);
    // One rank's part of the model over comm's group, on the current device and comm.stream().
    // Made on every rank's thread (RankGroup::run); forward / forward_tokens are then collective:
    // every rank calls them with the same inputs, and every rank returns the whole output. CUDA
    // graphs are not used. Needs n_heads >= world.
    //   Tensor (parallel/tensor_parallel.h's Megatron layout): q/k/v by whole heads and w1/w3 by
    //     16-wide blocks of the padded hidden width (column split), to_out and w2 by the matching
    //     input columns (row split, nn/row_split_cuda.h); the embedders, adaLN layers, norms
    //     and the final layer are whole on every rank, and so is the residual stream. Weights are
    //     split ~world ways; two all-reduces of [tokens, dim] per block.
    //   Sequence (Ulysses): whole weights on every rank; each block runs on 1/world of the tokens
    //     and attention gathers every token for 1/world of the heads by all-to-all (two per block).
    //     Image and caption token counts (multiples of 32) must divide by world: 2, 4, 8 GPUs.
    ZImageTransformerCuda(const PreparedModel& m, parallel::Communicator& comm,
                          ParallelMode mode = ParallelMode::Tensor);
    // Random weights ~ N(0, 0.02) (norm weights and pad tokens ~ N(1, 0.02) / N(0, 0.02)),
    // generated on the GPU, with the default plan of `quant` (benchmarks at the real size).
    static ZImageTransformerCuda random(const Config& cfg, const QuantConfig& quant, uint64_t seed,
                                        cudaStream_t stream = nullptr);
    // The same for one rank of a split model (benchmarks): each rank draws its own part, so the
    // values differ from the one-GPU random model; shapes, plans and the work are the real ones.
    static ZImageTransformerCuda random(const Config& cfg, const QuantConfig& quant, uint64_t seed,
                                        parallel::Communicator& comm, ParallelMode mode);
    ZImageTransformerCuda(ZImageTransformerCuda&&) noexcept;
    ~ZImageTransformerCuda();

    const Config& config() const;
    // Linear layers that run in int8 / in total.
    int int8_layers() const;
    int linear_layers() const;
    // Bytes of device memory held by the weights (this rank's, under tensor parallelism).
    size_t weight_bytes() const;
    // Ranks of the group (1 on one GPU) and how the model is split over them.
    int world() const;
    ParallelMode parallel_mode() const;

    // The CPU forward's interface: per item x[b] [C, F, H, W], t[b] (t F32 [B]) and cap_feats[b]
    // [L_b, cap_feat_dim] on the host; items may differ in size and caption length. Returns the
    // BF16 velocity [C, F, H, W] of each item on the host. Items run one after another through
    // forward_tokens (each item's result does not depend on the others, as in diffusers' masked
    // batch).
    std::vector<Tensor> forward(const std::vector<Tensor>& x, const Tensor& t,
                                const std::vector<Tensor>& cap_feats) const;

    // The device part: patches bf16 [F·H·W tokens, patch_dim] (patchified as the CPU forward
    // does) on a token grid {F, H, W}, caption features bf16 [L, cap_feat_dim], timestep t
    // (1 − sigma). Returns bf16 [tokens, patch_dim]. Asynchronous on the model's stream.
    cuda::DTensor forward_tokens(const cuda::DTensor& patches, const std::array<int64_t, 3>& grid,
                                 const cuda::DTensor& cap_feats, float t) const;

    cudaStream_t stream() const;
    void set_attention(cuda::AttentionImpl impl);
    // On: forward_tokens runs the transformer blocks as one CUDA graph, captured in the first call
    // for a sequence shape and replayed after (graphs of the two most recent shapes are kept, so a
    // guided step that alternates two caption lengths replays both; a third shape drops the older); the same
    // kernels in the same order, so results are unchanged. The graph keeps its activation blocks
    // (and the residual stream, RoPE table and timestep embedding it reads) out of the allocator's
    // cache until it is dropped. Needs a stream other than the legacy default one (else ignored).
    // Off (default): every kernel is launched on each call.
    void set_cuda_graph(bool on);

    struct Weights;

private:
    ZImageTransformerCuda(std::unique_ptr<Weights> w);
    ZImageTransformerCuda(const PreparedModel& m, cudaStream_t stream, parallel::Communicator* comm,
                          ParallelMode mode);
    static ZImageTransformerCuda random_impl(const Config& cfg, const QuantConfig& quant, uint64_t seed,
                                             cudaStream_t stream, parallel::Communicator* comm, ParallelMode mode);
    std::unique_ptr<Weights> w_;
};

}  // namespace qdit::zimage
