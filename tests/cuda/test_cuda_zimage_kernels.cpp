// The transformers' row, rope and elementwise kernels (backend/cuda/row.h, rope.h, elementwise.h,
// attention.h) against the CPU nn ops on fixed-seed random bf16 data. Runs only where a CUDA device is present.
//
// Bounds: the kernels follow the CPU ops' rounding points and sum squares in double, so bf16
// outputs differ only where a different f32 evaluation order (block reductions, expf/tanhf vs libm
// within 2 ulp) lands on the other side of a bf16 rounding boundary: a few elements by one bf16
// step (relative 2^-8 of the value). We require rel-L2 <= 1e-3 and max error <= 1 bf16 step of the
// reference element (|ref| · 2^-7 + 1e-6). Int8 outputs: the scale bit-exact, q within ±1 of the
// CPU's quantization of the CPU's bf16 values (an element one bf16 step off can round the other
// way), at most 0.1% of them off. Attention: cuDNN and the simple kernel against the CPU op in
// bf16: rel-L2 <= 1e-2 (bf16 probabilities and outputs: ~3e-3 expected), max error <= 2e-2 · max|ref|.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "backend/cuda/attention.h"
#include "backend/cuda/device_tensor.h"
#include "backend/cuda/quantize.h"
#include "backend/cuda/row.h"
#include "backend/cuda/rope.h"
#include "backend/cuda/elementwise.h"
#include "backend/cpu/activation.h"
#include "backend/cpu/attention.h"
#include "backend/cpu/norm.h"
#include "backend/cpu/rope.h"
#include "quant/int8.h"
#include "tests/random_tensor.h"

using namespace qdit;
using cuda::DTensor;
using cuda::MemKind;

namespace {

using testutil::randn;

Tensor f32(const Tensor& t) { return t.to(DType::F32); }

struct Err {
    double rel_l2, max_excess;  // max_excess: max |out − ref| / (one bf16 step of ref); <= 1 passes
};

Err compare_bf16(const Tensor& out, const Tensor& ref) {
    Tensor a = f32(out), r = f32(ref);
    double e2 = 0, r2 = 0, worst = 0;
    for (int64_t i = 0; i < r.numel(); ++i) {
        const double d = std::abs(double(a.data<float>()[i]) - r.data<float>()[i]);
        const double rv = r.data<float>()[i];
        EXPECT_TRUE(std::isfinite(a.data<float>()[i])) << i;
        e2 += d * d;
        r2 += rv * rv;
        worst = std::max(worst, d / (std::abs(rv) * std::ldexp(1.0, -7) + 1e-6));
    }
    return {std::sqrt(e2 / r2), worst};
}

void expect_close(const Tensor& out, const Tensor& ref, const char* what) {
    Err e = compare_bf16(out, ref);
    std::printf("[ %-24s ] rel L2 %.2e, max err %.2f bf16 steps\n", what, e.rel_l2, e.max_excess);
    EXPECT_LE(e.rel_l2, 1e-3) << what;
    EXPECT_LE(e.max_excess, 1.0) << what;
}

// Checks q / s (device, rows padded to ldq) against the CPU rule applied to the CPU's bf16 values.
void expect_quant(const DTensor& q, const DTensor& qs, const Tensor& ref_bf16, int64_t ldq, const char* what) {
    const int64_t m = ref_bf16.size(0), k = ref_bf16.size(1);
    std::vector<int8_t> qr(static_cast<size_t>(m * k));
    std::vector<float> sr(static_cast<size_t>(m));
    quantize_rows_int8_ref(ref_bf16.raw(), DType::BF16, m, k, k, qr.data(), sr.data());
    Tensor qg = q.download(nullptr), sg = qs.download(nullptr);
    int64_t off = 0, scale_off = 0;
    for (int64_t r = 0; r < m; ++r) {
        if (sg.data<float>()[r] != sr[size_t(r)]) ++scale_off;
        for (int64_t j = 0; j < ldq; ++j) {
            const int v = qg.data<int8_t>()[r * ldq + j];
            if (j >= k) {
                EXPECT_EQ(v, 0) << what << " padding " << r << "," << j;
                continue;
            }
            const int d = std::abs(v - int(qr[size_t(r * k + j)]));
            EXPECT_LE(d, 1) << what << " " << r << "," << j;
            off += d != 0;
        }
    }
    std::printf("[ %-24s ] int8: %lld of %lld q off by one, %lld of %lld scales differ\n", what, (long long)off,
                (long long)(m * k), (long long)scale_off, (long long)m);
    EXPECT_LE(double(off), 1e-3 * double(m * k)) << what;
    EXPECT_LE(double(scale_off), 0.01 * double(m) + 1) << what;
}

bool have_gpu() { return cuda::device_count() > 0; }

}  // namespace

