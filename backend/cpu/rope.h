// Multi-axis complex rotary position embedding (diffusers' RopeEmbedder for
// Z-Image / Lumina): each axis a of dim d_a contributes d_a/2 rotation
// frequencies ω_k = 1 / theta^(2k/d_a); a token's rotation angles are
// pos_a · ω_k for every axis, concatenated in axis order.
#pragma once
#include <vector>

#include "core/tensor.h"

namespace qdit::cpu {

class RopeEmbedder {
public:
    RopeEmbedder() = default;
    // Positions on axis a must lie in [0, axes_lens[a]).
    RopeEmbedder(double theta, std::vector<int64_t> axes_dims, std::vector<int64_t> axes_lens);

    int64_t head_dim() const { return head_dim_; }
    int64_t axes() const { return int64_t(dims_.size()); }

    // pos: N tokens × axes() positions, row-major → F32 [N, head_dim/2, 2]
    // holding (cos, sin) of each angle. The angle is computed in f64 and
    // rounded to f32 before cos/sin, as torch.polar on the f32 table does.
    Tensor freqs(const std::vector<int64_t>& pos) const;

private:
    std::vector<int64_t> dims_, lens_;
    int64_t head_dim_ = 0;
    std::vector<std::vector<float>> table_;  // per axis: [len, d/2, 2]
};

// x [B, L, H, head_dim] F32 or BF16, rotated in place: the pairs
// (x[2k], x[2k+1]) are multiplied as complex numbers by freqs [B, L,
// head_dim/2, 2] (same for every head) in f32, then stored back (rounded for BF16).
void apply_rope(Tensor& x, const Tensor& freqs);

}  // namespace qdit::cpu
