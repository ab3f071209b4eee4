// The int8 kernels: every SIMD path equals the scalar reference bit for bit.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "backend/cpu/int8_gemm.h"
#include "core/threads.h"
#include "backend/cpu/quantize.h"
#include "quant/int8.h"

using namespace qdit;
using cpu::Isa;

namespace {

const Isa kSimd[] = {Isa::Avx2, Isa::Avx512Vnni, Isa::Amx};
const Isa kAll[] = {Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni, Isa::Amx};

Tensor random_i8(int64_t rows, int64_t cols, std::mt19937& rng, int lo = -127, int hi = 127) {
    Tensor t = Tensor::empty({rows, cols}, DType::I8);
    std::uniform_int_distribution<int> d(lo, hi);
    for (int64_t i = 0; i < t.numel(); ++i) t.data<int8_t>()[i] = int8_t(d(rng));
    return t;
}

Tensor random_scale(int64_t n, std::mt19937& rng) {
    Tensor s = Tensor::empty({n}, DType::F32);
    std::uniform_real_distribution<float> d(1e-4f, 3e-2f);
    for (int64_t i = 0; i < n; ++i) s.data<float>()[i] = d(rng);
    return s;
}

// Plain triple loop over the unpacked weight: checks the packing as well.
std::vector<int32_t> naive_s32(const Tensor& a, const Tensor& w) {
    const int64_t m = a.size(0), n = w.size(0), k = w.size(1);
    std::vector<int32_t> c(size_t(m * n));
    for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j) {
            int32_t acc = 0;
            for (int64_t p = 0; p < k; ++p)
                acc += int32_t(a.data<int8_t>()[i * k + p]) * w.data<int8_t>()[j * k + p];
            c[size_t(i * n + j)] = acc;
        }
    return c;
}

}  // namespace

TEST(Int8Gemm, AllPathsEqualReferenceOnAccumulators) {
    std::mt19937 rng(1234);
    for (int64_t k : {1, 3, 4, 5, 63, 64, 257})
        for (int64_t n : {1, 15, 16, 17, 63, 64, 65, 200}) {
            Tensor w = random_i8(n, k, rng);
            auto packed = cpu::pack_int8_weight(w, random_scale(n, rng));
            for (int64_t m : {1, 5, 6, 7, 13, 64}) {
                // Activations may be -128 too; weights stay within ±127.
                Tensor a = random_i8(m, k, rng, -128, 127);
                const auto want = naive_s32(a, w);
                std::vector<int32_t> ref(want.size());
                cpu::int8_gemm_s32(a.data<int8_t>(), m, packed, ref.data(), Isa::Scalar);
                ASSERT_EQ(ref, want) << "scalar m=" << m << " n=" << n << " k=" << k;
                for (Isa isa : kSimd) {
                    if (!cpu::isa_supported(isa)) continue;
                    std::vector<int32_t> got(want.size(), -1);
                    cpu::int8_gemm_s32(a.data<int8_t>(), m, packed, got.data(), isa);
                    ASSERT_EQ(got, want) << cpu::isa_name(isa) << " m=" << m << " n=" << n << " k=" << k;
                }
            }
        }
}

TEST(Int8Gemm, ExtremeValuesAndThreadedShapes) {
    std::mt19937 rng(99);
    // All ±127 weights against -128/127 activations reach the largest |acc|; the
    // larger shape goes through the thread pool with rows and panels split.
    for (auto [m, n, k] : {std::tuple<int64_t, int64_t, int64_t>{7, 33, 1031}, {100, 300, 1000}, {13, 40, 2048}}) {
        Tensor w = random_i8(n, k, rng);
        Tensor a = random_i8(m, k, rng, -128, 127);
        if (m == 7)
            for (int64_t i = 0; i < w.numel(); ++i) {
                w.data<int8_t>()[i] = (i % 3) ? 127 : -127;
                if (i < a.numel()) a.data<int8_t>()[i] = (i % 3) ? 127 : -128;
            }
        auto packed = cpu::pack_int8_weight(w, random_scale(n, rng));
        const auto want = naive_s32(a, w);
        // Odd thread counts cut the (panel, row step) list inside panels.
        for (int threads : {1, 2, 3}) {
            set_num_threads(threads);
            for (Isa isa : kAll) {
                if (!cpu::isa_supported(isa)) continue;
                std::vector<int32_t> got(want.size(), -1);
                cpu::int8_gemm_s32(a.data<int8_t>(), m, packed, got.data(), isa);
                ASSERT_EQ(got, want) << cpu::isa_name(isa) << " m=" << m << " threads=" << threads;
            }
        }
        set_num_threads(0);
    }
}