// RMSNorm · (1 + scale) → bf16 and int8, for a vectorized width and one the int8 GEMM cannot take.
TEST(CudaZImageKernels, RmsNormScaleQuantMatchesCpu) {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
    for (int64_t k : {int64_t(3840), int64_t(72)}) {
        const int64_t m = 67, ldq = (k + 15) / 16 * 16;
        Tensor x = randn({1, m, k}, 1, 0.f, 3.f), w = randn({k}, 2, 1.f, 0.1f);
        Tensor sc = f32(randn({1, k}, 3, 1.f, 0.2f));
        Tensor ref = cpu::RMSNorm("n", w, 1e-5f).forward_scaled(x, sc);
        DTensor dx = DTensor::upload(x, MemKind::Activation, nullptr), dw = DTensor::upload(w, MemKind::Activation, nullptr);
        DTensor ds = DTensor::upload(sc, MemKind::Activation, nullptr);
        DTensor out = DTensor::empty({m, k}, DType::BF16), q = DTensor::empty({m, ldq}, DType::I8),
                qs = DTensor::empty({m}, DType::F32);
        cuda::check(cudaMemset(q.raw(), 0x55, q.nbytes()), "poison");
        cuda::RowOp op;
        op.x = dx.raw();
        op.ldx = k;
        op.norm = cuda::RowNorm::Rms;
        op.w = dw.raw();
        op.scale = ds.data<float>();
        op.out = out.raw();
        op.ldo = k;
        op.q = q.data<int8_t>();
        op.qs = qs.data<float>();
        op.ldq = ldq;
        op.m = m;
        op.k = k;
        cuda::row_op(op, nullptr);
        expect_close(out.download(nullptr).view({1, m, k}), ref, k == 72 ? "rmsnorm·scale k=72" : "rmsnorm·scale k=3840");
        expect_quant(q, qs, ref.view({m, k}), ldq, k == 72 ? "rmsnorm quant k=72" : "rmsnorm quant k=3840");
    }
}

// x += gate · norm2(y), then the next RMSNorm · scale from the updated x; and the final LayerNorm.
TEST(CudaZImageKernels, ResidualThenNormAndLayerNormMatchCpu) {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
    const int64_t m = 45, k = 3840;
    Tensor x = randn({1, m, k}, 4, 0.f, 2.f), y = randn({1, m, k}, 5), w2 = randn({k}, 6, 1.f, 0.1f),
           w1 = randn({k}, 7, 1.f, 0.1f);
    Tensor gate = f32(randn({1, k}, 8, 0.f, 0.5f)), sc = f32(randn({1, k}, 9, 1.f, 0.2f));
    Tensor xr = x.to(DType::BF16);
    cpu::RMSNorm("n2", w2, 1e-5f).add_to(xr, y, gate);
    Tensor ref_norm = cpu::RMSNorm("n1", w1, 1e-5f).forward_scaled(xr, sc);
    Tensor ref_ln = cpu::layer_norm(xr, 1e-6f, sc);

    DTensor dx = DTensor::upload(x, MemKind::Activation, nullptr), dy = DTensor::upload(y, MemKind::Activation, nullptr);
    DTensor dw2 = DTensor::upload(w2, MemKind::Activation, nullptr), dw1 = DTensor::upload(w1, MemKind::Activation, nullptr);
    DTensor dg = DTensor::upload(gate, MemKind::Activation, nullptr), ds = DTensor::upload(sc, MemKind::Activation, nullptr);
    DTensor out = DTensor::empty({m, k}, DType::BF16), ln = DTensor::empty({m, k}, DType::BF16);
    cuda::RowOp op;
    op.x = dx.raw();
    op.ldx = k;
    op.y = dy.raw();
    op.ldy = k;
    op.w_res = dw2.raw();
    op.gate = dg.data<float>();
    op.norm = cuda::RowNorm::Rms;
    op.w = dw1.raw();
    op.scale = ds.data<float>();
    op.out = out.raw();
    op.ldo = k;
    op.m = m;
    op.k = k;
    cuda::row_op(op, nullptr);
    cuda::RowOp lo;
    lo.x = dx.raw();
    lo.ldx = k;
    lo.norm = cuda::RowNorm::LayerNorm;
    lo.eps = 1e-6f;
    lo.scale = ds.data<float>();
    lo.out = ln.raw();
    lo.ldo = k;
    lo.m = m;
    lo.k = k;
    cuda::row_op(lo, nullptr);
    expect_close(dx.download(nullptr).view({1, m, k}), xr, "residual (gated)");
    expect_close(out.download(nullptr).view({1, m, k}), ref_norm, "next rmsnorm·scale");
    expect_close(ln.download(nullptr).view({1, m, k}), ref_ln, "layernorm·scale");
}

