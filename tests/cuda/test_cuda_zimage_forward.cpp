// The Z-Image forward (models/zimage/transformer.h) on a CUDA context against diffusers' outputs on the
// fixtures (h5_b2: a batch of two with different caption lengths), with the bounds the CPU forward's test uses (tests/test_zimage_forward.cpp).
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

#include <fmt/format.h>

#include "backend/cuda/quantize.h"
#include "io/safetensors.h"
#include "models/zimage/transformer.h"
#include "models/loader.h"

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

// Inputs and references of every batch item of a fixture.
struct Fixture {
    std::vector<Tensor> x, cap, fp32, bf16, w8a8;
    Tensor t;
};

Fixture load(const std::string& name) {
    SafetensorsFile in((dir(name) / "inputs.safetensors").string()), ref((dir(name) / "reference.safetensors").string());
    Fixture f;
    f.t = in.get("t");
    for (int i = 0; in.contains(fmt::format("x.{}", i)); ++i) {
        f.x.push_back(in.get(fmt::format("x.{}", i)));
        f.cap.push_back(in.get(fmt::format("cap_feats.{}", i)));
        for (auto [tag, v] : {std::pair{"fp32", &f.fp32}, {"bf16", &f.bf16}, {"w8a8", &f.w8a8}})
            v->push_back(ref.get(fmt::format("{}.{}", tag, i)));
    }
    return f;
}

// Errors summed over the batch items.
Err compare(const std::vector<Tensor>& a, const std::vector<Tensor>& r) {
    EXPECT_EQ(a.size(), r.size());
    Err e;
    for (size_t i = 0; i < std::min(a.size(), r.size()); ++i) {
        const Err ei = compare(a[i], r[i]);
        e.e2 += ei.e2;
        e.r2 += ei.r2;
    }
    return e;
}

const ops::Context kGpu{{DeviceType::CUDA, 0}};

std::vector<Tensor> run(const std::string& path, const QuantConfig& qc, const Fixture& f) {
    zimage::ZImageTransformer model(prepare_model(path, qc), DType::BF16, kGpu);
    return model.forward(f.x, f.t, f.cap);
}

}  // namespace

TEST(CudaZImageForward, Bf16MatchesDiffusers) {
    if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
    for (const char* name : {"h3_b1", "h5_b2", "h2_l3_sharded"}) {
        SCOPED_TRACE(name);
        Fixture f = load(name);
        fs::path d16 = dir(name) / "transformer-bf16";
        std::vector<Tensor> out = run(fs::exists(d16) ? d16.string() : (dir(name) / "transformer").string(), QuantConfig{}, f);
        Err vs16 = compare(out, f.bf16), vs32 = compare(out, f.fp32), ref = compare(f.bf16, f.fp32);
        std::printf("[ %-13s ] cuda bf16: rel L2 vs bf16 ref %.4f (bound %.4f); vs fp32 %.2f dB (ref %.2f dB)\n", name,
                    vs16.rel(), 0.8 * ref.rel(), vs32.sqnr(), ref.sqnr());
        EXPECT_LE(vs16.rel(), 0.8 * ref.rel());
        EXPECT_GE(vs32.sqnr(), ref.sqnr() - 0.5);
    }
}

TEST(CudaZImageForward, Int8DefaultPlanMatchesW8A8Reference) {
    if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
    for (const char* name : {"h3_b1", "h5_b2", "h2_l3_sharded"}) {
        SCOPED_TRACE(name);
        Fixture f = load(name);
        std::vector<Tensor> out = run((dir(name) / "transformer").string(), QuantConfig{QuantMethod::Int8, {}, "dynamic"}, f);
        Err vs8 = compare(out, f.w8a8), vs32 = compare(out, f.fp32), q = compare(f.w8a8, f.fp32),
            b = compare(f.bf16, f.fp32);
        const double expected = 10 * std::log10(q.r2 / (q.e2 + b.e2));
        std::printf("[ %-13s ] cuda int8: vs fp32 %.2f dB (expected %.2f: w8a8 ref %.2f, bf16 ref %.2f); "
                    "rel L2 vs w8a8 ref %.4f\n",
                    name, vs32.sqnr(), expected, q.sqnr(), b.sqnr(), vs8.rel());
        EXPECT_GE(vs32.sqnr(), expected - 1.0);
    }
}

// Every Linear int8, the layers the default plan keeps in bf16 too (adaLN, embedders, final layer:
// what a pre-quantized checkpoint may hold): the GPU model loads and runs what the CPU model does,
// its producers' missing int8 rows quantized where the group reads them; the output against the
// CPU model with the same plan in bf16 (<= 0.5 · that model's distance from fp32, as in the Qwen3
// encoder's int8 test).
TEST(CudaZImageForward, Int8EveryLayerRunsAsOnTheCpu) {
    if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
    const char* name = "h3_b1";
    Fixture f = load(name);
    PreparedModel m = prepare_model((dir(name) / "transformer").string(), QuantConfig{QuantMethod::Int8, {}, "dynamic"});
    int forced = 0;
    for (LayerPlan& l : m.plan.layers)
        if (l.precision != Precision::Int8) {
            l.precision = Precision::Int8;
            ++forced;
        }
    ASSERT_GT(forced, 0) << "the default plan should keep some layers in bf16";
    zimage::ZImageTransformer gpu(m, DType::BF16, kGpu);
    zimage::ZImageTransformer cpu(m, DType::BF16);
    const std::vector<Tensor> out = gpu.forward(f.x, f.t, f.cap), want = cpu.forward(f.x, f.t, f.cap);
    const Err vs_cpu = compare(out, want), cpu32 = compare(want, f.fp32);
    std::printf("[ %-13s ] cuda int8, every layer (%d forced): rel L2 vs cpu %.2e (bound %.2e)\n", name, forced,
                vs_cpu.rel(), 0.5 * cpu32.rel());
    EXPECT_LE(vs_cpu.rel(), 0.5 * cpu32.rel());
}

// set_cuda_graph (ops/graph.h): the captured call and a replay give the eager forward's output bit
// for bit, also for a batch whose items alternate two sequence shapes (h5_b2: captions of 7 and 40
// tokens), which keeps one graph per shape; and eager again after it is turned off.
TEST(CudaZImageForward, CudaGraphMatchesEagerBitForBit) {
    if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
    cudaStream_t s;
    ASSERT_EQ(cudaStreamCreate(&s), cudaSuccess);
    for (const char* name : {"h3_b1", "h5_b2"}) {
        SCOPED_TRACE(name);
        Fixture f = load(name);
        zimage::ZImageTransformer model(
            prepare_model((dir(name) / "transformer").string(), QuantConfig{QuantMethod::Int8, {}, "dynamic"}),
            DType::BF16, ops::Context{{DeviceType::CUDA, 0}, s});
        const std::vector<Tensor> eager = model.forward(f.x, f.t, f.cap);
        model.set_cuda_graph(true);
        const std::vector<Tensor> captured = model.forward(f.x, f.t, f.cap);
        const std::vector<Tensor> replayed = model.forward(f.x, f.t, f.cap);
        model.set_cuda_graph(false);
        const std::vector<Tensor> again = model.forward(f.x, f.t, f.cap);
        for (size_t i = 0; i < eager.size(); ++i)
            for (const std::vector<Tensor>* o : {&captured, &replayed, &again}) {
                ASSERT_EQ(eager[i].nbytes(), (*o)[i].nbytes());
                EXPECT_EQ(std::memcmp(eager[i].raw(), (*o)[i].raw(), eager[i].nbytes()), 0) << "item " << i;
            }
    }
    cudaStreamDestroy(s);
}