TEST(Int8Gemm, ScratchReusedAcrossShapes) {
    // The activation copy is a per-thread buffer: a smaller GEMM after a larger
    // one (and a larger one after that) must not read stale rows.
    std::mt19937 rng(42);
    for (auto [m, k] : {std::pair<int64_t, int64_t>{50, 700}, {3, 33}, {64, 1001}}) {
        Tensor w = random_i8(70, k, rng);
        Tensor a = random_i8(m, k, rng, -128, 127);
        auto packed = cpu::pack_int8_weight(w, random_scale(70, rng));
        const auto want = naive_s32(a, w);
        for (Isa isa : kSimd) {
            if (!cpu::isa_supported(isa)) continue;
            std::vector<int32_t> got(want.size(), -1);
            cpu::int8_gemm_s32(a.data<int8_t>(), m, packed, got.data(), isa);
            ASSERT_EQ(got, want) << cpu::isa_name(isa) << " m=" << m << " k=" << k;
        }
    }
}

TEST(Int8Gemm, AmxTailsBlocksAndChunks) {
    // The AMX path works on 32 x 32 micro-tiles of 16 x 64 tiles, takes rows in
    // blocks of at most 384 and K in chunks of about 1 MiB of activations per
    // block (partial sums through memory). These shapes cover M, N and K that
    // are not multiples of the tiles, several row blocks, several K chunks, and
    // activations used in place (aligned, K % 64 == 0, M % 16 == 0) or copied.
    if (!cpu::isa_supported(Isa::Amx)) GTEST_SKIP() << "amx-int8 not supported here";
    std::mt19937 rng(31);
    struct Case { int64_t m, n, k; };
    for (Case c : {Case{1, 1, 1}, Case{15, 31, 63}, Case{17, 33, 65}, Case{32, 32, 64}, Case{48, 48, 192},
                   Case{33, 16, 1024}, Case{300, 45, 4000}, Case{400, 70, 5000}, Case{64, 40, 20480},
                   Case{769, 20, 128}}) {
        Tensor w = random_i8(c.n, c.k, rng);
        Tensor a = random_i8(c.m, c.k, rng, -128, 127);
        auto packed = cpu::pack_int8_weight(w, random_scale(c.n, rng));
        const auto want = naive_s32(a, w);
        for (int threads : {1, 2, 3}) {
            set_num_threads(threads);
            std::vector<int32_t> got(want.size(), -1);
            cpu::int8_gemm_s32(a.data<int8_t>(), c.m, packed, got.data(), Isa::Amx);
            ASSERT_EQ(got, want) << "m=" << c.m << " n=" << c.n << " k=" << c.k << " threads=" << threads;
        }
        set_num_threads(0);
    }
}

TEST(Int8Gemm, AmxReadsUnalignedActivationsThroughACopy) {
    // K % 64 == 0 and M % 16 == 0, but the rows start off a cache line: the
    // copy path, with every output the same as from the aligned rows.
    if (!cpu::isa_supported(Isa::Amx)) GTEST_SKIP() << "amx-int8 not supported here";
    std::mt19937 rng(12);
    const int64_t m = 48, n = 50, k = 256;
    Tensor w = random_i8(n, k, rng);
    Tensor a = random_i8(m, k, rng, -128, 127);
    auto packed = cpu::pack_int8_weight(w, random_scale(n, rng));
    std::vector<float> sx(size_t(m), 0.01f), bias(size_t(n), 0.25f);
    std::vector<int8_t> shifted(size_t(m * k + 1));
    std::memcpy(shifted.data() + 1, a.raw(), size_t(m * k));
    std::vector<uint16_t> ref(size_t(m * n)), got(size_t(m * n));
    cpu::int8_gemm(a.data<int8_t>(), sx.data(), m, packed, bias.data(), ref.data(), DType::BF16, n, Isa::Scalar);
    cpu::int8_gemm(shifted.data() + 1, sx.data(), m, packed, bias.data(), got.data(), DType::BF16, n, Isa::Amx);
    EXPECT_EQ(got, ref);
    std::fill(got.begin(), got.end(), uint16_t(0));
    cpu::int8_gemm(a.data<int8_t>(), sx.data(), m, packed, bias.data(), got.data(), DType::BF16, n, Isa::Amx);
    EXPECT_EQ(got, ref);
}

