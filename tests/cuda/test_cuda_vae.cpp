// The AutoencoderKL decoder's CUDA kernels (backend/cuda/conv.h, image.h, group_norm.h,
// attention.h) and ops against host references, and its checks before a GPU is touched. The decoder
// itself against diffusers' outputs on every device: tests/models/vae.cpp.
//
// Bounds (all derived from what the arithmetic allows, none fitted to a measurement):
//   conv       F32: |y − ref| ≤ 1e-5·Σ|x·w| (f32 accumulation of K ≤ 600 terms in any order stays
//              well inside K·2^-24·Σ|x·w|; TF32 — 2^-11 per product — would not);
//              BF16: plus one bf16 rounding of the output, 2^-8·|ref|.
//   GroupNorm  F32: 1e-5 absolute, as the CPU op's test; BF16: against the CPU op, identical
//              except where the two (f32, exp) paths fall on different sides of a bf16 rounding
//              boundary: at most 1 bf16 ulp (2^-7 relative) and on ≥ 99% of the elements equal.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "backend/cuda/conv.h"
#include "backend/cuda/quantize.h"
#include "backend/cuda/elementwise.h"
#include "backend/cuda/attention.h"
#include "backend/cuda/image.h"
#include "io/files.h"
#include "io/safetensors.h"
#include "models/vae/autoencoder_kl.h"
#include "ops/image.h"
#include "ops/norm.h"
#include "backend/cpu/attention.h"
#include "tests/expect_error.h"
#include "tests/vae_fixture.h"

namespace fs = std::filesystem;
using namespace qdit;
using cuda::DTensor;
using cuda::MemKind;
using nlohmann::json;

namespace {

using testutil::compare;
using testutil::Err;
using testutil::expect_error_mentioning;
using testutil::kVaeDir;
using testutil::random_tensor;

#define SKIP_WITHOUT_GPU() \
    if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device"

const ops::Context kGpu{{DeviceType::CUDA, 0}};

// The tensor's values as f32 after rounding to dt.
Tensor rounded(const Tensor& t, DType dt) { return t.to(dt).to(DType::F32); }

}  // namespace

// ---- convolution ------------------------------------------------------------------------------------

