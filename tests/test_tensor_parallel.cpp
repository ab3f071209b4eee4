// Tensor and sequence parallelism with simulated ranks (parallel/tensor_parallel.h): every rank's
// part is computed as a device would, the collectives are done here (concatenation, MAX, SUM,
// all-to-all), and the joined result must equal the one-device result bit for bit.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "backend/cpu/int8_gemm.h"
#include "core/error.h"
#include "backend/cpu/attention.h"
#include "parallel/tensor_parallel.h"
#include "backend/cpu/quantize.h"
#include "quant/int8.h"
#include "random_tensor.h"

using namespace qdit;
using parallel::LinearSplit;
using parallel::Range;

namespace {

using testutil::randn;

// Columns [c0, c1) of x [m, k].
Tensor cols(const Tensor& x, int64_t c0, int64_t c1) {
    Tensor o = Tensor::empty({x.size(0), c1 - c0}, x.dtype());
    const size_t es = dtype_size(x.dtype());
    for (int64_t r = 0; r < x.size(0); ++r)
        std::memcpy(static_cast<uint8_t*>(o.raw()) + size_t(r * (c1 - c0)) * es,
                    static_cast<const uint8_t*>(x.raw()) + size_t(r * x.size(1) + c0) * es, size_t(c1 - c0) * es);
    return o;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
    return a.shape() == b.shape() && a.dtype() == b.dtype() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// The one-device int8 Linear: per-token quantization of the whole row, int8 GEMM, fused epilogue.
Tensor int8_linear(const Tensor& x, const Tensor& q, const Tensor& scale, const Tensor& bias) {
    const int64_t m = x.size(0), k = x.size(1), n = q.size(0);
    std::vector<int8_t> xq(size_t(m * k));
    std::vector<float> sx(static_cast<size_t>(m));
    quantize_rows_int8_ref(x.raw(), x.dtype(), m, k, k, xq.data(), sx.data());
    Tensor y = Tensor::empty({m, n}, DType::BF16);
    cpu::int8_gemm(xq.data(), sx.data(), m, cpu::pack_int8_weight(q, scale), bias.defined() ? bias.data<float>() : nullptr,
                   y.raw(), DType::BF16, n);
    return y;
}

// A random input x [m, k], int8 weight (quantized from f32 [n, k]) with bias, and the one-device
// output want = int8_linear(x, q, scale, bias); seeds seed, seed + 1, seed + 2.
struct Int8Layer {
    Tensor x, q, scale, bias, want;
};
Int8Layer int8_layer(int64_t m, int64_t k, int64_t n, uint32_t seed) {
    Int8Layer l;
    l.x = randn({m, k}, seed);
    l.bias = randn({n}, seed + 2, 0.f, 1.f, DType::F32);
    cpu::quantize_weight_int8(randn({n, k}, seed + 1, 0.f, 1.f, DType::F32), &l.q, &l.scale);
    l.want = int8_linear(l.x, l.q, l.scale, l.bias);
    return l;
}

}  // namespace

TEST(TensorParallel, SplitCoversEveryUnitOnceInWholeMultiples) {
    for (int64_t n : {0, 16, 48, 3840, 10240}) {
        for (int world : {1, 2, 3, 4, 8}) {
            int64_t next = 0;
            for (int r = 0; r < world; ++r) {
                const Range g = parallel::split(n, r, world, 16);
                EXPECT_EQ(g.begin, next);
                EXPECT_EQ(g.size() % 16, 0);
                EXPECT_LE(g.size(), (n / 16 + world - 1) / world * 16);  // balanced
                next = g.end;
            }
            EXPECT_EQ(next, n);
        }
    }
    EXPECT_THROW(parallel::split(40, 0, 2, 16), UsageError);
    EXPECT_THROW(parallel::split(32, 2, 2), UsageError);
    EXPECT_THROW(parallel::split(32, 0, 0), UsageError);
}

// Column split: each rank computes its output columns from the whole input; joined = one device.
TEST(TensorParallel, ColumnSplitInt8LinearEqualsOneDevice) {
    const int64_t m = 37, n = 80;
    const Int8Layer l = int8_layer(m, 96, n, 1);
    const Tensor &x = l.x, &q = l.q, &scale = l.scale, &bias = l.bias, &want = l.want;
    for (int world : {1, 2, 3, 5}) {
        SCOPED_TRACE(world);
        Tensor joined = Tensor::empty({m, n}, DType::BF16);
        for (int r = 0; r < world; ++r) {
            const parallel::Int8Shard s = parallel::shard_int8_linear(q, scale, bias, LinearSplit::Column, r, world);
            const Tensor y = int8_linear(x, s.q, s.scale, s.bias);  // all-gather along N:
            for (int64_t i = 0; i < m; ++i)
                std::memcpy(joined.data<uint16_t>() + i * n + s.range.begin, y.data<uint16_t>() + i * y.size(1),
                            size_t(s.range.size()) * 2);
        }
        EXPECT_TRUE(same_bytes(joined, want));
    }
}

// Row split: the input arrives split by columns; MAX of the ranks' absmax, quantization with it,
// int32 partial sums, SUM, one dequantization = one device. Per-rank activation scales do not.
TEST(TensorParallel, RowSplitInt8LinearEqualsOneDevice) {
    const int64_t m = 29, n = 48;
    const Int8Layer l = int8_layer(m, 160, n, 4);
    const Tensor &x = l.x, &q = l.q, &scale = l.scale, &bias = l.bias, &want = l.want;
    for (int world : {1, 2, 3, 4}) {
        SCOPED_TRACE(world);
        std::vector<parallel::Int8Shard> shards;
        std::vector<Tensor> xs;
        std::vector<float> amax(size_t(m), 0.f);
        for (int r = 0; r < world; ++r) {
            shards.push_back(parallel::shard_int8_linear(q, scale, bias, LinearSplit::Row, r, world));
            xs.push_back(cols(x, shards.back().range.begin, shards.back().range.end));
            std::vector<float> a(static_cast<size_t>(m));
            parallel::row_absmax(xs.back(), a.data());
            for (int64_t i = 0; i < m; ++i) amax[size_t(i)] = std::max(amax[size_t(i)], a[size_t(i)]);  // all-reduce MAX
        }
        std::vector<int32_t> acc(size_t(m * n), 0);
        std::vector<float> sx(static_cast<size_t>(m));
        for (int r = 0; r < world; ++r) {
            const int64_t kr = xs[size_t(r)].size(1);
            if (kr == 0) continue;
            std::vector<int8_t> xq(size_t(m * kr));
            parallel::quantize_rows_with_absmax(xs[size_t(r)], amax.data(), xq.data(), sx.data());
            std::vector<int32_t> part(size_t(m * n));
            cpu::int8_gemm_s32(xq.data(), m, cpu::pack_int8_weight(shards[size_t(r)].q, shards[size_t(r)].scale),
                               part.data());
            for (size_t i = 0; i < acc.size(); ++i) acc[i] += part[i];  // all-reduce SUM (int32: exact)
            EXPECT_EQ(shards[size_t(r)].bias.defined(), r == 0);
        }
        const Tensor joined =
            parallel::dequantize_int8(acc.data(), m, n, sx.data(), scale.data<float>(), bias.data<float>(), DType::BF16);
        EXPECT_TRUE(same_bytes(joined, want));
        if (world > 1) {
            // The naive split — each rank quantizes with its own columns' scale and dequantizes its
            // part — is not the one-device result.
            Tensor naive = Tensor::zeros({m, n}, DType::F32);
            for (int r = 0; r < world; ++r) {
                const Tensor y = int8_linear(xs[size_t(r)], shards[size_t(r)].q, scale, shards[size_t(r)].bias);
                const Tensor yf = y.to(DType::F32);
                for (int64_t i = 0; i < m * n; ++i) naive.data<float>()[i] += yf.data<float>()[i];
            }
            EXPECT_FALSE(same_bytes(naive.to(DType::BF16), want));
        }
    }
}

// Ulysses: tokens split → all-to-all → attention for a rank's heads over every token → all-to-all
// back = attention on one device.
TEST(TensorParallel, UlyssesAttentionEqualsOneDevice) {
    const int64_t L = 45, heads = 6, hd = 16;
    const Tensor q = randn({L, heads * hd}, 7), k = randn({L, heads * hd}, 8), v = randn({L, heads * hd}, 9);
    const Tensor want =
        cpu::scaled_dot_product_attention(q.view({1, L, heads, hd}), k.view({1, L, heads, hd}), v.view({1, L, heads, hd}))
            .view({L, heads * hd});
    for (int world : {1, 2, 3, 6}) {
        SCOPED_TRACE(world);
        std::vector<Range> tokens;
        std::vector<Tensor> qs, ks, vs;
        for (int r = 0; r < world; ++r) {
            tokens.push_back(parallel::split(L, r, world));
            auto part = [&](const Tensor& t) {
                Tensor o = Tensor::empty({tokens.back().size(), heads * hd}, t.dtype());
                std::memcpy(o.raw(), t.data<uint16_t>() + tokens.back().begin * heads * hd, o.nbytes());
                return o;
            };
            qs.push_back(part(q));
            ks.push_back(part(k));
            vs.push_back(part(v));
        }
        const auto qh = parallel::seq_to_heads(qs, heads, hd), kh = parallel::seq_to_heads(ks, heads, hd),
                   vh = parallel::seq_to_heads(vs, heads, hd);
        std::vector<Tensor> oh;
        for (int r = 0; r < world; ++r) {
            const int64_t hr = parallel::split(heads, r, world).size();
            oh.push_back(cpu::scaled_dot_product_attention(qh[size_t(r)].view({1, L, hr, hd}), kh[size_t(r)].view({1, L, hr, hd}),
                                                          vh[size_t(r)].view({1, L, hr, hd}))
                             .view({L, hr * hd}));
        }
        const auto out = parallel::heads_to_seq(oh, heads, hd, tokens);
        Tensor joined = Tensor::empty({L, heads * hd}, DType::BF16);
        for (int r = 0; r < world; ++r)
            std::memcpy(joined.data<uint16_t>() + tokens[size_t(r)].begin * heads * hd, out[size_t(r)].raw(),
                        out[size_t(r)].nbytes());
        EXPECT_TRUE(same_bytes(joined, want));
    }
}
