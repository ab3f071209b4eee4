// The Z-Image forward on CUDA (models/zimage/transformer_cuda.h) against diffusers' outputs on the
// batch-1 fixtures, with the bounds the CPU forward's test uses (tests/test_zimage_forward.cpp).
//   bf16: distance to diffusers' bf16 output <= 0.8 × that output's own distance from fp32, and
//         SQNR vs fp32 no worse than the bf16 reference's by more than 0.5 dB. The GPU attention
//         (cuDNN) rounds at different points than torch's CPU kernel, as ours on the CPU does.
//   int8 (default plan, bf16 activations): the reference pair is the W8A8 simulation (f32
//         activations) and the bf16 model; their errors from fp32 are independent, so the
//         expected SQNR vs fp32 is 10·log10(|ref|² / (e_w8a8² + e_bf16²)). We require ours to be
//         within 1 dB of it (measured +0.7 and +0.04 dB above it). The distance to the W8A8
//         reference is printed, not bounded: bf16 activations move many activations across int8
//         rounding boundaries, so it sits at the independent-noise level sqrt(e_w8a8² + e_bf16²)
//         (measured 0.0119 / 0.0134 against 0.0124 / 0.0136), too close for a robust bound.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>

#include "backend/cuda/quantize.h"
#include "io/safetensors.h"
#include "models/zimage/transformer_cuda.h"
#include "quant/model.h"

// qdit_cuda_tests (the GPU machine's binary) has no QDIT_TEST_DATA: it runs from the repository root.
#ifndef QDIT_TEST_DATA
#define QDIT_TEST_DATA "tests/data"
#endif

namespace fs = std::filesystem;
using namespace qdit;

namespace {

fs::path dir(const std::string& name) { return fs::path(QDIT_TEST_DATA) / "zimage" / name; }

struct Err {
    double e2 = 0, r2 = 0;
    double rel() const { return std::sqrt(e2 / r2); }
    double sqnr() const { return 10 * std::log10(r2 / e2); }
};

Err compare(const Tensor& a, const Tensor& r) {
    Tensor x = a.to(DType::F32), y = r.to(DType::F32);
    EXPECT_EQ(x.shape(), y.shape());
    Err e;
    for (int64_t i = 0; i < y.numel(); ++i) {
        const double d = double(x.data<float>()[i]) - y.data<float>()[i];
        EXPECT_TRUE(std::isfinite(x.data<float>()[i])) << i;
        e.e2 += d * d;
        e.r2 += double(y.data<float>()[i]) * y.data<float>()[i];
    }
    return e;
}

struct Fixture {
    Tensor x, cap, t, fp32, bf16, w8a8;
};

Fixture load(const std::string& name) {
    SafetensorsFile in((dir(name) / "inputs.safetensors").string()), ref((dir(name) / "reference.safetensors").string());
    return {in.get("x.0"), in.get("cap_feats.0"), in.get("t"), ref.get("fp32.0"), ref.get("bf16.0"), ref.get("w8a8.0")};
}

Tensor run(const std::string& path, const QuantConfig& qc, const Fixture& f) {
    zimage::ZImageTransformerCuda model(prepare_model(path, qc));
    return model.forward({f.x}, f.t, {f.cap})[0];
}

}  // namespace

TEST(CudaZImageForward, Bf16MatchesDiffusers) {
    if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
    for (const char* name : {"h3_b1", "h2_l3_sharded"}) {
        SCOPED_TRACE(name);
        Fixture f = load(name);
        fs::path d16 = dir(name) / "transformer-bf16";
        Tensor out = run(fs::exists(d16) ? d16.string() : (dir(name) / "transformer").string(), QuantConfig{}, f);
        Err vs16 = compare(out, f.bf16), vs32 = compare(out, f.fp32), ref = compare(f.bf16, f.fp32);
        std::printf("[ %-13s ] cuda bf16: rel L2 vs bf16 ref %.4f (bound %.4f); vs fp32 %.2f dB (ref %.2f dB)\n", name,
                    vs16.rel(), 0.8 * ref.rel(), vs32.sqnr(), ref.sqnr());
        EXPECT_LE(vs16.rel(), 0.8 * ref.rel());
        EXPECT_GE(vs32.sqnr(), ref.sqnr() - 0.5);
    }
}

TEST(CudaZImageForward, Int8DefaultPlanMatchesW8A8Reference) {
    if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
    for (const char* name : {"h3_b1", "h2_l3_sharded"}) {
        SCOPED_TRACE(name);
        Fixture f = load(name);
        Tensor out = run((dir(name) / "transformer").string(), QuantConfig{QuantMethod::Int8, {}, "dynamic"}, f);
        Err vs8 = compare(out, f.w8a8), vs32 = compare(out, f.fp32), q = compare(f.w8a8, f.fp32),
            b = compare(f.bf16, f.fp32);
        const double expected = 10 * std::log10(q.r2 / (q.e2 + b.e2));
        std::printf("[ %-13s ] cuda int8: vs fp32 %.2f dB (expected %.2f: w8a8 ref %.2f, bf16 ref %.2f); "
                    "rel L2 vs w8a8 ref %.4f\n",
                    name, vs32.sqnr(), expected, q.sqnr(), b.sqnr(), vs8.rel());
        EXPECT_GE(vs32.sqnr(), expected - 1.0);
    }
}

// set_cuda_graph: the captured call and a replay give the eager forward's output bit for bit.
TEST(CudaZImageForward, CudaGraphMatchesEagerBitForBit) {
    if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
    Fixture f = load("h3_b1");
    cudaStream_t s;
    ASSERT_EQ(cudaStreamCreate(&s), cudaSuccess);
    {
        zimage::ZImageTransformerCuda model(
            prepare_model((dir("h3_b1") / "transformer").string(), QuantConfig{QuantMethod::Int8, {}, "dynamic"}), s);
        const Tensor eager = model.forward({f.x}, f.t, {f.cap})[0];
        model.set_cuda_graph(true);
        const Tensor captured = model.forward({f.x}, f.t, {f.cap})[0];
        const Tensor replayed = model.forward({f.x}, f.t, {f.cap})[0];
        ASSERT_EQ(eager.nbytes(), captured.nbytes());
        EXPECT_EQ(std::memcmp(eager.raw(), captured.raw(), eager.nbytes()), 0);
        EXPECT_EQ(std::memcmp(eager.raw(), replayed.raw(), eager.nbytes()), 0);
        model.set_cuda_graph(false);
        const Tensor again = model.forward({f.x}, f.t, {f.cap})[0];
        EXPECT_EQ(std::memcmp(eager.raw(), again.raw(), eager.nbytes()), 0);
    }
    cudaStreamDestroy(s);
}
