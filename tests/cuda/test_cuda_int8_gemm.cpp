// CUDA int8 W8A8 GEMM (backend/cuda/int8_gemm.h), the cuBLASLt bf16 GEMM and the vectorized
// per-token quantization. Runs only where a CUDA device is present (the argument checks run anywhere).
//
// int8 GEMM accuracy: the reference is the exact int32 product (computed on the CPU), then
// v = acc * s_x * s_w + bias in double. The kernel computes fmaf(float(acc) * s_x, s_w, bias) in f32
// and rounds to bf16, so the bound asserted per element is
//     |y - v| <= ulp_bf16(max(|v|, |y|)) / 2  +  2^-20 * (|acc * s_x * s_w| + |bias|)
// (half a bf16 ulp from the final rounding, plus three f32 roundings before it). The tests also
// assert that y equals the CPU kernel's formula bf16(fmaf(float(acc) * s_x, s_w, bias)) bit for bit.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "backend/cuda/lt_gemm.h"
#include "backend/cuda/int8_gemm.h"
#include "backend/cuda/quantize.h"
#include "core/dtype.h"
#include "core/error.h"
#include "quant/int8.h"

using namespace qdit;

namespace {

struct DeviceBuffer {
    void* p = nullptr;
    size_t bytes = 0;
    explicit DeviceBuffer(size_t n) : bytes(n) {
        if (cudaMalloc(&p, n) != cudaSuccess) throw Error("cudaMalloc failed in test");
    }
    ~DeviceBuffer() { cudaFree(p); }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    template <class T>
    T* as() const {
        return static_cast<T*>(p);
    }
    template <class T>
    void upload(const std::vector<T>& v) {
        ASSERT_EQ(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
    }
    template <class T>
    void download(std::vector<T>& v) const {
        ASSERT_EQ(cudaMemcpy(v.data(), p, v.size() * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    }
};

bool have_device() { return cuda::device_count() > 0; }

double ulp_bf16(double v) {
    v = std::fabs(v);
    if (v < 1e-30) return std::ldexp(1.0, -133);  // smallest bf16 subnormal step
    int e = 0;
    std::frexp(v, &e);                 // v = f * 2^e, f in [0.5, 1)
    return std::ldexp(1.0, e - 1 - 7);  // 8 significant bits
}

struct GemmCase {
    int64_t m, n, k;
    int64_t lda_pad = 0, ldw_pad = 0, ldy_pad = 0;
    bool bias = true;
    int check_rows = 0;  // 0: all rows; else this many sampled rows (plus the first and last)
};

void run_int8_case(const GemmCase& c, cuda::Int8GemmKernel kernel, uint32_t seed) {
    SCOPED_TRACE(::testing::Message() << cuda::int8_gemm_kernel_name(kernel) << " M=" << c.m << " N=" << c.n
                                      << " K=" << c.k << " pads " << c.lda_pad << "/" << c.ldw_pad << "/" << c.ldy_pad
                                      << " bias=" << c.bias);
    const int64_t lda = c.k + c.lda_pad, ldw = c.k + c.ldw_pad, ldy = c.n + c.ldy_pad;
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int> qd(-127, 127);
    std::uniform_real_distribution<float> sxd(1e-3f, 5e-2f), swd(1e-4f, 1e-2f);
    std::normal_distribution<float> bd(0.f, 2.f);
    std::vector<int8_t> a(size_t(c.m * lda)), w(size_t(c.n * ldw));
    for (auto& v : a) v = int8_t(qd(rng));
    for (auto& v : w) v = int8_t(qd(rng));
    // a few rows of extreme values: all +127 / all -127 (largest |acc|)
    for (int64_t j = 0; j < c.k; ++j) a[size_t(j)] = 127;
    for (int64_t j = 0; j < c.k; ++j) w[size_t(j)] = (j & 1) ? -127 : 127;
    std::vector<float> sx(size_t(c.m)), sw(size_t(c.n)), bias(size_t(c.n));
    for (auto& v : sx) v = sxd(rng);
    for (auto& v : sw) v = swd(rng);
    for (auto& v : bias) v = bd(rng);

    DeviceBuffer da(a.size()), dw(w.size()), dsx(sx.size() * 4), dsw(sw.size() * 4), db(bias.size() * 4),
        dy(size_t(c.m * ldy) * 2);
    da.upload(a);
    dw.upload(w);
    dsx.upload(sx);
    dsw.upload(sw);
    db.upload(bias);
    ASSERT_EQ(cudaMemset(dy.p, 0xFF, dy.bytes), cudaSuccess);  // poison: bf16 0xFFFF is a NaN
    cuda::int8_gemm_bf16(da.as<int8_t>(), lda, dsx.as<float>(), dw.as<int8_t>(), ldw, dsw.as<float>(),
                         c.bias ? db.as<float>() : nullptr, dy.p, ldy, c.m, c.n, c.k, nullptr, kernel);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    std::vector<uint16_t> y(size_t(c.m * ldy));
    dy.download(y);

    std::vector<int64_t> rows;
    if (c.check_rows == 0 || c.check_rows >= c.m) {
        for (int64_t i = 0; i < c.m; ++i) rows.push_back(i);
    } else {
        rows = {0, c.m - 1};
        std::uniform_int_distribution<int64_t> rd(0, c.m - 1);
        for (int i = 0; i < c.check_rows; ++i) rows.push_back(rd(rng));
    }
    int64_t bad = 0, not_bitexact = 0, pad_written = 0;
    double worst = 0;
    for (int64_t i : rows) {
        for (int64_t n = 0; n < c.n; ++n) {
            int32_t acc = 0;
            const int8_t* ar = &a[size_t(i * lda)];
            const int8_t* wr = &w[size_t(n * ldw)];
            for (int64_t j = 0; j < c.k; ++j) acc += int32_t(ar[j]) * int32_t(wr[j]);
            const double b = c.bias ? bias[size_t(n)] : 0.0;
            const double p = double(acc) * double(sx[size_t(i)]) * double(sw[size_t(n)]);
            const double v = p + b;
            const uint16_t got_bits = y[size_t(i * ldy + n)];
            const double got = bf16_to_f32(got_bits);
            const double tol = 0.5 * ulp_bf16(std::max(std::fabs(v), std::fabs(got))) +
                               std::ldexp(std::fabs(p) + std::fabs(b), -20);
            const double err = std::fabs(got - v);
            if (!(err <= tol)) {
                if (bad < 5)
                    ADD_FAILURE() << "y[" << i << "," << n << "] = " << got << ", exact " << v << ", |err| " << err
                                  << " > " << tol;
                ++bad;
            }
            worst = std::max(worst, err / tol);
            const float cpu = std::fma(float(acc) * sx[size_t(i)], sw[size_t(n)], c.bias ? bias[size_t(n)] : 0.f);
            if (f32_to_bf16(cpu) != got_bits) ++not_bitexact;
        }
        for (int64_t n = c.n; n < ldy; ++n)
            if (y[size_t(i * ldy + n)] != 0xFFFF) ++pad_written;
    }
    EXPECT_EQ(bad, 0) << "elements outside the bound (worst err/tol " << worst << ")";
    EXPECT_EQ(not_bitexact, 0) << "elements that differ from bf16(fmaf(float(acc)*s_x, s_w, bias))";
    EXPECT_EQ(pad_written, 0) << "elements written in the row padding (ldy > N)";
}

std::vector<cuda::Int8GemmKernel> kernels_here() {
    std::vector<cuda::Int8GemmKernel> out;
    if (cuda::int8_gemm_kernel_available(cuda::Int8GemmKernel::Auto)) out.push_back(cuda::Int8GemmKernel::Auto);
    for (auto k : cuda::int8_gemm_kernels())
        if (cuda::int8_gemm_kernel_available(k)) out.push_back(k);
    return out;
}

}  // namespace

TEST(CudaInt8Gemm, MatchesExactProductAndCpuEpilogue) {
    if (!have_device()) GTEST_SKIP() << "no CUDA device";
    const auto ks = kernels_here();
    ASSERT_FALSE(ks.empty()) << "no int8 GEMM kernel for this device in this build";
    const std::vector<GemmCase> cases = {
        {1, 3840, 3840},                       // one token
        {77, 1032, 3072},                      // M and N not multiples of any tile
        {333, 520, 1040, 16, 32, 8, true},     // K not a multiple of 128; padded row strides
        {130, 264, 160, 0, 0, 0, false},       // no bias
        {4608, 3840, 3840, 0, 0, 0, true, 24}, // Z-Image size, sampled rows
    };
    uint32_t seed = 1;
    for (auto kernel : ks) {
        std::printf("[ int8 GEMM kernel ] %s\n", cuda::int8_gemm_kernel_name(kernel));
        for (const auto& c : cases) run_int8_case(c, kernel, seed++);
    }
}

TEST(CudaInt8Gemm, LargeKAndTallM) {
    if (!have_device()) GTEST_SKIP() << "no CUDA device";
    run_int8_case({4224 + 33, 3072, 12288, 0, 0, 0, true, 12}, cuda::Int8GemmKernel::Auto, 99);
}

TEST(CudaInt8Gemm, RejectsUnalignedShapesWithAClearError) {
    // The checks run before any device work, so these need no GPU.
    alignas(16) static int8_t a[64], w[64];
    alignas(16) static float s[64];
    alignas(16) static uint16_t y[64];
    auto call = [&](const int8_t* pa, int64_t lda, int64_t ldy, int64_t m, int64_t n, int64_t k) {
        cuda::int8_gemm_bf16(pa, lda, s, w, k, s, nullptr, y, ldy, m, n, k, nullptr);
    };
    EXPECT_THROW(call(a, 24, 8, 2, 8, 24), ShapeError);   // K % 16 != 0
    EXPECT_THROW(call(a, 16, 12, 2, 12, 16), ShapeError); // N % 8 != 0
    EXPECT_THROW(call(a, 24, 8, 2, 8, 16), ShapeError);   // lda % 16 != 0
    EXPECT_THROW(call(a + 1, 16, 8, 2, 8, 16), ShapeError);  // misaligned pointer
    EXPECT_THROW(call(a, 16, 8, 2, 0, 16), ShapeError);   // empty N
    try {
        call(a, 24, 8, 2, 8, 24);
    } catch (const ShapeError& e) {
        EXPECT_NE(std::string(e.what()).find("multiple of 16"), std::string::npos) << e.what();
    }
}

TEST(CudaBf16Gemm, CublasLtMatchesCpuReference) {
    if (!have_device()) GTEST_SKIP() << "no CUDA device";
    struct C {
        int64_t m, n, k;
        bool bias;
    };
    uint32_t seed = 7;
    for (const C c : {C{77, 520, 1040, true}, C{256, 3840, 3840, false}, C{1, 3072, 3072, true}}) {
        SCOPED_TRACE(::testing::Message() << "M=" << c.m << " N=" << c.n << " K=" << c.k << " bias=" << c.bias);
        std::mt19937 rng(seed++);
        std::normal_distribution<float> d(0.f, 1.f);
        std::vector<uint16_t> x(size_t(c.m * c.k)), w(size_t(c.n * c.k)), b(size_t(c.n));
        for (auto& v : x) v = f32_to_bf16(d(rng));
        for (auto& v : w) v = f32_to_bf16(0.05f * d(rng));
        for (auto& v : b) v = f32_to_bf16(d(rng));
        DeviceBuffer dx(x.size() * 2), dw(w.size() * 2), db(b.size() * 2), dy(size_t(c.m * c.n) * 2);
        dx.upload(x);
        dw.upload(w);
        db.upload(b);
        ASSERT_EQ(cudaMemset(dy.p, 0xFF, dy.bytes), cudaSuccess);
        cuda::bf16_gemm(dx.p, c.k, dw.p, c.k, c.bias ? db.p : nullptr, dy.p, c.n, c.m, c.n, c.k, nullptr);
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        std::vector<uint16_t> y(size_t(c.m * c.n));
        dy.download(y);
        double num = 0, den = 0;
        int64_t bad = 0;
        for (int64_t i = 0; i < c.m; ++i)
            for (int64_t n = 0; n < c.n; ++n) {
                double ref = c.bias ? bf16_to_f32(b[size_t(n)]) : 0.0, mag = std::fabs(ref);
                for (int64_t j = 0; j < c.k; ++j) {
                    const double t = double(bf16_to_f32(x[size_t(i * c.k + j)])) * bf16_to_f32(w[size_t(n * c.k + j)]);
                    ref += t;
                    mag += std::fabs(t);
                }
                const double got = bf16_to_f32(y[size_t(i * c.n + n)]);
                num += (got - ref) * (got - ref);
                den += ref * ref;
                // bf16 output rounding + f32 accumulation (any order)
                const double tol = ulp_bf16(std::max(std::fabs(ref), std::fabs(got))) + 1e-5 * mag;
                if (!(std::fabs(got - ref) <= tol)) ++bad;
            }
        EXPECT_EQ(bad, 0);
        EXPECT_LT(std::sqrt(num / den), 4e-3);
    }
}

TEST(CudaQuantize, VectorizedPathMatchesTheCpuReferenceBitForBit) {
    if (!have_device()) GTEST_SKIP() << "no CUDA device";
    uint32_t seed = 11;
    for (int64_t k : {64, 3072, 3080, 3840, 10240, 12288, 40960}) {
        SCOPED_TRACE(::testing::Message() << "K=" << k);
        const int64_t m = 37, ldx = k + 8;
        std::mt19937 rng(seed++);
        std::normal_distribution<float> dist;
        std::vector<uint16_t> x(size_t(m * ldx));
        for (auto& v : x) v = f32_to_bf16(dist(rng));
        for (int64_t j = 0; j < k; ++j) x[size_t(5 * ldx + j)] = 0;  // all-zero row
        x[size_t(7 * ldx + 11)] = f32_to_bf16(300.f);                // outlier
        // exact ties: amax 127 -> s = 1, so 2.5 and -3.5 must round to even (2, -4)
        for (int64_t j = 0; j < k; ++j) x[size_t(9 * ldx + j)] = f32_to_bf16((j % 3 == 0) ? 2.5f : -3.5f);
        x[size_t(9 * ldx + k - 1)] = f32_to_bf16(127.f);
        std::vector<int8_t> q_ref(size_t(m * k)), q(size_t(m * k));
        std::vector<float> s_ref(static_cast<size_t>(m)), s(static_cast<size_t>(m));
        quantize_rows_int8_ref(x.data(), DType::BF16, m, k, ldx, q_ref.data(), s_ref.data());
        DeviceBuffer dx(x.size() * 2), dq(q.size()), ds(s.size() * 4);
        dx.upload(x);
        ASSERT_EQ(cudaMemset(dq.p, 0x55, dq.bytes), cudaSuccess);
        ASSERT_EQ(cudaMemset(ds.p, 0xFF, ds.bytes), cudaSuccess);
        ASSERT_EQ(cuda::quantize_rows_int8_bf16(dx.p, m, k, ldx, dq.as<int8_t>(), ds.as<float>(), nullptr),
                  cudaSuccess);
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        dq.download(q);
        ds.download(s);
        EXPECT_EQ(q, q_ref);
        EXPECT_EQ(s, s_ref);
        EXPECT_EQ(q[size_t(9 * k)], 2);
        EXPECT_EQ(q[size_t(9 * k + 1)], -4);
    }
}

TEST(CudaQuantize, AllVariantsMatchTheCpuReferenceBitForBitOnManyRows) {
    if (!have_device()) GTEST_SKIP() << "no CUDA device";
    uint32_t seed = 21;
    for (int nv : {-1, 0, 2, 4, 8})
        for (int64_t k : {3072, 3840, 12288}) {
            const int64_t m = 3001, ldx = k;
            SCOPED_TRACE(::testing::Message() << "nv=" << nv << " K=" << k);
            std::mt19937 rng(seed++);
            std::normal_distribution<float> dist;
            std::uniform_int_distribution<int> pick(0, 7);
            std::vector<uint16_t> x(size_t(m * ldx));
            for (auto& v : x) v = f32_to_bf16(dist(rng));
            // rows of small integers and halves: many exact ties after scaling (amax 127 -> s = 1)
            for (int64_t r = 100; r < 120; ++r) {
                for (int64_t j = 0; j < k; ++j) x[size_t(r * ldx + j)] = f32_to_bf16(0.5f * float(pick(rng) * 9 - 31));
                x[size_t(r * ldx)] = f32_to_bf16(127.f);
            }
            for (int64_t j = 0; j < k; ++j) x[size_t(2999 * ldx + j)] = 0;  // all-zero row near the end
            x[size_t(1234 * ldx + 7)] = f32_to_bf16(-1000.f);              // outlier
            std::vector<int8_t> q_ref(size_t(m * k)), q(size_t(m * k));
            std::vector<float> s_ref(static_cast<size_t>(m)), s(static_cast<size_t>(m));
            quantize_rows_int8_ref(x.data(), DType::BF16, m, k, ldx, q_ref.data(), s_ref.data());
            DeviceBuffer dx(x.size() * 2), dq(q.size()), ds(s.size() * 4);
            dx.upload(x);
            ASSERT_EQ(cudaMemset(dq.p, 0x55, dq.bytes), cudaSuccess);
            ASSERT_EQ(cudaMemset(ds.p, 0xFF, ds.bytes), cudaSuccess);
            const cudaError_t e =
                nv < 0 ? cuda::quantize_rows_int8_bf16(dx.p, m, k, ldx, dq.as<int8_t>(), ds.as<float>(), nullptr)
                       : cuda::detail::quantize_rows_int8_bf16_nv(dx.p, m, k, ldx, dq.as<int8_t>(), ds.as<float>(),
                                                                  nullptr, nv);
            ASSERT_EQ(e, cudaSuccess);
            ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
            dq.download(q);
            ds.download(s);
            EXPECT_TRUE(q == q_ref);
            EXPECT_TRUE(s == s_ref);
        }
}