TEST(CudaConv, MatchesNaiveLoop) {
    SKIP_WITHOUT_GPU();
    struct Case {
        int64_t in, out, k, pad, B, H, W;
        bool bias;
    };
    const Case cases[] = {
        {3, 5, 3, 1, 2, 5, 7, true},     // neither channel count a multiple of 8: both padded
        {16, 3, 3, 1, 1, 6, 9, true},    // conv_out: 3 output channels
        {4, 16, 3, 1, 2, 4, 5, true},    // conv_in of diffusers' default config: 4 latent channels
        {12, 20, 1, 0, 1, 7, 3, true},   // a 1x1 conv_shortcut with odd sizes
        {8, 8, 3, 0, 1, 6, 6, false},    // no padding, no bias
        {64, 32, 3, 1, 1, 9, 11, true},  // tensor-core sized
    };
    for (DType dt : {DType::F32, DType::BF16}) {
        for (const Case& c : cases) {
            SCOPED_TRACE(fmt::format("{} {}->{} k{} p{} [{}, {}, {}]", dtype_name(dt), c.in, c.out, c.k, c.pad, c.B,
                                     c.H, c.W));
            const int64_t Ho = c.H + 2 * c.pad - c.k + 1, Wo = c.W + 2 * c.pad - c.k + 1;
            const Tensor x = rounded(random_tensor({c.B, c.H, c.W, c.in}, 1), dt);
            const Tensor w = rounded(random_tensor({c.out, c.in, c.k, c.k}, 2, 0.3f), dt);
            const Tensor bias = c.bias ? rounded(random_tensor({c.out}, 3), dt) : Tensor();
            cuda::Conv2d conv("test.conv", w, bias, c.pad, dt);
            std::printf("[ conv %-4s %2lld->%2lld k%lld ] %s\n", dtype_name(dt), (long long)c.in, (long long)c.out,
                        (long long)c.k, conv.plan_info(c.B, c.H, c.W).c_str());
            const DTensor dx = DTensor::upload(x.to(dt), MemKind::Activation, nullptr);
            const DTensor dy = conv.forward(dx, nullptr);
            ASSERT_EQ(dy.shape(), (Shape{c.B, Ho, Wo, c.out}));
            ASSERT_EQ(dy.dtype(), dt);
            const Tensor y = dy.download(nullptr).to(DType::F32);
            const float *xp = x.data<float>(), *wp = w.data<float>();
            int bad = 0;
            for (int64_t b = 0; b < c.B; ++b)
                for (int64_t i = 0; i < Ho; ++i)
                    for (int64_t j = 0; j < Wo; ++j)
                        for (int64_t o = 0; o < c.out; ++o) {
                            double s = c.bias ? bias.data<float>()[o] : 0.0, mag = std::abs(s);
                            for (int64_t ci = 0; ci < c.in; ++ci)
                                for (int64_t u = 0; u < c.k; ++u)
                                    for (int64_t v = 0; v < c.k; ++v) {
                                        const int64_t yi = i + u - c.pad, xj = j + v - c.pad;
                                        if (yi < 0 || yi >= c.H || xj < 0 || xj >= c.W) continue;
                                        const double t = double(xp[((b * c.H + yi) * c.W + xj) * c.in + ci]) *
                                                         wp[((o * c.in + ci) * c.k + u) * c.k + v];
                                        s += t;
                                        mag += std::abs(t);
                                    }
                            const double got = y.data<float>()[((b * Ho + i) * Wo + j) * c.out + o];
                            const double tol =
                                1e-5 * mag + 1e-6 + (dt == DType::BF16 ? std::ldexp(std::abs(s), -8) : 0.0);
                            if (!(std::abs(got - s) <= tol) && ++bad <= 5)
                                ADD_FAILURE() << "y[" << b << "," << i << "," << j << "," << o << "] = " << got
                                              << ", expected " << s << " ± " << tol;
                        }
            EXPECT_EQ(bad, 0);
        }
    }
}

TEST(CudaConv, RejectsBadInputsNamingTheLayer) {
    SKIP_WITHOUT_GPU();
    cuda::Conv2d conv("decoder.conv_in", random_tensor({8, 4, 3, 3}, 1), Tensor(), 1, DType::BF16);
    const DTensor wrong_c = DTensor::zeros({1, 5, 5, 3}, DType::BF16, MemKind::Activation, nullptr);
    expect_error_mentioning([&] { conv.forward(wrong_c, nullptr); }, "decoder.conv_in");
    EXPECT_THROW(conv.forward(wrong_c, nullptr), ShapeError);
    const DTensor wrong_dt = DTensor::zeros({1, 5, 5, 4}, DType::F32, MemKind::Activation, nullptr);
    EXPECT_THROW(conv.forward(wrong_dt, nullptr), ShapeError);
    const DTensor too_small = DTensor::zeros({1, 1, 1, 4}, DType::BF16, MemKind::Activation, nullptr);
    cuda::Conv2d valid("valid", random_tensor({8, 4, 3, 3}, 1), Tensor(), 0, DType::BF16);
    EXPECT_THROW(valid.forward(too_small, nullptr), ShapeError);
    expect_error_mentioning([&] { cuda::Conv2d("bad.bias", random_tensor({8, 4, 3, 3}, 1), random_tensor({7}, 2), 1,
                                               DType::F32); },
                            "bad.bias");
}

// ---- GroupNorm ------------------------------------------------------------------------------------------