TEST(Int8Gemm, PathNames) {
    for (Isa isa : kAll) EXPECT_EQ(cpu::isa_from_name(cpu::isa_name(isa)), isa);
    try {
        cpu::isa_from_name("avx512");
        FAIL() << "expected ConfigError";
    } catch (const ConfigError& e) {
        EXPECT_NE(std::string(e.what()).find("avx512-vnni"), std::string::npos) << e.what();
    }
    EXPECT_TRUE(cpu::isa_supported(cpu::best_isa()));
}

TEST(Int8Gemm, SkipsUnsupportedPaths) {
    for (Isa isa : kSimd)
        if (!cpu::isa_supported(isa)) GTEST_SKIP() << cpu::isa_name(isa) << " not supported here";
    SUCCEED() << "best path: " << cpu::isa_name(cpu::best_isa());
}

TEST(Int8Gemm, ZeroRowsIsANoOp) {
    std::mt19937 rng(5);
    auto packed = cpu::pack_int8_weight(random_i8(16, 8, rng), random_scale(16, rng));
    for (Isa isa : kAll)
        if (cpu::isa_supported(isa)) cpu::int8_gemm(nullptr, nullptr, 0, packed, nullptr, nullptr, DType::F32, 16, isa);
}

TEST(Int8Gemm, FusedEpilogueMatchesDoubleAndIsIdenticalOnAllPaths) {
    std::mt19937 rng(77);
    for (auto [m, n, k] : {std::tuple<int64_t, int64_t, int64_t>{13, 65, 257}, {6, 200, 64}, {1, 17, 5}}) {
        Tensor w = random_i8(n, k, rng);
        auto packed = cpu::pack_int8_weight(w, random_scale(n, rng));
        Tensor a = random_i8(m, k, rng);
        std::vector<float> sx(static_cast<size_t>(m)), bias(static_cast<size_t>(n));
        std::uniform_real_distribution<float> d(-1.f, 1.f);
        for (auto& v : sx) v = std::fabs(d(rng)) * 0.05f + 1e-3f;
        for (auto& v : bias) v = d(rng);
        const auto acc = naive_s32(a, w);
        const float* sw = packed.scale.data<float>();
        std::vector<float> ref_f32(size_t(m * n));
        std::vector<uint16_t> ref_bf16(size_t(m * n));
        cpu::int8_gemm(a.data<int8_t>(), sx.data(), m, packed, bias.data(), ref_f32.data(), DType::F32, n, Isa::Scalar);
        cpu::int8_gemm(a.data<int8_t>(), sx.data(), m, packed, bias.data(), ref_bf16.data(), DType::BF16, n, Isa::Scalar);
        for (int64_t i = 0; i < m; ++i)
            for (int64_t j = 0; j < n; ++j) {
                const double t = double(acc[size_t(i * n + j)]) * sx[size_t(i)] * sw[j];
                const double exact = t + bias[size_t(j)];
                const float got = ref_f32[size_t(i * n + j)];
                // Two f32 roundings: float(acc) * s_x, then the fma.
                EXPECT_LE(std::fabs(got - exact), (std::fabs(t) + std::fabs(exact)) * 0x1p-24 + 1e-30)
                    << i << "," << j;
                EXPECT_EQ(ref_bf16[size_t(i * n + j)], f32_to_bf16(got));
            }
        // Without bias, and with an output row stride larger than N.
        std::vector<float> nobias(size_t(m * (n + 3)), 7.f);
        cpu::int8_gemm(a.data<int8_t>(), sx.data(), m, packed, nullptr, nobias.data(), DType::F32, n + 3, Isa::Scalar);
        for (int64_t i = 0; i < m; ++i) {
            EXPECT_EQ(nobias[size_t(i * (n + 3) + n)], 7.f);
            for (int64_t j = 0; j < n; ++j)
                EXPECT_EQ(nobias[size_t(i * (n + 3) + j)], float(acc[size_t(i * n + j)]) * sx[size_t(i)] * sw[j]);
        }
        for (Isa isa : kSimd) {
            if (!cpu::isa_supported(isa)) continue;
            std::vector<float> y(size_t(m * n));
            std::vector<uint16_t> yb(size_t(m * n));
            std::vector<float> yn(size_t(m * (n + 3)), 7.f);
            cpu::int8_gemm(a.data<int8_t>(), sx.data(), m, packed, bias.data(), y.data(), DType::F32, n, isa);
            cpu::int8_gemm(a.data<int8_t>(), sx.data(), m, packed, bias.data(), yb.data(), DType::BF16, n, isa);
            cpu::int8_gemm(a.data<int8_t>(), sx.data(), m, packed, nullptr, yn.data(), DType::F32, n + 3, isa);
            EXPECT_EQ(0, std::memcmp(y.data(), ref_f32.data(), y.size() * 4)) << cpu::isa_name(isa);
            EXPECT_EQ(yb, ref_bf16) << cpu::isa_name(isa);
            EXPECT_EQ(0, std::memcmp(yn.data(), nobias.data(), yn.size() * 4)) << cpu::isa_name(isa);
        }
    }
}