// SwiGLU of a fused w1|w3 output, with the quantized output padded (hidden 170 → 176).
TEST(CudaZImageKernels, SwigluQuantMatchesCpu) {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
    for (int64_t k : {int64_t(10240), int64_t(170)}) {
        const int64_t m = 33, ldq = (k + 15) / 16 * 16;
        Tensor h = randn({m, 2 * k}, 10, 0.f, 2.f);
        Tensor a = Tensor::empty({m, k}, DType::BF16), b = Tensor::empty({m, k}, DType::BF16);
        for (int64_t r = 0; r < m; ++r)
            for (int64_t j = 0; j < k; ++j) {
                a.data<uint16_t>()[r * k + j] = h.data<uint16_t>()[r * 2 * k + j];
                b.data<uint16_t>()[r * k + j] = h.data<uint16_t>()[r * 2 * k + k + j];
            }
        Tensor ref = cpu::silu_mul(a, b);
        DTensor dh = DTensor::upload(h, MemKind::Activation, nullptr);
        DTensor out = DTensor::empty({m, k}, DType::BF16), q = DTensor::empty({m, ldq}, DType::I8),
                qs = DTensor::empty({m}, DType::F32);
        cuda::swiglu(dh.raw(), 2 * k, m, k, out.raw(), k, q.data<int8_t>(), qs.data<float>(), ldq, nullptr);
        expect_close(out.download(nullptr), ref, k == 170 ? "swiglu k=170" : "swiglu k=10240");
        expect_quant(q, qs, ref, ldq, k == 170 ? "swiglu quant k=170" : "swiglu quant k=10240");
    }
}

// q/k RMSNorm + RoPE in place on a fused q|k|v buffer, angles from cpu::RopeEmbedder.
TEST(CudaZImageKernels, QkNormRopeMatchesCpu) {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
    struct Case {
        int64_t heads, hd;
        std::vector<int64_t> axes;
    };
    // hd 128 and 64 take the 16-byte vector kernel, 24 the warp-per-head one.
    for (const Case& c : {Case{30, 128, {32, 48, 48}}, Case{4, 64, {16, 24, 24}}, Case{3, 24, {8, 8, 8}}}) {
        const int64_t L = 70, D = c.heads * c.hd;
        cpu::RopeEmbedder rope(256.0, c.axes, {1024, 512, 512});
        std::vector<int64_t> pos;
        for (int64_t t = 0; t < L; ++t) pos.insert(pos.end(), {t % 40 + 1, t / 7, t % 9});
        Tensor freqs = rope.freqs(pos);
        Tensor qkv = randn({L, 3 * D}, 11, 0.f, 2.f), wq = randn({c.hd}, 12, 1.f, 0.1f), wk = randn({c.hd}, 13, 1.f, 0.1f);
        Tensor q = Tensor::empty({1, L, c.heads, c.hd}, DType::BF16), k = q.to(DType::BF16);
        for (int64_t t = 0; t < L; ++t)
            for (int64_t i = 0; i < D; ++i) {
                q.data<uint16_t>()[t * D + i] = qkv.data<uint16_t>()[t * 3 * D + i];
                k.data<uint16_t>()[t * D + i] = qkv.data<uint16_t>()[t * 3 * D + D + i];
            }
        q = cpu::RMSNorm("q", wq, 1e-5f).forward(q);
        k = cpu::RMSNorm("k", wk, 1e-5f).forward(k);
        Tensor f4 = freqs.view({1, L, c.hd / 2, 2});
        cpu::apply_rope(q, f4);
        cpu::apply_rope(k, f4);
        DTensor d = DTensor::upload(qkv, MemKind::Activation, nullptr), df = DTensor::upload(freqs, MemKind::Activation, nullptr);
        DTensor dwq = DTensor::upload(wq, MemKind::Activation, nullptr), dwk = DTensor::upload(wk, MemKind::Activation, nullptr);
        cuda::qk_norm_rope(d.raw(), 3 * D, D, L, c.heads, c.hd, dwq.raw(), dwk.raw(), 1e-5f, df.data<float>(), nullptr);
        Tensor out = d.download(nullptr);
        Tensor qo = Tensor::empty({1, L, c.heads, c.hd}, DType::BF16), ko = qo.to(DType::BF16);
        for (int64_t t = 0; t < L; ++t)
            for (int64_t i = 0; i < D; ++i) {
                qo.data<uint16_t>()[t * D + i] = out.data<uint16_t>()[t * 3 * D + i];
                ko.data<uint16_t>()[t * D + i] = out.data<uint16_t>()[t * 3 * D + D + i];
                // v untouched
                EXPECT_EQ(out.data<uint16_t>()[t * 3 * D + 2 * D + i], qkv.data<uint16_t>()[t * 3 * D + 2 * D + i]);
            }
        const std::string hd = " hd=" + std::to_string(c.hd);
        expect_close(qo, q, ("q norm+rope" + hd).c_str());
        expect_close(ko, k, ("k norm+rope" + hd).c_str());
    }
}