TEST(CudaGroupNorm, MatchesHostReference) {
    SKIP_WITHOUT_GPU();
    struct Case {
        int64_t B, L, C, G;
    };
    const Case cases[] = {
        {2, 13, 12, 3},      // C not a multiple of 8: the scalar path
        {3, 5, 40, 4},       // C not a multiple of 64 (partial channel tile)
        {1, 1073, 96, 32},   // 3 channels a group
        {1, 4113, 512, 32},  // many row chunks, the mid block's width
    };
    for (DType dt : {DType::F32, DType::BF16})
        for (const Case& c : cases)
            for (bool silu : {false, true}) {
                SCOPED_TRACE(fmt::format("{} [{}, {}, {}] G={} silu={}", dtype_name(dt), c.B, c.L, c.C, c.G, silu));
                Tensor x = random_tensor({c.B, c.L, c.C}, 7, 2.0f, 3.0f);  // a non-zero mean
                x = rounded(x, dt);
                const Tensor w = random_tensor({c.C}, 8, 0.5f, 1.0f), bias = random_tensor({c.C}, 9);
                const Tensor y = ops::to_host(ops::group_norm(ops::to_device(x.to(dt), kGpu), ops::to_device(w, kGpu),
                                                              ops::to_device(bias, kGpu), c.G, 1e-6f, silu, kGpu),
                                              kGpu)
                                     .to(DType::F32);
                if (dt == DType::F32) {
                    const int64_t cg = c.C / c.G;
                    const float* xp = x.data<float>();
                    int bad = 0;
                    for (int64_t b = 0; b < c.B; ++b)
                        for (int64_t g = 0; g < c.G; ++g) {
                            double s = 0, ss = 0;
                            for (int64_t l = 0; l < c.L; ++l)
                                for (int64_t ch = g * cg; ch < (g + 1) * cg; ++ch) s += xp[(b * c.L + l) * c.C + ch];
                            const double mean = s / double(c.L * cg);
                            for (int64_t l = 0; l < c.L; ++l)
                                for (int64_t ch = g * cg; ch < (g + 1) * cg; ++ch) {
                                    const double d = xp[(b * c.L + l) * c.C + ch] - mean;
                                    ss += d * d;
                                }
                            const double rstd = 1.0 / std::sqrt(ss / double(c.L * cg) + 1e-6);
                            for (int64_t l = 0; l < c.L; ++l)
                                for (int64_t ch = g * cg; ch < (g + 1) * cg; ++ch) {
                                    const int64_t i = (b * c.L + l) * c.C + ch;
                                    double r = (xp[i] - mean) * rstd * w.data<float>()[ch] + bias.data<float>()[ch];
                                    if (silu) r = r / (1 + std::exp(-r));
                                    if (!(std::abs(y.data<float>()[i] - r) <= 1e-5) && ++bad <= 5)
                                        ADD_FAILURE() << "y[" << i << "] = " << y.data<float>()[i] << ", expected " << r;
                                }
                        }
                    EXPECT_EQ(bad, 0);
                } else {
                    const Tensor xb = x.to(DType::BF16).view({c.B, c.L, c.C});
                    const Tensor ref = ops::group_norm(xb, w, bias, c.G, 1e-6f, silu, ops::Context{}).to(DType::F32);
                    int64_t equal = 0;
                    int bad = 0;
                    for (int64_t i = 0; i < ref.numel(); ++i) {
                        const float a = y.data<float>()[i], r = ref.data<float>()[i];
                        equal += a == r;
                        if (!(std::abs(a - r) <= std::ldexp(std::abs(r), -7) + 1e-30) && ++bad <= 5)
                            ADD_FAILURE() << "y[" << i << "] = " << a << ", CPU " << r;
                    }
                    EXPECT_EQ(bad, 0);
                    EXPECT_GE(double(equal), 0.99 * double(ref.numel()));
                }
            }
}

// ---- small kernels --------------------------------------------------------------------------------------

