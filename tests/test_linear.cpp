// nn::Linear: dense (oneDNN) and int8 W8A8 against fp64 references.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <string>
#include <random>
#include <vector>

#include "nn/linear.h"
#include "nn/load.h"
#include "backend/cpu/quantize.h"
#include "quant/int8.h"

using namespace qdit;

namespace {

struct Problem {
    int64_t m, n, k;
    Tensor x, w, b;  // F32
};

// Random data with outlier tokens (rows x50) and outlier input channels (x20).
Problem make_problem(int64_t m, int64_t n, int64_t k, unsigned seed) {
    Problem p{m, n, k, Tensor::empty({m, k}, DType::F32), Tensor::empty({n, k}, DType::F32),
              Tensor::empty({n}, DType::F32)};
    std::mt19937 rng(seed);
    std::normal_distribution<float> d(0.f, 1.f);
    for (int64_t i = 0; i < m * k; ++i) p.x.data<float>()[i] = d(rng);
    for (int64_t i = 0; i < n * k; ++i) p.w.data<float>()[i] = 0.05f * d(rng);
    for (int64_t i = 0; i < n; ++i) p.b.data<float>()[i] = d(rng);
    for (int64_t i = 0; i < m; i += 7)
        for (int64_t j = 0; j < k; ++j) p.x.data<float>()[i * k + j] *= 50.f;
    for (int64_t j = 3; j < k; j += 61)
        for (int64_t i = 0; i < m; ++i) p.x.data<float>()[i * k + j] *= 20.f;
    return p;
}

// x, w read as f32 (possibly bf16-rounded already); returns x·wᵀ + b in fp64.
std::vector<double> reference(const Tensor& x, const Tensor& w, const Tensor& b) {
    const int64_t m = x.numel() / x.size(-1), k = x.size(-1), n = w.size(0);
    std::vector<double> y(size_t(m * n));
    for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j) {
            double acc = b.defined() ? b.item_f32(j) : 0.0;
            for (int64_t p = 0; p < k; ++p) acc += double(x.item_f32(i * k + p)) * w.item_f32(j * k + p);
            y[size_t(i * n + j)] = acc;
        }
    return y;
}

// sum_k |x_mk| |w_nk|, the scale of f32 accumulation error.
double abs_dot(const Tensor& x, const Tensor& w, int64_t i, int64_t j) {
    const int64_t k = x.size(-1);
    double s = 0;
    for (int64_t p = 0; p < k; ++p) s += std::fabs(double(x.item_f32(i * k + p)) * w.item_f32(j * k + p));
    return s;
}

}  // namespace

TEST(Linear, Int8MatchesFp64WithinQuantizationBound) {
    Problem p = make_problem(37, 70, 259, 11);
    Tensor q, sw;
    cpu::quantize_weight_int8(p.w, &q, &sw);
    nn::Linear lin = nn::Linear::int8("blocks.0.attn.to_q", q, sw, p.b);
    EXPECT_TRUE(lin.quantized());
    EXPECT_EQ(lin.in_features(), p.k);
    EXPECT_EQ(lin.out_features(), p.n);
    EXPECT_EQ(lin.weight_bytes(), size_t(p.n * p.k + p.n * 4));

    // Per-token scales as the kernel computes them.
    std::vector<float> sx(size_t(p.m));
    std::vector<int8_t> qx(size_t(p.m * p.k));
    quantize_rows_int8_ref(p.x.raw(), DType::F32, p.m, p.k, p.k, qx.data(), sx.data());

    const auto ref = reference(p.x, p.w, p.b);
    for (DType dt : {DType::F32, DType::BF16}) {
        // A BF16 input is first rounded; the bound is then about the rounded input.
        Tensor xin = p.x.to(dt);
        Tensor xr = xin.to(DType::F32);
        std::vector<float> sxr(size_t(p.m));
        quantize_rows_int8_ref(xr.raw(), DType::F32, p.m, p.k, p.k, qx.data(), sxr.data());
        const auto ref_dt = reference(xr, p.w, p.b);
        Tensor y = lin.forward(xin.view({1, p.m, p.k}));
        ASSERT_EQ(y.dtype(), dt);
        ASSERT_EQ(y.shape(), (Shape{1, p.m, p.n}));
        double err2 = 0, ref2 = 0;
        for (int64_t i = 0; i < p.m; ++i)
            for (int64_t j = 0; j < p.n; ++j) {
                const float s_w = sw.data<float>()[j], s_x = sxr[size_t(i)];
                double bound = 0;
                for (int64_t c = 0; c < p.k; ++c)
                    bound += std::fabs(xr.data<float>()[i * p.k + c]) * s_w * 0.5 +
                             std::fabs(p.w.data<float>()[j * p.k + c]) * s_x * 0.5 + s_x * s_w * 0.25;
                const double r = ref_dt[size_t(i * p.n + j)];
                // Slack: the rounded division in quantization, f32 epilogue, bf16 output.
                bound = bound * (1 + 1e-4) + (std::fabs(r) + bound) * 1e-6 +
                        (dt == DType::BF16 ? (std::fabs(r) + bound) * 0x1p-8 : 0.0);
                const double got = y.item_f32(i * p.n + j);
                ASSERT_LE(std::fabs(got - r), bound) << dtype_name(dt) << " " << i << "," << j;
                err2 += (got - ref[size_t(i * p.n + j)]) * (got - ref[size_t(i * p.n + j)]);
                ref2 += ref[size_t(i * p.n + j)] * ref[size_t(i * p.n + j)];
            }
        EXPECT_LT(std::sqrt(err2 / ref2), 0.03) << dtype_name(dt);
    }
}