TEST(CudaZImageKernels, ModulationAndSiluMatchCpu) {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
    const int64_t d = 3840;
    Tensor mod = randn({4 * d}, 14);
    DTensor dm = DTensor::upload(mod, MemKind::Activation, nullptr), out = DTensor::empty({4 * d}, DType::F32);
    cuda::modulation(dm.raw(), 4, d, 0b1010u, out.data<float>(), nullptr);
    Tensor o = out.download(nullptr);
    int64_t off = 0;
    for (int64_t i = 0; i < 4 * d; ++i) {
        const float v = mod.item_f32(i);
        const float r = bf16_to_f32(f32_to_bf16((i / d) % 2 ? std::tanh(v) : 1.f + v));
        off += o.data<float>()[i] != r;
        EXPECT_LE(std::abs(o.data<float>()[i] - r), std::abs(r) * std::ldexp(1.f, -7) + 1e-6f) << i;
    }
    EXPECT_LE(off, 4 * d / 1000);
    Tensor s = cpu::silu(mod);
    DTensor ds = DTensor::empty({4 * d}, DType::BF16);
    cuda::silu(dm.raw(), 4 * d, ds.raw(), nullptr);
    expect_close(ds.download(nullptr), s, "silu");
}

// Attention on strided q|k|v (the fused projection layout), both implementations.
TEST(CudaZImageKernels, AttentionMatchesCpu) {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
    struct Case {
        int64_t s, heads, hd;
    };
    for (const Case& c : {Case{300, 4, 128}, Case{64, 3, 24}}) {
        const int64_t D = c.heads * c.hd;
        Tensor qkv = randn({c.s, 3 * D}, 15, 0.f, 1.5f);
        Tensor q = Tensor::empty({1, c.s, c.heads, c.hd}, DType::BF16), k = q.to(DType::BF16), v = q.to(DType::BF16);
        for (int64_t t = 0; t < c.s; ++t)
            for (int64_t i = 0; i < D; ++i) {
                q.data<uint16_t>()[t * D + i] = qkv.data<uint16_t>()[t * 3 * D + i];
                k.data<uint16_t>()[t * D + i] = qkv.data<uint16_t>()[t * 3 * D + D + i];
                v.data<uint16_t>()[t * D + i] = qkv.data<uint16_t>()[t * 3 * D + 2 * D + i];
            }
        Tensor ref = f32(cpu::scaled_dot_product_attention(q, k, v));
        DTensor d = DTensor::upload(qkv, MemKind::Activation, nullptr);
        const auto* p = static_cast<const uint16_t*>(d.raw());
        for (auto impl : {cuda::AttentionImpl::Simple, cuda::AttentionImpl::Cudnn}) {
            const char* name = impl == cuda::AttentionImpl::Simple ? "simple" : "cudnn";
            if (impl == cuda::AttentionImpl::Cudnn && !cuda::cudnn_attention_available()) {
                std::printf("[ attention %-14s ] skipped: no cuDNN\n", name);
                continue;
            }
            DTensor o = DTensor::empty({c.s, D}, DType::BF16);
            cuda::check(cudaMemset(o.raw(), 0xff, o.nbytes()), "poison");  // NaNs unless written
            cuda::attention(p, 3 * D, p + D, 3 * D, p + 2 * D, 3 * D, o.raw(), D, c.s, c.heads, c.hd, nullptr, impl);
            cuda::check(cudaDeviceSynchronize(), "attention");
            Tensor out = f32(o.download(nullptr));
            double e2 = 0, r2 = 0, mx = 0, mr = 0;
            for (int64_t i = 0; i < ref.numel(); ++i) {
                const double a = out.data<float>()[i], r = ref.data<float>()[i];
                ASSERT_TRUE(std::isfinite(a)) << name << " " << i;
                e2 += (a - r) * (a - r);
                r2 += r * r;
                mx = std::max(mx, std::abs(a - r));
                mr = std::max(mr, std::abs(r));
            }
            std::printf("[ attention %-6s s=%-4lld hd=%-3lld ] rel L2 %.2e, max err %.2e of max|ref| %.2e\n", name,
                        (long long)c.s, (long long)c.hd, std::sqrt(e2 / r2), mx, mr);
            EXPECT_LE(std::sqrt(e2 / r2), 1e-2) << name;
            EXPECT_LE(mx, 2e-2 * mr) << name;
        }
    }
}
