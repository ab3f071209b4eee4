// Linear layers that read one input, on any device, as the quantization plan says: a Group's output
// [m, width()] holds its members' outputs side by side (q|k|v, gate|up). On the CPU each member is
// an nn::Linear (dense via oneDNN or int8 W8A8); on a GPU consecutive members of one precision run
// as one GEMM (nn/linear_cuda.h), members may be padded with zero rows (n_pad: more output
// columns) and the input with zero columns (k_pad), which changes no result; the CPU ignores the
// padding. Layers are named like the checkpoint keys.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "nn/linear.h"
#include "ops/context.h"
#include "quant/plan.h"

namespace qdit::nn {

namespace gpu {
class CheckpointReader;  // nn/load_cuda.h
}

class LinearGroup {
public:
    struct Member {
        const LayerPlan* plan = nullptr;
        int64_t n_pad = 0, k_pad = 0;  // on a GPU: rows and input width to pad to (0: none)
        // A GPU rank's window of the weight (tensor parallelism): rows [r0, r0 + n_pad) and input
        // columns [c0, c0 + k_pad), zeros past the weight's edge (nn/linear_cuda.h's Member).
        bool window = false;
        int64_t r0 = 0, c0 = 0;
    };

    LinearGroup() = default;
    // Loads the members' weights from `ck` onto ctx's device; activations in `compute` (the CPU:
    // F32 or BF16; a GPU: BF16). Without a checkpoint: random N(0, 0.02) weights made on the GPU
    // from `seed` (benchmarks at the real size; nn/linear_cuda.h), quantized there as the plans say
    // (a GPU context only). On a GPU, `reader` (of ck) reads the checkpoint straight to the device,
    // where the weights are converted and quantized; without it they are prepared on the host (the
    // same bytes).
    // `row_split` (a GPU context with a communicator, members that are input-column windows): each
    // rank multiplies its columns of the input and the partial products are summed over the ranks
    // (nn/row_split_cuda.h), so every rank gets the whole output; forward is then collective.
    LinearGroup(const Checkpoint* ck, uint64_t seed, const std::vector<Member>& members, DType compute,
                const ops::Context& ctx, gpu::CheckpointReader* reader = nullptr, bool row_split = false);

    int64_t width() const { return width_; }               // output columns
    int64_t column(size_t i) const { return cols_.at(i); }  // where member i's block starts
    // What the group reads: the producing op writes it (ops/row.h, ops/glu.h).
    ops::ActivationSpec input_spec() const { return spec_; }
    int int8_members() const { return n_int8_; }
    size_t weight_bytes() const { return bytes_; }  // on the device (int8 scales included)
    size_t host_bytes() const { return host_bytes_; }  // moved to the host by keep_on_host

    // On a GPU: moves the weights to pinned host memory (waits for the context's stream), and each
    // forward uploads them before it runs (nn/linear_cuda.h, move_to_host): for layers read once
    // per schedule, never inside a CUDA graph. weight_bytes() becomes 0. On the CPU nothing changes
    // (the weights are in host memory already).
    void keep_on_host();

    // y [m, width()] in the compute dtype on ctx's device. An input without the int8 rows an int8
    // part needs is quantized here (per token, quant/int8.h). `on`: the context to issue the work
    // on, when not the group's own (another stream of its device: ops::Fork::side).
    Tensor forward(const ops::Activation& in, const ops::Context* on = nullptr) const;
    // The same into out [m, width()] in the compute dtype on the group's device, whose rows are
    // width() apart (e.g. a row block of a larger tensor: Tensor::slice_rows).
    void forward_into(const ops::Activation& in, Tensor& out, const ops::Context* on = nullptr) const;

private:
    const ops::Context& context(const ops::Context* on) const;  // *on (checked) or ctx_

    ops::Context ctx_;
    DType compute_ = DType::BF16;
    int64_t width_ = 0;
    std::vector<int64_t> cols_;
    ops::ActivationSpec spec_;
    bool row_split_ = false;
    int n_int8_ = 0;
    size_t bytes_ = 0, host_bytes_ = 0;
    std::vector<Linear> cpu_;    // the CPU's members
    std::shared_ptr<void> gpu_;  // a GPU's nn::gpu::Group
};

// Where a model's weights come from: `checkpoint`, loaded as `plan` says, or, without one, random
// weights made on the GPU from `seed` under `plan` (benchmarks at the real size). `where` names the
// model in messages (its folder, or "random <model>").
struct ModelWeights {
    QuantPlan plan;
    const Checkpoint* checkpoint = nullptr;
    uint64_t seed = 0;
    std::string where;
};

// How a model loads its modules onto its context's device: Linear groups by layer name, as the
// quantization plan says, and the other tensors (norm weights, embeddings, pad tokens) in the
// compute dtype; counts the device bytes and the int8 Linears. Random weights come from
// LinearGroup's random constructor; a random tensor whose name holds "norm" is ~ N(1, 0.02), others
// ~ N(0, 0.02). On a GPU the checkpoint is read straight to the device through pinned staging
// buffers and converted / quantized there (nn/load_cuda.h); the times go to nn::load_stats() when
// the loader is destroyed. The compute dtype must be F32 or BF16 on the CPU, BF16 on a GPU
// (ConfigError "<model> runs in ..." otherwise).
class WeightLoader {
public:
    WeightLoader(ModelWeights src, const std::string& model, DType compute, const ops::Context& ctx);

    // The plan of Linear layer `name` (ShapeError naming the model when it has none).
    const LayerPlan& plan(const std::string& name) const;
    LinearGroup::Member member(const std::string& name, int64_t n_pad = 0, int64_t k_pad = 0) const {
        return {&plan(name), n_pad, k_pad};
    }
    // A rank's window of Linear `name` (tensor parallelism): n rows from r0, k input columns from c0.
    LinearGroup::Member window(const std::string& name, int64_t n, int64_t k, int64_t r0, int64_t c0) const {
        return {&plan(name), n, k, true, r0, c0};
    }
    LinearGroup group(const std::vector<LinearGroup::Member>& members, bool row_split = false);
    LinearGroup one(const std::string& name) { return group({member(name)}); }
    // Tensor `name` in the compute dtype on the device, viewed as `shape` (its own when empty);
    // `norm`: a norm's weight (random ~ N(1, 0.02)) whose name does not say so.
    Tensor tensor(const std::string& name, Shape shape = {}, bool norm = false);
    // The same in host memory whatever the device: a table the model reads a few rows of on the
    // host (an embedding, whose rows are then uploaded). Counted in bytes() on the CPU only.
    Tensor host_tensor(const std::string& name, Shape shape = {});

    size_t bytes() const { return bytes_; }
    int int8_members() const { return n_int8_; }

private:
    ModelWeights src_;
    std::map<std::string, const LayerPlan*> plans_;  // into src_.plan
    DType compute_;
    ops::Context ctx_;
    size_t bytes_ = 0;
    int n_int8_ = 0;
    std::shared_ptr<gpu::CheckpointReader> reader_;  // a GPU context with a checkpoint
};

}  // namespace qdit::nn