TEST(Linear, DenseF32MatchesFp64) {
    Problem p = make_problem(19, 45, 130, 21);
    nn::Linear lin = nn::Linear::dense("proj", p.w, p.b);
    EXPECT_FALSE(lin.quantized());
    EXPECT_EQ(lin.weight_bytes(), size_t(p.n * p.k * 4));
    const auto ref = reference(p.x, p.w, p.b);
    for (int rep = 0; rep < 2; ++rep) {  // the second call uses the cached primitive
        Tensor y = lin.forward(p.x);
        ASSERT_EQ(y.shape(), (Shape{p.m, p.n}));
        for (int64_t i = 0; i < p.m; ++i)
            for (int64_t j = 0; j < p.n; ++j)
                ASSERT_NEAR(y.data<float>()[i * p.n + j], ref[size_t(i * p.n + j)],
                            1e-5 * (abs_dot(p.x, p.w, i, j) + std::fabs(p.b.data<float>()[j])))
                    << i << "," << j;
    }
    // Without bias.
    nn::Linear nb = nn::Linear::dense("proj", p.w, Tensor());
    const auto ref0 = reference(p.x, p.w, Tensor());
    Tensor y0 = nb.forward(p.x);
    for (int64_t i = 0; i < p.m * p.n; ++i)
        ASSERT_NEAR(y0.data<float>()[i], ref0[size_t(i)], 1e-5 * abs_dot(p.x, p.w, i / p.n, i % p.n));
}

TEST(Linear, DenseBf16MatchesFp64OfRoundedInputs) {
    Problem p = make_problem(23, 40, 200, 31);
    Tensor xb = p.x.to(DType::BF16), wb = p.w.to(DType::BF16);
    const auto ref = reference(xb, wb, p.b);
    // BF16 weight, and an F32 weight used with a BF16 input (converted once).
    for (const Tensor& w : {wb, p.w}) {
        nn::Linear lin = nn::Linear::dense("ff.w1", w, p.b);
        Tensor y = lin.forward(xb);
        ASSERT_EQ(y.dtype(), DType::BF16);
        for (int64_t i = 0; i < p.m; ++i)
            for (int64_t j = 0; j < p.n; ++j) {
                const double r = ref[size_t(i * p.n + j)];
                // f32 accumulation of exact bf16 products, then one bf16 rounding.
                const double bound = std::fabs(r) * 0x1p-8 + 1e-5 * (abs_dot(xb, wb, i, j) + std::fabs(p.b.item_f32(j)));
                ASSERT_NEAR(y.item_f32(i * p.n + j), r, bound) << i << "," << j;
            }
    }
}

TEST(Linear, RejectsBadInputs) {
    Problem p = make_problem(2, 3, 4, 1);
    nn::Linear lin = nn::Linear::dense("x", p.w, p.b);
    EXPECT_THROW(lin.forward(Tensor::zeros({2, 5}, DType::F32)), ShapeError);
    EXPECT_THROW(nn::Linear::dense("x", p.w, Tensor::zeros({4}, DType::F32)), ShapeError);
    EXPECT_THROW(nn::Linear::int8("x", p.w, Tensor::zeros({3}, DType::F32), Tensor()), ShapeError);
    Tensor y = lin.forward(Tensor::empty({0, 4}, DType::F32));
    EXPECT_EQ(y.shape(), (Shape{0, 3}));
}

// QDIT_LOAD_THREADS: the GPU load's reading threads, 4 by default, 1 to 64, anything else refused
// naming the variable.
TEST(LoadThreads, FromTheEnvironment) {
    const char* old = std::getenv("QDIT_LOAD_THREADS");
    const std::string saved = old ? old : "";
    ::unsetenv("QDIT_LOAD_THREADS");
    EXPECT_EQ(nn::load_threads(), 4);
    ::setenv("QDIT_LOAD_THREADS", "8", 1);
    EXPECT_EQ(nn::load_threads(), 8);
    ::setenv("QDIT_LOAD_THREADS", "64", 1);
    EXPECT_EQ(nn::load_threads(), 64);
    for (const char* bad : {"0", "65", "4x", "-2", "many"}) {
        ::setenv("QDIT_LOAD_THREADS", bad, 1);
        try {
            nn::load_threads();
            ADD_FAILURE() << bad << " accepted";
        } catch (const UsageError& e) {
            EXPECT_NE(std::string(e.what()).find("QDIT_LOAD_THREADS"), std::string::npos) << e.what();
        }
    }
    if (old)
        ::setenv("QDIT_LOAD_THREADS", saved.c_str(), 1);
    else
        ::unsetenv("QDIT_LOAD_THREADS");
}
