// Linear layers on a CUDA GPU, as the quantization plan says: bf16 through cuBLASLt, int8 W8A8
// through the int8 GEMM, whose activations the producing kernel (norm, SwiGLU) quantizes per token,
// or int8 weight-only (few rows of bf16 activations times the int8 weights).
//
// A Group is one or more Linears that read the same input and write column blocks of one output
// [M, n]; consecutive members of one precision are fused into one Part (one GEMM over their
// concatenated weights), e.g. q|k|v or gate|up. Members may be padded: rows past out_features and
// input columns past in_features are zeros, so padding changes no result.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include <cuda_runtime.h>

#include "backend/cuda/device_tensor.h"
#include "io/safetensors.h"
#include "quant/plan.h"

namespace qdit::nn::gpu {

struct Part {
    bool int8 = false;         // int8 weights (q, wscale)
    bool weight_only = false;  // ...read with the bf16 activations (backend/cuda/int8_weight_only.h), not W8A8
    int64_t n = 0, col = 0;  // output columns [col, col + n)
    cuda::DTensor w;         // bf16 [n, k]
    cuda::DTensor q, wscale; // int8 [n, kp], F32 [n]
    cuda::DTensor bias;      // bf16 [n] (bf16 part) or F32 [n] (int8 part), or undefined
};

struct Group {
    int64_t k = 0, kp = 0, n = 0;  // kp = k rounded up to 16: the int8 activations' row stride
    std::vector<Part> parts;
    // Set by move_to_host: the parts' tensors are then in pinned host memory, not on the device.
    struct HostCopy;
    std::shared_ptr<const HostCopy> host;
    bool needs_bf16() const;
    bool needs_int8() const;
    size_t bytes() const;       // device bytes of its weights (0 once moved to the host)
    size_t host_bytes() const;  // pinned host bytes of its weights (0 unless moved there)
};

// Moves g's weights to pinned host memory: copied there (waits for `s`, the stream of the work that
// made them), then the device's copies are released. run_group then uploads them into transient
// device buffers on its stream for each call (PCIe), so such a group belongs outside CUDA graphs
// and hot loops: layers read once per schedule, like Qwen-Image's modulation.
void move_to_host(Group& g, cudaStream_t s);

// The activations a group reads: bf16 [m, ldx] and/or int8 [m, kp] with per-row F32 scales.
struct Input {
    cuda::DTensor x;
    int64_t ldx = 0;
    cuda::DTensor q, qs;
};

// y[:, part] = input · Wᵀ + b for every part (y bf16 with row stride ldy). Int8 parts read in.q /
// in.qs; an input without them (its producer, e.g. cuDNN's attention, cannot quantize) is quantized
// per row here first. A group moved to the host is uploaded first (activation memory until the
// call's work is done: stream-ordered).
void run_group(const Group& g, const Input& in, int64_t m, void* y, int64_t ldy, cudaStream_t s);

// One member of a group: its plan, the rows it occupies (n_pad >= out_features) and the input
// width it is read with (k_pad >= in_features).
// A shard (tensor parallelism, parallel/tensor_parallel.h) is a window of the member's weight
// extended with zero rows and columns: rows [r0, r0 + n_pad) and input columns [c0, c0 + k_pad).
// int8 weights are quantized whole before the window is cut, so a column window keeps the whole
// rows' scales (the row split's rule). Without shard, r0 = c0 = 0 and the window must cover the
// weight.
struct Member {
    const LayerPlan* plan;
    int64_t n_pad, k_pad;
    bool shard = false;
    int64_t r0 = 0, c0 = 0;
};

class CheckpointReader;

// Where weights come from: the checkpoint (int8 as stored, or quantized from the stored weight as
// load_linear does; bf16 rounded), or, without one, random N(0, 0.02) weights and biases made on
// the device from `seed` (benchmarks at the real size). With a `reader` (of that checkpoint, on
// `stream`), the stored bytes go to the device as they are and are converted and quantized there
// (nn/load_cuda.h); without, host_weights prepares them on the host and they are uploaded. Both
// give the same bytes.
struct WeightSource {
    const Checkpoint* checkpoint = nullptr;
    uint64_t seed = 0;
    cudaStream_t stream = nullptr;
    CheckpointReader* reader = nullptr;
};

// The group of `ms`, every member read with input width k. Without a reader, uploads synchronously;
// with one, the work is queued on the stream.
Group make_group(const std::vector<Member>& ms, int64_t k, const WeightSource& src);

}  // namespace qdit::nn::gpu
