// The Qwen3 text encoder (transformers' Qwen3Model, Z-Image's text_encoder/) on one CUDA GPU, batch 1,
// bf16 activations with f32 accumulation: the numerics of the CPU model in DType::BF16
// (models/text/qwen3.h). Weights live on the GPU in bf16 (the embedding table too, rounded to
// nearest even when stored in f32); every Linear runs as the quantization plan says: bf16 through
// cuBLASLt, or int8 W8A8 through the int8 GEMM with its activations quantized per token by the
// kernel that produces them (RMSNorm, SwiGLU, or a quantization pass over the attention output).
// The text encoder's default plan keeps every layer in bf16.
//
// Layout: q_proj / k_proj / v_proj run as one GEMM (N = (heads + 2·kv_heads)·head_dim), gate_proj /
// up_proj as one (N = 2·intermediate, each padded with zero rows to a multiple of 16, down_proj's K
// with zero columns), when the parts share a precision; q/k RMSNorm + rotate-half RoPE run in place
// on the fused output; attention is causal grouped-query SDPA (cuDNN, or the simple kernel); each
// residual add is fused with the RMSNorm that follows it. The padding adds exact zeros.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include <cuda_runtime.h>

#include "backend/cuda/attention.h"
#include "backend/cuda/device_tensor.h"
#include "models/text/qwen3.h"
#include "models/loader.h"

namespace qdit::text {

class Qwen3TextModelCuda {
public:
    // Loads every module of `m` (a text_encoder/ folder opened with prepare_model) onto the current
    // device, quantizing the Linear layers m.plan marks int8. Work runs on `stream`.
    explicit Qwen3TextModelCuda(const PreparedModel& m, cudaStream_t stream = nullptr);
    Qwen3TextModelCuda(Qwen3TextModelCuda&&) noexcept;
    ~Qwen3TextModelCuda();

    const Qwen3Config& config() const;
    // Linear layers that run in int8 / in total.
    int int8_layers() const;
    int linear_layers() const;
    // Bytes of device memory held by the weights (embedding table included).
    size_t weight_bytes() const;
    cudaStream_t stream() const;
    void set_attention(cuda::AttentionImpl impl);

    // Qwen3TextModel::encode on the GPU: hidden_states[-from_end] of the tokens whose mask value is
    // nonzero, each at its original position (causal attention over the kept tokens only, so
    // padding cannot change them) → BF16 [n_valid, hidden] on the host. from_end 1 is the final
    // norm's output, k >= 2 the raw output of decoder layer num_hidden_layers − k (0-based),
    // num_hidden_layers + 1 the embeddings. Throws qdit::ShapeError for mismatched ids / mask, a mask
    // that keeps no token, an id outside the vocabulary or a hidden state that does not exist.
    Tensor encode(const std::vector<int32_t>& ids, const std::vector<uint8_t>& mask, int from_end = 2) const;

    // The same, left on the device: bf16 [n_valid, hidden], asynchronous on the model's stream
    // (the host inputs are consumed before it returns).
    cuda::DTensor encode_device(const std::vector<int32_t>& ids, const std::vector<uint8_t>& mask,
                                int from_end = 2) const;

    struct Weights;

private:
    std::unique_ptr<Weights> w_;
};

}  // namespace qdit::text
