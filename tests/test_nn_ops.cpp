// nn/ CPU ops against simple double-precision references.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "backend/cpu/activation.h"
#include "backend/cpu/attention.h"
#include "backend/cpu/norm.h"
#include "backend/cpu/rope.h"

using namespace qdit;

namespace {

Tensor random(Shape shape, uint32_t seed, float stddev = 1.0f) {
    Tensor t = Tensor::empty(std::move(shape), DType::F32);
    std::mt19937 rng(seed);
    std::normal_distribution<float> d(0.f, stddev);
    for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = d(rng);
    return t;
}

float bf16_round(float v) { return bf16_to_f32(f32_to_bf16(v)); }

}  // namespace

TEST(NnOps, AttentionMatchesNaiveSoftmaxWithKeyMask) {
    const int64_t B = 2, Lq = 70, Lk = 67, H = 3, D = 24;  // Lq crosses a query block
    Tensor q = random({B, Lq, H, D}, 1), k = random({B, Lk, H, D}, 2), v = random({B, Lk, H, D}, 3);
    Tensor mask = Tensor::zeros({B, Lk}, DType::U8);
    const int64_t valid[B] = {Lk, 40};
    for (int64_t b = 0; b < B; ++b)
        for (int64_t j = 0; j < valid[b]; ++j) mask.data<uint8_t>()[b * Lk + j] = 1;
    // Masked keys hold values that would dominate if they were used.
    for (int64_t j = valid[1]; j < Lk; ++j)
        for (int64_t c = 0; c < H * D; ++c) {
            k.data<float>()[(Lk + j) * H * D + c] = 50.f;
            v.data<float>()[(Lk + j) * H * D + c] = 1e6f;
        }
    Tensor o = cpu::scaled_dot_product_attention(q, k, v, mask);
    ASSERT_EQ(o.shape(), q.shape());
    double worst = 0;
    for (int64_t b = 0; b < B; ++b)
        for (int64_t h = 0; h < H; ++h)
            for (int64_t i = 0; i < Lq; ++i) {
                std::vector<double> s(size_t(valid[b]));
                double mx = -1e300, sum = 0;
                for (int64_t j = 0; j < valid[b]; ++j) {
                    double dot = 0;
                    for (int64_t d = 0; d < D; ++d)
                        dot += double(q.data<float>()[((b * Lq + i) * H + h) * D + d]) *
                               k.data<float>()[((b * Lk + j) * H + h) * D + d];
                    s[size_t(j)] = dot / std::sqrt(double(D));
                    mx = std::max(mx, s[size_t(j)]);
                }
                for (double& x : s) sum += (x = std::exp(x - mx));
                for (int64_t d = 0; d < D; ++d) {
                    double ref = 0;
                    for (int64_t j = 0; j < valid[b]; ++j)
                        ref += s[size_t(j)] / sum * v.data<float>()[((b * Lk + j) * H + h) * D + d];
                    worst = std::max(worst, std::abs(ref - o.data<float>()[((b * Lq + i) * H + h) * D + d]));
                }
            }
    EXPECT_LT(worst, 1e-5);

    // BF16 in and out: within bf16 rounding of the f32 result.
    Tensor o16 = cpu::scaled_dot_product_attention(q.to(DType::BF16), k.to(DType::BF16),
                                                  v.to(DType::BF16), mask)
                     .to(DType::F32);
    Tensor o32 = cpu::scaled_dot_product_attention(q.to(DType::BF16).to(DType::F32),
                                                  k.to(DType::BF16).to(DType::F32),
                                                  v.to(DType::BF16).to(DType::F32), mask);
    for (int64_t i = 0; i < o16.numel(); ++i)
        ASSERT_NEAR(o16.data<float>()[i], o32.data<float>()[i], 0.02f) << i;
}

TEST(NnOps, AttentionWithEveryKeyMaskedGivesZero) {
    Tensor q = random({1, 4, 2, 8}, 4), k = random({1, 5, 2, 8}, 5), v = random({1, 5, 2, 8}, 6);
    Tensor o = cpu::scaled_dot_product_attention(q, k, v, Tensor::zeros({1, 5}, DType::U8));
    for (int64_t i = 0; i < o.numel(); ++i) EXPECT_EQ(o.data<float>()[i], 0.f);
}

TEST(NnOps, RmsNormRoundsLikeDiffusers) {
    const int64_t D = 40;
    Tensor x = random({3, D}, 7).to(DType::BF16), w = random({D}, 8, 0.1f);
    for (int64_t i = 0; i < D; ++i) w.data<float>()[i] += 1.f;
    Tensor w16 = w.to(DType::BF16);
    cpu::RMSNorm norm("n", w16, 1e-5f);
    Tensor y = norm.forward(x);
    for (int64_t r = 0; r < 3; ++r) {
        double ss = 0;
        for (int64_t i = 0; i < D; ++i) ss += std::pow(double(x.item_f32(r * D + i)), 2);
        const float inv = 1.f / std::sqrt(float(ss) / float(D) + 1e-5f);
        for (int64_t i = 0; i < D; ++i) {
            // bf16(x · rsqrt) first, then bf16(· weight).
            float want = bf16_round(bf16_round(x.item_f32(r * D + i) * inv) * w16.item_f32(i));
            EXPECT_EQ(y.item_f32(r * D + i), want) << r << "," << i;
        }
    }
}

