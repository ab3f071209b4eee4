// Tensor- and sequence-parallel arithmetic of the DiT over `world` ranks, apart from the transport:
// how weights and activations are split, what each rank computes, and which collective joins the
// pieces so that the result equals the one-device result — bit for bit for the int8 Linear layers.
// A multi-GPU run performs these steps with NCCL collectives; the tests perform them with simulated
// ranks in one process (tests/test_tensor_parallel.cpp).
//
// Tensor parallelism (Megatron layout) for an int8 Linear, weight q [N, K] with per-row scales:
//   Column split: rank r holds rows split(N) of q, scale and bias and computes those output columns
//                 from the whole (identically quantized) input; an all-gather along N joins them.
//   Row split:    rank r holds columns split(K, 16) of q; the scales are the whole rows' (weights are
//                 quantized before they are split), the bias lives on rank 0. The input arrives split
//                 the same way, so the per-token activation scale needs the whole token: each rank
//                 takes its columns' absmax (row_absmax), an all-reduce MAX gives the token's, each
//                 rank quantizes its columns with it (quantize_rows_with_absmax) and multiplies them
//                 into int32 partial sums; an all-reduce SUM of those (exact) is dequantized once
//                 (dequantize_int8). Per-shard activation scales or per-shard dequantization would not
//                 reproduce the one-device result.
//   In a block: q/k/v and w1/w3 split by columns (whole heads per rank), to_out and w2 by rows.
//
// Sequence parallelism (Ulysses) for attention: rank r holds tokens split(L) of q, k and v; an
// all-to-all gives it heads split(H) of every token, it runs attention for those heads, and the
// inverse all-to-all returns its tokens with every head (seq_to_heads / heads_to_seq).
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace qdit::parallel {

struct Range {
    int64_t begin = 0, end = 0;
    int64_t size() const { return end - begin; }
};

// Rank `rank`'s contiguous part of n units, split in whole multiples of `unit` (a head's width, 16
// int8 columns); the first ranks get one multiple more. Throws UsageError when n % unit != 0 or
// rank / world are out of range.
Range split(int64_t n, int rank, int world, int64_t unit = 1);

enum class LinearSplit { Column, Row };

// A rank's part of an int8 Linear (q I8 [N, K], scale F32 [N], bias F32 [N] or undefined).
struct Int8Shard {
    Tensor q, scale, bias;  // bias undefined where the rank adds none
    Range range;            // rows (Column) or columns (Row) of the whole weight
};
Int8Shard shard_int8_linear(const Tensor& q, const Tensor& scale, const Tensor& bias, LinearSplit split, int rank,
                            int world);

// absmax[i] = max |x[i, :]| over a rank's columns of x [m, k_r] (F32 or BF16).
void row_absmax(const Tensor& x, float* absmax);
// quant/int8.h's per-token rule for a rank's columns x [m, k_r] with the whole rows' absmax:
// q I8 [m, k_r], scale[m] (equal on every rank).
void quantize_rows_with_absmax(const Tensor& x, const float* absmax, int8_t* q, float* scale);
// The one dequantization of summed int32 accumulators acc [m, n]: y = fma(float(acc)·sx[i], sw[j],
// bias[j]) in f32 (bias null: 0), as every int8 GEMM epilogue of qdit, returned as `out` (F32/BF16).
Tensor dequantize_int8(const int32_t* acc, int64_t m, int64_t n, const float* sx, const float* sw,
                       const float* bias, DType out);

// The Ulysses all-to-all for simulated ranks. seq_to_heads: per rank its tokens [L_r, heads·hd]
// (ranks in order) → per rank every token of its heads split(heads): [L, H_r·hd].
// heads_to_seq: the inverse, back to the token split of `tokens` (per rank) with every head.
std::vector<Tensor> seq_to_heads(const std::vector<Tensor>& token_shards, int64_t heads, int64_t hd);
std::vector<Tensor> heads_to_seq(const std::vector<Tensor>& head_shards, int64_t heads, int64_t hd,
                                 const std::vector<Range>& tokens);

}  // namespace qdit::parallel
