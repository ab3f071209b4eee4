#include "parallel/tensor_parallel.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "quant/int8.h"

namespace qdit::parallel {

Range split(int64_t n, int rank, int world, int64_t unit) {
    if (world < 1 || rank < 0 || rank >= world)
        raise<UsageError>("rank {} of {} ranks: ranks are 0..world-1 and world >= 1", rank, world);
    if (unit < 1 || n < 0 || n % unit)
        raise<UsageError>("{} units cannot be split in whole multiples of {}", n, unit);
    const int64_t blocks = n / unit, base = blocks / world, extra = blocks % world;
    const int64_t b = rank * base + std::min<int64_t>(rank, extra);
    return Range{b * unit, (b + base + (rank < extra ? 1 : 0)) * unit};
}

namespace {

// Columns [c0, c1) of a row-major 2-D tensor, as a contiguous copy.
Tensor columns(const Tensor& t, int64_t c0, int64_t c1) {
    const int64_t rows = t.size(0), cols = t.size(1);
    const size_t es = dtype_size(t.dtype());
    Tensor o = Tensor::empty({rows, c1 - c0}, t.dtype());
    for (int64_t r = 0; r < rows; ++r)
        std::memcpy(static_cast<uint8_t*>(o.raw()) + size_t(r * (c1 - c0)) * es,
                    static_cast<const uint8_t*>(t.raw()) + size_t(r * cols + c0) * es, size_t(c1 - c0) * es);
    return o;
}

// Rows [r0, r1) of a row-major tensor, as a contiguous copy.
Tensor rows(const Tensor& t, int64_t r0, int64_t r1) {
    const size_t row = t.numel() ? t.nbytes() / size_t(t.size(0)) : 0;
    Shape s = t.shape();
    s[0] = r1 - r0;
    Tensor o = Tensor::empty(s, t.dtype());
    std::memcpy(o.raw(), static_cast<const uint8_t*>(t.raw()) + size_t(r0) * row, size_t(r1 - r0) * row);
    return o;
}

std::vector<float> row_f32(const Tensor& x, int64_t i) {
    const int64_t k = x.size(1);
    std::vector<float> r(static_cast<size_t>(k));
    convert_to_f32(static_cast<const uint8_t*>(x.raw()) + size_t(i * k) * dtype_size(x.dtype()), x.dtype(), r.data(),
                   k);
    return r;
}

void check_2d(const Tensor& x, const char* what) {
    if (x.dim() != 2 || (x.dtype() != DType::F32 && x.dtype() != DType::BF16))
        raise<ShapeError>("{}: x must be F32 or BF16 [m, k], got {} {}", what, dtype_name(x.dtype()),
                          shape_str(x.shape()));
}

}  // namespace

Int8Shard shard_int8_linear(const Tensor& q, const Tensor& scale, const Tensor& bias, LinearSplit how, int rank,
                            int world) {
    if (q.dtype() != DType::I8 || q.dim() != 2 || scale.dtype() != DType::F32 || scale.numel() != q.size(0) ||
        (bias.defined() && (bias.dtype() != DType::F32 || bias.numel() != q.size(0))))
        raise<ShapeError>("shard_int8_linear: q must be I8 [N, K] with F32 [N] scale and bias, got {} {}, scale {}",
                          dtype_name(q.dtype()), shape_str(q.shape()), shape_str(scale.shape()));
    Int8Shard s;
    if (how == LinearSplit::Column) {
        s.range = split(q.size(0), rank, world);
        s.q = rows(q, s.range.begin, s.range.end);
        s.scale = rows(scale.view({q.size(0)}), s.range.begin, s.range.end);
        if (bias.defined()) s.bias = rows(bias.view({q.size(0)}), s.range.begin, s.range.end);
    } else {
        s.range = split(q.size(1), rank, world, 16);  // the int8 GEMMs take K in multiples of 16
        s.q = columns(q, s.range.begin, s.range.end);
        s.scale = scale.view({q.size(0)});
        if (bias.defined() && rank == 0) s.bias = bias.view({q.size(0)});
    }
    return s;
}

void row_absmax(const Tensor& x, float* absmax) {
    check_2d(x, "row_absmax");
    for (int64_t i = 0; i < x.size(0); ++i) {
        float a = 0.f;
        for (float v : row_f32(x, i)) a = std::max(a, std::fabs(v));
        absmax[i] = a;
    }
}

void quantize_rows_with_absmax(const Tensor& x, const float* absmax, int8_t* q, float* scale) {
    check_2d(x, "quantize_rows_with_absmax");
    const int64_t k = x.size(1);
    for (int64_t i = 0; i < x.size(0); ++i)
        quantize_row_with_absmax(row_f32(x, i).data(), k, absmax[i], q + i * k, scale + i);
}

Tensor dequantize_int8(const int32_t* acc, int64_t m, int64_t n, const float* sx, const float* sw, const float* bias,
                       DType out) {
    Tensor y = Tensor::empty({m, n}, DType::F32);
    for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j)
            y.data<float>()[i * n + j] = std::fma(float(acc[i * n + j]) * sx[i], sw[j], bias ? bias[j] : 0.f);
    return y.to(out);
}

std::vector<Tensor> seq_to_heads(const std::vector<Tensor>& token_shards, int64_t heads, int64_t hd) {
    const int world = int(token_shards.size());
    int64_t L = 0;
    for (const Tensor& t : token_shards) {
        if (t.dim() != 2 || t.size(1) != heads * hd)
            raise<ShapeError>("seq_to_heads: every shard must be [L_r, {}], got {}", heads * hd, shape_str(t.shape()));
        L += t.size(0);
    }
    std::vector<Tensor> out;
    for (int r = 0; r < world; ++r) {
        const Range h = split(heads, r, world);
        std::vector<Tensor> parts;
        for (const Tensor& t : token_shards) parts.push_back(columns(t, h.begin * hd, h.end * hd));
        Tensor o = Tensor::empty({L, h.size() * hd}, token_shards[0].dtype());
        size_t at = 0;
        for (const Tensor& p : parts) {  // the all-to-all's receive: token blocks in rank order
            std::memcpy(static_cast<uint8_t*>(o.raw()) + at, p.raw(), p.nbytes());
            at += p.nbytes();
        }
        out.push_back(o);
    }
    return out;
}

std::vector<Tensor> heads_to_seq(const std::vector<Tensor>& head_shards, int64_t heads, int64_t hd,
                                 const std::vector<Range>& tokens) {
    const int world = int(head_shards.size());
    if (int(tokens.size()) != world) raise<ShapeError>("heads_to_seq: {} shards but {} token ranges", world, tokens.size());
    std::vector<Tensor> out;
    for (int r = 0; r < world; ++r) {
        Tensor o = Tensor::empty({tokens[size_t(r)].size(), heads * hd}, head_shards[0].dtype());
        const size_t es = dtype_size(o.dtype());
        for (int s = 0; s < world; ++s) {  // rank s holds heads split(heads, s) of every token
            const Range h = split(heads, s, world);
            const Tensor& src = head_shards[size_t(s)];
            for (int64_t t = tokens[size_t(r)].begin; t < tokens[size_t(r)].end; ++t)
                std::memcpy(static_cast<uint8_t*>(o.raw()) + size_t((t - tokens[size_t(r)].begin) * heads * hd + h.begin * hd) * es,
                            static_cast<const uint8_t*>(src.raw()) + size_t(t * h.size() * hd) * es, size_t(h.size() * hd) * es);
        }
        out.push_back(o);
    }
    return out;
}

}  // namespace qdit::parallel
