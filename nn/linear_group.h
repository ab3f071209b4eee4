// Linear layers that read one input, on any device, as the quantization plan says: a Group's output
// [m, width()] holds its members' outputs side by side (q|k|v, gate|up). On the CPU each member is
// an nn::Linear (dense via oneDNN or int8 W8A8); on a GPU consecutive members of one precision run
// as one GEMM (nn/linear_cuda.h), members may be padded with zero rows (n_pad: more output
// columns) and the input with zero columns (k_pad), which changes no result; the CPU ignores the
// padding. Layers are named like the checkpoint keys.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "io/safetensors.h"
#include "nn/linear.h"
#include "ops/context.h"
#include "quant/plan.h"

namespace qdit::nn {

class LinearGroup {
public:
    struct Member {
        const LayerPlan* plan = nullptr;
        int64_t n_pad = 0, k_pad = 0;  // on a GPU: rows and input width to pad to (0: none)
    };

    LinearGroup() = default;
    // Loads the members' weights from `ck` onto ctx's device; activations in `compute` (the CPU:
    // F32 or BF16; a GPU: BF16).
    LinearGroup(const Checkpoint& ck, const std::vector<Member>& members, DType compute, const ops::Context& ctx);
    // Without a checkpoint: random N(0, 0.02) weights made on the GPU from `seed` (benchmarks at the
    // real size; nn/linear_cuda.h), quantized there as the plans say. A GPU context only.
    LinearGroup(const Checkpoint* ck, uint64_t seed, const std::vector<Member>& members, DType compute,
                const ops::Context& ctx);

    int64_t width() const { return width_; }               // output columns
    int64_t column(size_t i) const { return cols_.at(i); }  // where member i's block starts
    // What the group reads: the producing op writes it (ops/row.h, ops/glu.h).
    ops::ActivationSpec input_spec() const { return spec_; }
    int int8_members() const { return n_int8_; }
    size_t weight_bytes() const { return bytes_; }  // on the device (int8 scales included)

    // y [m, width()] in the compute dtype on ctx's device. An input without the int8 rows an int8
    // part needs is quantized here (per token, quant/int8.h).
    Tensor forward(const ops::Activation& in) const;

private:
    ops::Context ctx_;
    DType compute_ = DType::BF16;
    int64_t width_ = 0;
    std::vector<int64_t> cols_;
    ops::ActivationSpec spec_;
    int n_int8_ = 0;
    size_t bytes_ = 0;
    std::vector<Linear> cpu_;    // the CPU's members
    std::shared_ptr<void> gpu_;  // a GPU's nn::gpu::Group
};

}  // namespace qdit::nn