namespace {

// Rows of F32 values with an all-zero row, exact ties, an outlier and tiny values.
std::vector<float> tricky_rows(int64_t m, int64_t k, std::mt19937& rng) {
    std::vector<float> x(size_t(m * k));
    std::normal_distribution<float> d(0.f, 1.f);
    for (auto& v : x) v = d(rng);
    for (int64_t j = 0; j < k; ++j) x[size_t(j)] = 0.f;  // row 0: all zero
    if (m > 1) {
        // row 1: absmax 127 gives s = 1 exactly, so j + 0.5 are exact ties.
        for (int64_t j = 0; j < k; ++j) x[size_t(k + j)] = float(j % 9) - 4.f + 0.5f;
        x[size_t(k + k / 2)] = (k % 2) ? -127.f : 127.f;
    }
    if (m > 2) x[size_t(2 * k + k - 1)] = 500.f;  // outlier at the tail
    if (m > 3)
        for (int64_t j = 0; j < k; ++j) x[size_t(3 * k + j)] *= 1e-30f;
    return x;
}

}  // namespace

TEST(Int8Quant, ReferenceRoundsHalfToEvenAndHandlesZeroRows) {
    const float x[] = {127.f, 0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 126.5f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    int8_t q[16];
    float s[2];
    quantize_rows_int8_ref(x, DType::F32, 2, 8, 8, q, s);
    const int8_t want[] = {127, 0, 2, 2, 0, -2, -2, 126};
    EXPECT_EQ(s[0], 1.f);
    EXPECT_EQ(0, std::memcmp(q, want, 8));
    EXPECT_EQ(s[1], 1.f);
    for (int j = 8; j < 16; ++j) EXPECT_EQ(q[j], 0);
}

TEST(Int8Quant, AllPathsBitExactToReference) {
    std::mt19937 rng(2024);
    for (int64_t k : {1, 3, 15, 16, 17, 33, 100, 1000})
        for (int64_t m : {1, 5, 300}) {
            if (m == 300 && k < 100) continue;
            const std::vector<float> xf = tricky_rows(m, k, rng);
            std::vector<uint16_t> xb(xf.size());
            for (size_t i = 0; i < xf.size(); ++i) xb[i] = f32_to_bf16(xf[i]);
            for (DType dt : {DType::F32, DType::BF16}) {
                const void* x = dt == DType::F32 ? static_cast<const void*>(xf.data()) : xb.data();
                std::vector<int8_t> q_ref(xf.size());
                std::vector<float> s_ref(static_cast<size_t>(m));
                quantize_rows_int8_ref(x, dt, m, k, k, q_ref.data(), s_ref.data());
                EXPECT_EQ(s_ref[0], 1.f);
                for (Isa isa : kAll) {
                    if (!cpu::isa_supported(isa)) continue;
                    std::vector<int8_t> q(xf.size(), 99);
                    std::vector<float> s(size_t(m), -1.f);
                    cpu::quantize_rows_int8(x, dt, m, k, k, q.data(), s.data(), isa);
                    ASSERT_EQ(q, q_ref) << cpu::isa_name(isa) << " " << dtype_name(dt) << " m=" << m << " k=" << k;
                    ASSERT_EQ(0, std::memcmp(s.data(), s_ref.data(), s.size() * 4)) << cpu::isa_name(isa);
                }
            }
        }
}

TEST(Int8Quant, NearTiesMatchReference) {
    // Values whose x / s lies within a few ulp of a half-integer, where a
    // multiplication by 1 / s may round differently from the true division.
    std::mt19937 rng(21);
    const int64_t m = 64, k = 257;
    std::vector<float> x(size_t(m * k));
    std::uniform_int_distribution<int> tie(-127, 126), ulps(-4, 4);
    std::uniform_real_distribution<float> scale(1e-3f, 10.f);
    for (int64_t i = 0; i < m; ++i) {
        const float s0 = scale(rng);
        float* row = x.data() + i * k;
        row[0] = 127.f * s0;  // the row's absmax, so s is close to s0
        for (int64_t j = 1; j < k; ++j) {
            float v = (float(tie(rng)) + 0.5f) * s0;
            for (int u = ulps(rng); u != 0; u += u > 0 ? -1 : 1)
                v = std::nextafter(v, u > 0 ? 1e30f : -1e30f);
            row[j] = v;
        }
    }
    std::vector<int8_t> q_ref(x.size());
    std::vector<float> s_ref(static_cast<size_t>(m));
    quantize_rows_int8_ref(x.data(), DType::F32, m, k, k, q_ref.data(), s_ref.data());
    for (Isa isa : kSimd) {
        if (!cpu::isa_supported(isa)) continue;
        std::vector<int8_t> q(x.size());
        std::vector<float> sc(static_cast<size_t>(m));
        cpu::quantize_rows_int8(x.data(), DType::F32, m, k, k, q.data(), sc.data(), isa);
        EXPECT_EQ(q, q_ref) << cpu::isa_name(isa);
        EXPECT_EQ(0, std::memcmp(sc.data(), s_ref.data(), sc.size() * 4)) << cpu::isa_name(isa);
    }
}

TEST(Int8Quant, StridedRows) {
    std::mt19937 rng(8);
    const int64_t m = 9, k = 37, ld = 50;
    std::vector<float> x(size_t(m * ld));
    std::normal_distribution<float> d(0.f, 2.f);
    for (auto& v : x) v = d(rng);
    std::vector<int8_t> q_ref(size_t(m * k));
    std::vector<float> s_ref(static_cast<size_t>(m));
    quantize_rows_int8_ref(x.data(), DType::F32, m, k, ld, q_ref.data(), s_ref.data());
    for (Isa isa : kSimd) {
        if (!cpu::isa_supported(isa)) continue;
        std::vector<int8_t> q(size_t(m * k));
        std::vector<float> s(static_cast<size_t>(m));
        cpu::quantize_rows_int8(x.data(), DType::F32, m, k, ld, q.data(), s.data(), isa);
        EXPECT_EQ(q, q_ref);
        EXPECT_EQ(0, std::memcmp(s.data(), s_ref.data(), s.size() * 4));
    }
}

TEST(Int8Quant, WeightRules) {
    // Row 0: absmax 254 -> s = 2; 1/2, 5/2 tie to even; 3/2 ties up to 2. Row 1: zeros.
    const float w[] = {254.f, 1.f, 3.f, 5.f, -254.f, -7.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    const int8_t want[] = {127, 0, 2, 2, -127, -4};
    for (DType dt : {DType::F32, DType::BF16, DType::F16, DType::F64}) {
        Tensor src = Tensor::empty({2, 6}, DType::F32);
        std::memcpy(src.raw(), w, sizeof w);
        Tensor q, s;
        cpu::quantize_weight_int8(src.to(dt), &q, &s);
        ASSERT_EQ(q.dtype(), DType::I8);
        ASSERT_EQ(s.dtype(), DType::F32);
        EXPECT_EQ(s.data<float>()[0], 2.f) << dtype_name(dt);
        EXPECT_EQ(0, std::memcmp(q.data<int8_t>(), want, 6)) << dtype_name(dt);
        EXPECT_EQ(s.data<float>()[1], 1.f);
        for (int j = 6; j < 12; ++j) EXPECT_EQ(q.data<int8_t>()[j], 0);
    }
    // A large weight equals the row reference, values always within ±127.
    std::mt19937 rng(3);
    Tensor big = Tensor::empty({123, 301}, DType::F32);
    std::normal_distribution<float> d(0.f, 0.02f);
    for (int64_t i = 0; i < big.numel(); ++i) big.data<float>()[i] = d(rng);
    Tensor q, s;
    cpu::quantize_weight_int8(big, &q, &s);
    std::vector<int8_t> q_ref(size_t(big.numel()));
    std::vector<float> s_ref(123);
    quantize_rows_int8_ref(big.raw(), DType::F32, 123, 301, 301, q_ref.data(), s_ref.data());
    EXPECT_EQ(0, std::memcmp(q.raw(), q_ref.data(), q_ref.size()));
    EXPECT_EQ(0, std::memcmp(s.raw(), s_ref.data(), s_ref.size() * 4));
}