TEST(CudaVaeKernels, UpsampleAddTransposeAreExact) {
    SKIP_WITHOUT_GPU();
    for (DType dt : {DType::F32, DType::BF16})
        for (int64_t C : {5, 16}) {  // element path and 16-byte vector path
            SCOPED_TRACE(fmt::format("{} C={}", dtype_name(dt), C));
            const int64_t B = 2, H = 3, W = 4;
            const Tensor x = rounded(random_tensor({B, H, W, C}, 10), dt);
            const DTensor dx = DTensor::upload(x.to(dt), MemKind::Activation, nullptr);
            DTensor dy = DTensor::empty({B, 2 * H, 2 * W, C}, dt);
            cuda::upsample_nearest_2x(dx.raw(), dy.raw(), dt, B, H, W, C, nullptr);
            const Tensor y = dy.download(nullptr).to(DType::F32);
            for (int64_t b = 0; b < B; ++b)
                for (int64_t i = 0; i < 2 * H; ++i)
                    for (int64_t j = 0; j < 2 * W; ++j)
                        for (int64_t c = 0; c < C; ++c)
                            ASSERT_EQ(y.data<float>()[((b * 2 * H + i) * 2 * W + j) * C + c],
                                      x.data<float>()[((b * H + i / 2) * W + j / 2) * C + c]);

            // x ← dt(x + r)
            const Tensor r = rounded(random_tensor({B, H, W, C}, 11), dt);
            DTensor da = DTensor::upload(x.to(dt), MemKind::Activation, nullptr);
            const DTensor dr = DTensor::upload(r.to(dt), MemKind::Activation, nullptr);
            cuda::add_inplace(da.raw(), dr.raw(), da.numel(), dt, nullptr);
            const Tensor a = da.download(nullptr).to(DType::F32);
            Tensor sum = Tensor::empty(x.shape(), DType::F32);
            for (int64_t i = 0; i < x.numel(); ++i) sum.data<float>()[i] = x.data<float>()[i] + r.data<float>()[i];
            const Tensor sum_ref = rounded(sum, dt);
            for (int64_t i = 0; i < x.numel(); ++i) ASSERT_EQ(a.data<float>()[i], sum_ref.data<float>()[i]) << i;

            // [B, M, N] f32 → [B, N, M] dt (rounding) and back
            const int64_t M = 37, N = 45;
            const Tensor t = random_tensor({B, M, N}, 12);
            const DTensor dt_in = DTensor::upload(t, MemKind::Activation, nullptr);
            DTensor dtr = DTensor::empty({B, N, M}, dt);
            cuda::transpose(dt_in.raw(), DType::F32, dtr.raw(), dt, B, M, N, nullptr);
            const Tensor tr = dtr.download(nullptr).to(DType::F32);
            const Tensor tr_ref = rounded(t, dt);
            for (int64_t b = 0; b < B; ++b)
                for (int64_t m = 0; m < M; ++m)
                    for (int64_t n = 0; n < N; ++n)
                        ASSERT_EQ(tr.data<float>()[(b * N + n) * M + m], tr_ref.data<float>()[(b * M + m) * N + n]);
        }
}

TEST(CudaVaeKernels, PostprocessMatchesCpuExactly) {
    SKIP_WITHOUT_GPU();
    for (DType dt : {DType::F32, DType::BF16}) {
        SCOPED_TRACE(dtype_name(dt));
        const int64_t B = 2, C = 3, H = 7, W = 13;
        Tensor img = random_tensor({B, C, H, W}, 13, 0.8f);
        float* p = img.data<float>();
        // values on rounding boundaries, out of range and NaN
        p[0] = 1.0f / 255.0f * 2 - 1;
        p[1] = -1.0f;
        p[2] = 1.0f;
        p[3] = 3.5f;
        p[4] = -2.0f;
        p[5] = std::nanf("");
        for (int k = 0; k < 20; ++k) p[6 + k] = (2.0f * (float(k) + 0.5f) / 255.0f) - 1.0f;  // x·127.5 + 127.5 = k + .5
        const Tensor host = img.to(dt);
        const Tensor ref = ops::image_to_u8(host, {});
        const Tensor d = ops::image_to_u8(ops::to_device(host, kGpu), kGpu);
        ASSERT_EQ(d.dtype(), DType::U8);
        ASSERT_EQ(d.shape(), ref.shape());
        const Tensor got = ops::to_host(d, kGpu);
        for (int64_t i = 0; i < ref.numel(); ++i)
            ASSERT_EQ(int(got.data<uint8_t>()[i]), int(ref.data<uint8_t>()[i])) << "value " << i;
    }
}