TEST(NnOps, RmsNormScaleAndGatedResidual) {
    const int64_t B = 2, L = 3, D = 16;
    Tensor x = random({B, L, D}, 9), y = random({B, L, D}, 10), w = random({D}, 11);
    Tensor scale = random({B, D}, 12), gate = random({B, D}, 13);
    cpu::RMSNorm norm("n", w, 1e-6f);
    Tensor n = norm.forward(y), s = norm.forward_scaled(y, scale);
    Tensor r = x.to(DType::F32);
    norm.add_to(r, y, gate);
    for (int64_t b = 0; b < B; ++b)
        for (int64_t l = 0; l < L; ++l)
            for (int64_t i = 0; i < D; ++i) {
                const int64_t k = (b * L + l) * D + i;
                EXPECT_EQ(s.data<float>()[k], n.data<float>()[k] * scale.data<float>()[b * D + i]);
                EXPECT_EQ(r.data<float>()[k],
                          x.data<float>()[k] + gate.data<float>()[b * D + i] * n.data<float>()[k]);
            }
}

TEST(NnOps, LayerNormHasZeroMeanUnitVariance) {
    Tensor x = random({5, 64}, 14, 3.f);
    for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] += 2.f;
    Tensor y = cpu::layer_norm(x, 1e-6f);
    for (int64_t r = 0; r < 5; ++r) {
        double m = 0, v = 0;
        for (int64_t i = 0; i < 64; ++i) m += y.data<float>()[r * 64 + i];
        for (int64_t i = 0; i < 64; ++i) v += std::pow(y.data<float>()[r * 64 + i] - m / 64, 2);
        EXPECT_NEAR(m / 64, 0.0, 1e-6);
        EXPECT_NEAR(v / 64, 1.0, 1e-5);
    }
}

TEST(NnOps, RopeRotatesPairsByPositionTimesFrequency) {
    cpu::RopeEmbedder rope(256.0, {4, 6, 6}, {64, 16, 16});
    const std::vector<int64_t> pos = {0, 0, 0, 33, 5, 15};
    Tensor f = rope.freqs(pos).view({1, 2, 8, 2});
    Tensor x = random({1, 2, 2, 16}, 15);
    Tensor y = x.to(DType::F32);
    cpu::apply_rope(y, f);
    const int64_t dims[3] = {4, 6, 6};
    for (int64_t t = 0; t < 2; ++t)
        for (int64_t h = 0; h < 2; ++h) {
            int64_t k = 0;
            for (int64_t a = 0; a < 3; ++a)
                for (int64_t j = 0; j < dims[a] / 2; ++j, ++k) {
                    const double angle = double(pos[size_t(t * 3 + a)]) /
                                         std::pow(256.0, double(2 * j) / double(dims[a]));
                    const float* in = x.data<float>() + (t * 2 + h) * 16 + 2 * k;
                    const float* out = y.data<float>() + (t * 2 + h) * 16 + 2 * k;
                    EXPECT_NEAR(out[0], in[0] * std::cos(angle) - in[1] * std::sin(angle), 1e-5);
                    EXPECT_NEAR(out[1], in[0] * std::sin(angle) + in[1] * std::cos(angle), 1e-5);
                }
        }
    EXPECT_THROW(rope.freqs({64, 0, 0}), Error);
}

TEST(NnOps, TimestepEmbeddingIsCosThenSin) {
    Tensor t = Tensor::empty({2}, DType::F32);
    t.data<float>()[0] = 0.f;
    t.data<float>()[1] = 500.f;
    Tensor e = cpu::timestep_embedding(t, 8);
    for (int64_t k = 0; k < 4; ++k) {
        EXPECT_EQ(e.data<float>()[k], 1.f);
        EXPECT_EQ(e.data<float>()[4 + k], 0.f);
        const double arg = 500.0 * std::exp(-std::log(10000.0) * double(k) / 4.0);
        EXPECT_NEAR(e.data<float>()[8 + k], std::cos(arg), 2e-4);
        EXPECT_NEAR(e.data<float>()[12 + k], std::sin(arg), 2e-4);
    }
}

TEST(NnOps, SiluMulRoundsTheGateBeforeTheProduct) {
    Tensor a = random({64}, 16).to(DType::BF16), b = random({64}, 17).to(DType::BF16);
    Tensor y = cpu::silu_mul(a, b);
    for (int64_t i = 0; i < 64; ++i) {
        const float av = a.item_f32(i);
        const float s = bf16_round(av / (1.f + std::exp(-av)));
        EXPECT_EQ(y.item_f32(i), bf16_round(s * b.item_f32(i)));
    }
}
