// The CUDA kernels the Qwen3 text encoder adds or extends (rotate-half RoPE in qk_norm_rope, the
// plain residual of row_op, embedding_rows, causal grouped-query attention) against the CPU ops and
// an f64 evaluation. The encoder itself on every device: tests/models/qwen3_encoder.cpp.
//
// Bounds follow test_cuda_zimage_kernels.cpp: bf16 outputs within one bf16 step of the CPU op and
// rel L2 <= 1e-3; attention rel L2 <= 1e-2 and max error <= 2e-2 · max|ref| against both the CPU op
// in bf16 and an f64 evaluation of the formula on the same bf16 inputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "backend/cuda/attention.h"
#include "backend/cuda/device_tensor.h"
#include "backend/cuda/quantize.h"
#include "backend/cuda/row.h"
#include "backend/cuda/rope.h"
#include "backend/cuda/elementwise.h"
#include "backend/cpu/attention.h"
#include "backend/cpu/norm.h"
#include "backend/cpu/rope_half.h"
#include "tests/random_tensor.h"

using namespace qdit;
using cuda::DTensor;
using cuda::MemKind;

namespace {

bool have_gpu() { return cuda::device_count() > 0; }

using testutil::randn;

Tensor f32(const Tensor& t) { return t.to(DType::F32); }

struct Err {
    double e2 = 0, r2 = 0, max_abs = 0, max_ref = 0;
    double rel() const { return std::sqrt(e2 / r2); }
};

Err compare(const Tensor& a_in, const Tensor& r_in) {
    Tensor a = f32(a_in), r = f32(r_in);
    Err e;
    EXPECT_EQ(a.numel(), r.numel());
    if (a.numel() != r.numel()) return e;
    for (int64_t i = 0; i < r.numel(); ++i) {
        const double av = a.data<float>()[i], rv = r.data<float>()[i], d = av - rv;
        EXPECT_TRUE(std::isfinite(av)) << i;
        e.e2 += d * d;
        e.r2 += rv * rv;
        e.max_abs = std::max(e.max_abs, std::abs(d));
        e.max_ref = std::max(e.max_ref, std::abs(rv));
    }
    return e;
}

// bf16 outputs within one bf16 step of the reference element, rel L2 <= 1e-3.
void expect_close_bf16(const Tensor& out, const Tensor& ref, const char* what) {
    Tensor a = f32(out), r = f32(ref);
    ASSERT_EQ(a.numel(), r.numel()) << what;
    double worst = 0;
    for (int64_t i = 0; i < r.numel(); ++i) {
        const double rv = r.data<float>()[i];
        worst = std::max(worst, std::abs(a.data<float>()[i] - rv) / (std::abs(rv) * std::ldexp(1.0, -7) + 1e-6));
    }
    const Err e = compare(a, r);
    std::printf("[ %-28s ] rel L2 %.2e, max err %.2f bf16 steps\n", what, e.rel(), worst);
    EXPECT_LE(e.rel(), 1e-3) << what;
    EXPECT_LE(worst, 1.0) << what;
}

bool bits_equal(const Tensor& a, const Tensor& b) {
    return a.dtype() == b.dtype() && a.nbytes() == b.nbytes() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// Columns [c0, c0 + w) of a row-major host matrix [rows, ld] as a contiguous [rows, w] tensor.
Tensor columns(const Tensor& m, int64_t c0, int64_t w) {
    const int64_t rows = m.size(0), ld = m.size(1);
    const size_t es = dtype_size(m.dtype());
    Tensor out = Tensor::empty({rows, w}, m.dtype());
    for (int64_t r = 0; r < rows; ++r)
        std::memcpy(static_cast<uint8_t*>(out.raw()) + size_t(r * w) * es,
                    static_cast<const uint8_t*>(m.raw()) + size_t(r * ld + c0) * es, size_t(w) * es);
    return out;
}

const char* impl_name(cuda::AttentionImpl impl) {
    return impl == cuda::AttentionImpl::Simple ? "simple" : impl == cuda::AttentionImpl::Cudnn ? "cudnn" : "auto";
}

}  // namespace

// ---------------------------------------------------------------------------
// Kernels

// q/k RMSNorm + rotate-half RoPE in place on a fused q|k|v buffer with fewer k heads than q heads,
// against cpu::RMSNorm + cpu::apply_rope_half; v and the columns past it untouched.
TEST(CudaQwen3Kernels, QkNormRopeHalfGqaMatchesCpu) {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
    struct Case {
        int64_t heads, kv_heads, hd;
    };
    for (const Case& c : {Case{32, 8, 128}, Case{6, 2, 8}, Case{4, 4, 16}}) {
        const int64_t L = 37, Dq = c.heads * c.hd, Dk = c.kv_heads * c.hd, ld = Dq + 2 * Dk + 8;
        std::vector<int64_t> pos;
        for (int64_t t = 0; t < L; ++t) pos.push_back(3 * t + 1);
        Tensor freqs = cpu::RotaryHalf(1e6, c.hd).freqs(pos);
        Tensor qkv = randn({L, ld}, 21, 0.f, 2.f), wq = randn({c.hd}, 22, 1.f, 0.1f), wk = randn({c.hd}, 23, 1.f, 0.1f);
        Tensor q = columns(qkv, 0, Dq).view({1, L, c.heads, c.hd}), k = columns(qkv, Dq, Dk).view({1, L, c.kv_heads, c.hd});
        q = cpu::RMSNorm("q", wq, 1e-6f).forward(q);
        k = cpu::RMSNorm("k", wk, 1e-6f).forward(k);
        Tensor f4 = freqs.view({1, L, c.hd / 2, 2});
        cpu::apply_rope_half(q, f4);
        cpu::apply_rope_half(k, f4);
        DTensor d = DTensor::upload(qkv, MemKind::Activation, nullptr), df = DTensor::upload(freqs, MemKind::Activation, nullptr);
        DTensor dwq = DTensor::upload(wq, MemKind::Activation, nullptr), dwk = DTensor::upload(wk, MemKind::Activation, nullptr);
        cuda::qk_norm_rope(d.raw(), ld, Dq, L, c.heads, c.hd, dwq.raw(), dwk.raw(), 1e-6f, df.data<float>(), nullptr,
                           cuda::RopeLayout::Half, c.kv_heads);
        Tensor out = d.download(nullptr);
        const std::string tag = fmt::format("{}/{} heads hd={}", c.heads, c.kv_heads, c.hd);
        expect_close_bf16(columns(out, 0, Dq), q, ("q rope-half " + tag).c_str());
        expect_close_bf16(columns(out, Dq, Dk), k, ("k rope-half " + tag).c_str());
        EXPECT_TRUE(bits_equal(columns(out, Dq + Dk, Dk + 8), columns(qkv, Dq + Dk, Dk + 8))) << "v changed, " << tag;
    }
    // A kv head count that does not fit is refused.
    EXPECT_THROW(cuda::qk_norm_rope(nullptr, 64, 32, 1, 2, 16, nullptr, nullptr, 1e-6f, nullptr, nullptr,
                                    cuda::RopeLayout::Half, 3),
                 ShapeError);
}

// row_op's plain residual (w_res null): x ← bf16(x + y), then RMSNorm of the sum → bf16 and int8.
TEST(CudaQwen3Kernels, PlainResidualThenRmsNormMatchesCpu) {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
    for (int64_t k : {int64_t(2560), int64_t(48), int64_t(36)}) {
        const int64_t m = 29;
        Tensor x = randn({1, m, k}, 31, 0.f, 3.f), y = randn({1, m, k}, 32), w = randn({k}, 33, 1.f, 0.1f);
        Tensor xr = Tensor::empty(x.shape(), DType::BF16);
        for (int64_t i = 0; i < x.numel(); ++i)
            xr.data<uint16_t>()[i] = f32_to_bf16(bf16_to_f32(x.data<uint16_t>()[i]) + bf16_to_f32(y.data<uint16_t>()[i]));
        Tensor ref = cpu::RMSNorm("n", w, 1e-6f).forward(xr);
        DTensor dx = DTensor::upload(x, MemKind::Activation, nullptr), dy = DTensor::upload(y, MemKind::Activation, nullptr);
        DTensor dw = DTensor::upload(w, MemKind::Activation, nullptr), out = DTensor::empty({m, k}, DType::BF16);
        cuda::RowOp op;
        op.x = dx.raw();
        op.ldx = k;
        op.y = dy.raw();
        op.ldy = k;
        op.norm = cuda::RowNorm::Rms;
        op.w = dw.raw();
        op.eps = 1e-6f;
        op.out = out.raw();
        op.ldo = k;
        op.m = m;
        op.k = k;
        cuda::row_op(op, nullptr);
        // The sum is one rounding of an exact f32 sum of two bf16 values: bit-exact.
        EXPECT_TRUE(bits_equal(dx.download(nullptr), xr.view({m, k}))) << "residual k=" << k;
        expect_close_bf16(out.download(nullptr), ref, fmt::format("add + rmsnorm k={}", k).c_str());
    }
    // A shift belongs to the LayerNorm only (refused before any launch: the pointers are host ones).
    cuda::RowOp bad;
    float g = 1.f;
    bad.x = &g;
    bad.ldx = 1;
    bad.norm = cuda::RowNorm::Rms;
    bad.w = &g;
    bad.shift = &g;
    bad.m = bad.k = 1;
    EXPECT_THROW(cuda::row_op(bad, nullptr), ShapeError);
}

TEST(CudaQwen3Kernels, EmbeddingRowsGather) {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
    const int64_t vocab = 301, d = 200, ldo = 208;
    Tensor table = randn({vocab, d}, 41);
    std::vector<int32_t> ids = {0, 300, 17, 17, 5, 299, 1, 150};
    Tensor hid = Tensor::empty({int64_t(ids.size())}, DType::I32);
    std::memcpy(hid.raw(), ids.data(), ids.size() * 4);
    DTensor dt = DTensor::upload(table, MemKind::Activation, nullptr), di = DTensor::upload(hid, MemKind::Activation, nullptr);
    DTensor out = DTensor::empty({int64_t(ids.size()), ldo}, DType::BF16);
    cuda::embedding_rows(dt.raw(), vocab, d, di.data<int32_t>(), int64_t(ids.size()), out.raw(), ldo, nullptr);
    Tensor o = out.download(nullptr);
    for (size_t i = 0; i < ids.size(); ++i)
        EXPECT_EQ(std::memcmp(o.data<uint16_t>() + i * ldo, table.data<uint16_t>() + size_t(ids[i]) * d, size_t(d) * 2),
                  0)
            << "row " << i;
}

// Causal and/or grouped-query attention on strided q|k|v: the simple kernel and cuDNN against the CPU
// op in bf16 and an f64 evaluation of softmax(q·kᵀ/√hd)·v on the same bf16 inputs; cuDNN against the
// simple kernel; and a causal query 0 sees only key 0, so its output is v[0] exactly.
TEST(CudaAttention, CausalGroupedQueryMatchesCpuAndF64) {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
    struct Case {
        int64_t s, heads, kv_heads, hd;
        bool causal;
    };
    for (const Case& c : {Case{300, 8, 2, 128, true}, Case{45, 4, 2, 16, true}, Case{64, 4, 1, 64, false},
                          Case{70, 4, 4, 64, true}}) {
        const int64_t Dq = c.heads * c.hd, Dk = c.kv_heads * c.hd, ld = Dq + 2 * Dk;
        const std::string tag = fmt::format("s={} {}/{} heads hd={}{}", c.s, c.heads, c.kv_heads, c.hd,
                                            c.causal ? " causal" : "");
        Tensor qkv = randn({c.s, ld}, 51, 0.f, 1.5f);
        Tensor q = columns(qkv, 0, Dq).view({1, c.s, c.heads, c.hd}),
               k = columns(qkv, Dq, Dk).view({1, c.s, c.kv_heads, c.hd}),
               v = columns(qkv, Dq + Dk, Dk).view({1, c.s, c.kv_heads, c.hd});
        Tensor cpu = f32(cpu::scaled_dot_product_attention(q, k, v, Tensor(), c.causal));
        // f64 formula.
        Tensor qf = f32(q), kf = f32(k), vf = f32(v);
        Tensor exact = Tensor::empty({c.s, Dq}, DType::F32);
        const int64_t group = c.heads / c.kv_heads;
        for (int64_t h = 0; h < c.heads; ++h)
            for (int64_t i = 0; i < c.s; ++i) {
                const int64_t g = h / group, n = c.causal ? i + 1 : c.s;
                std::vector<double> p(static_cast<size_t>(n));
                double mx = -1e300, sum = 0;
                for (int64_t j = 0; j < n; ++j) {
                    double dot = 0;
                    for (int64_t d = 0; d < c.hd; ++d)
                        dot += double(qf.data<float>()[(i * c.heads + h) * c.hd + d]) *
                               kf.data<float>()[(j * c.kv_heads + g) * c.hd + d];
                    p[size_t(j)] = dot / std::sqrt(double(c.hd));
                    mx = std::max(mx, p[size_t(j)]);
                }
                for (int64_t j = 0; j < n; ++j) sum += (p[size_t(j)] = std::exp(p[size_t(j)] - mx));
                for (int64_t d = 0; d < c.hd; ++d) {
                    double acc = 0;
                    for (int64_t j = 0; j < n; ++j) acc += p[size_t(j)] * vf.data<float>()[(j * c.kv_heads + g) * c.hd + d];
                    exact.data<float>()[i * Dq + h * c.hd + d] = float(acc / sum);
                }
            }
        Err cpu_vs = compare(cpu, exact);
        std::printf("[ attention cpu    %-28s ] vs f64: rel L2 %.2e\n", tag.c_str(), cpu_vs.rel());

        DTensor d = DTensor::upload(qkv, MemKind::Activation, nullptr);
        const auto* p = static_cast<const uint16_t*>(d.raw());
        Tensor simple;
        for (auto impl : {cuda::AttentionImpl::Simple, cuda::AttentionImpl::Cudnn}) {
            if (impl == cuda::AttentionImpl::Cudnn && !cuda::cudnn_attention_available()) {
                std::printf("[ attention cudnn  %-28s ] skipped: no cuDNN\n", tag.c_str());
                continue;
            }
            DTensor o = DTensor::empty({c.s, Dq}, DType::BF16);
            cuda::check(cudaMemset(o.raw(), 0xff, o.nbytes()), "poison");  // NaNs unless written
            cuda::attention(p, ld, p + Dq, ld, p + Dq + Dk, ld, o.raw(), Dq, c.s, c.heads, c.hd, nullptr, impl,
                            c.kv_heads, c.causal);
            cuda::check(cudaDeviceSynchronize(), "attention");
            Tensor out = o.download(nullptr);
            Err vs_cpu = compare(out, cpu), vs_f64 = compare(out, exact);
            std::printf("[ attention %-6s %-28s ] rel L2 vs cpu %.2e, vs f64 %.2e; max err vs f64 %.2e of %.2e\n",
                        impl_name(impl), tag.c_str(), vs_cpu.rel(), vs_f64.rel(), vs_f64.max_abs, vs_f64.max_ref);
            for (const Err& e : {vs_cpu, vs_f64}) {
                EXPECT_LE(e.rel(), 1e-2) << impl_name(impl) << " " << tag;
                EXPECT_LE(e.max_abs, 2e-2 * e.max_ref) << impl_name(impl) << " " << tag;
            }
            if (c.causal) {
                // Query 0, head h: exactly v[0] of its kv head.
                Tensor o0 = columns(out.slice_rows(0, 1), 0, Dq), v0 = columns(qkv.slice_rows(0, 1), Dq + Dk, Dk);
                for (int64_t h = 0; h < c.heads; ++h)
                    EXPECT_EQ(std::memcmp(o0.data<uint16_t>() + h * c.hd, v0.data<uint16_t>() + (h / group) * c.hd,
                                          size_t(c.hd) * 2),
                              0)
                        << impl_name(impl) << " " << tag << " head " << h;
            }
            if (impl == cuda::AttentionImpl::Simple) {
                simple = out;
            } else {
                Err e = compare(out, simple);
                std::printf("[ attention cudnn vs simple %-19s ] rel L2 %.2e\n", tag.c_str(), e.rel());
                EXPECT_LE(e.rel(), 1e-2) << tag;
            }
        }
    }
    // The model's small head_dim (8) through Auto: cuDNN when it builds a plan, else the simple kernel.
    {
        const int64_t s = 20, heads = 6, kv = 2, hd = 8, Dq = heads * hd, Dk = kv * hd, ld = Dq + 2 * Dk;
        Tensor qkv = randn({s, ld}, 52);
        Tensor q = columns(qkv, 0, Dq).view({1, s, heads, hd}), k = columns(qkv, Dq, Dk).view({1, s, kv, hd}),
               v = columns(qkv, Dq + Dk, Dk).view({1, s, kv, hd});
        Tensor cpu = cpu::scaled_dot_product_attention(q, k, v, Tensor(), true);
        DTensor d = DTensor::upload(qkv, MemKind::Activation, nullptr);
        const auto* p = static_cast<const uint16_t*>(d.raw());
        DTensor o = DTensor::empty({s, Dq}, DType::BF16);
        cuda::attention(p, ld, p + Dq, ld, p + Dq + Dk, ld, o.raw(), Dq, s, heads, hd, nullptr, cuda::AttentionImpl::Auto,
                        kv, true);
        Err e = compare(o.download(nullptr), cpu);
        std::printf("[ attention auto   s=20 6/2 heads hd=8 causal   ] rel L2 vs cpu %.2e\n", e.rel());
        EXPECT_LE(e.rel(), 1e-2);
    }
    // Heads that are not a multiple of the kv heads are refused.
    EXPECT_THROW(cuda::attention(nullptr, 64, nullptr, 64, nullptr, 64, nullptr, 64, 4, 3, 16, nullptr,
                                 cuda::AttentionImpl::Simple, 2, true),
                 ShapeError);
}