// Single-head attention with queries in chunks (a scratch limit of ~40 rows) against the CPU op.
TEST(CudaVaeKernels, AttentionMatchesCpu) {
    SKIP_WITHOUT_GPU();
    for (DType dt : {DType::F32, DType::BF16})
        for (int64_t d : {32, 72}) {
            SCOPED_TRACE(fmt::format("{} d={}", dtype_name(dt), d));
            const int64_t L = 301;
            // q | k | v as columns of one [L, 3d] matrix, as the fused projection writes them
            const Tensor qkv = rounded(random_tensor({L, 3 * d}, 14, 1.5f), dt);
            Tensor q = Tensor::empty({1, L, 1, d}, DType::F32), k = q.to(DType::F32), v = q.to(DType::F32);
            for (int64_t t = 0; t < L; ++t)
                for (int64_t c = 0; c < d; ++c) {
                    q.data<float>()[t * d + c] = qkv.data<float>()[t * 3 * d + c];
                    k.data<float>()[t * d + c] = qkv.data<float>()[t * 3 * d + d + c];
                    v.data<float>()[t * d + c] = qkv.data<float>()[t * 3 * d + 2 * d + c];
                }
            const Tensor ref = cpu::scaled_dot_product_attention(q.to(dt), k.to(dt), v.to(dt)).to(DType::F32);
            const DTensor dq = DTensor::upload(qkv.to(dt), MemKind::Activation, nullptr);
            DTensor o = DTensor::empty({L, d}, dt);
            const size_t es = dtype_size(dt);
            const uint8_t* base = static_cast<const uint8_t*>(dq.raw());
            cuda::attention_one_head(base, base + d * es, base + 2 * d * es, 3 * d, o.raw(), d, L, d, dt, nullptr,
                                     40 * size_t(L) * (4 + es));
            const Tensor got = o.download(nullptr).to(DType::F32);
            Err e = compare(got, ref.view({L, d}));
            std::printf("[ attention %s d=%lld ] max|err| %.3g, rel L2 %.3g vs CPU\n", dtype_name(dt), (long long)d,
                        e.max_abs, e.rel_l2());
            if (dt == DType::F32)
                EXPECT_LE(e.max_abs, 1e-5 * std::max(1.0, e.max_ref));
            else  // same rounding points; only accumulation order and exp differ: ≤ 1 bf16 ulp
                EXPECT_LE(e.max_abs, std::ldexp(e.max_ref, -7));
        }
}

// ---- the decoder ------------------------------------------------------------------------------------------

TEST(CudaVae, BadConfigAndWeightsAreRefusedByName) {
    // Checked before the GPU is touched: runs without a device too.
    const fs::path dir = fs::temp_directory_path() / ("qdit_cuda_vae_" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
    fs::copy(kVaeDir, dir, fs::copy_options::recursive);
    json j = read_json_file((dir / "config.json").string());
    j["act_fn"] = "mish";
    write_file_atomic((dir / "config.json").string(), j.dump(2));
    expect_error_mentioning([&] { vae::AutoencoderKL m(dir.string(), DType::BF16, kGpu); }, "act_fn");
    EXPECT_THROW(vae::AutoencoderKL m(dir.string(), DType::BF16, kGpu), ConfigError);
    EXPECT_THROW(vae::AutoencoderKL m(kVaeDir, DType::F16, kGpu), ConfigError);

    j["act_fn"] = "silu";
    j["use_post_quant_conv"] = true;  // the checkpoint has none
    write_file_atomic((dir / "config.json").string(), j.dump(2));
    expect_error_mentioning([&] { vae::AutoencoderKL m(dir.string(), DType::BF16, kGpu); }, "post_quant_conv.weight");
    EXPECT_THROW(vae::AutoencoderKL m(dir.string(), DType::BF16, kGpu), ShapeError);
    fs::remove_all(dir);
}
