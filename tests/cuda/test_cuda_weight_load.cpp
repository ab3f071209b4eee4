// The GPU load path (nn/load_cuda.h: file bytes through pinned staging buffers to the device,
// converted and int8-quantized there) against the host path (nn::host_weights: the CPU converts and
// quantizes with backend/cpu/quantize.h, then uploads): the same bytes for every part of every
// group (dense, W8A8, weight-only, fused members, padding, tensor-parallel windows, pre-quantized),
// from F32, F16, BF16 and F64 checkpoints spread over several shards, and for the fixture models.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <random>

#include "backend/cuda/quantize.h"
#include "backend/cuda/staging.h"
#include "io/safetensors.h"
#include "models/loader.h"
#include "nn/linear_cuda.h"
#include "nn/load_cuda.h"

#ifndef QDIT_TEST_DATA
#define QDIT_TEST_DATA "tests/data"
#endif

namespace fs = std::filesystem;
using namespace qdit;
using qdit::nn::gpu::Member;

namespace {

Tensor random_tensor(Shape shape, DType dt, uint32_t seed, float stddev = 1.f) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist(0.f, stddev);
    Tensor f = Tensor::empty(shape, DType::F32);
    for (int64_t i = 0; i < f.numel(); ++i) f.data<float>()[i] = dist(rng);
    // A tie for the quantizer's rounding and an all-zero row, where the shape allows.
    if (f.numel() > 8) f.data<float>()[3] = 0.f;
    if (shape.size() == 2 && shape[0] > 2)
        for (int64_t j = 0; j < shape[1]; ++j) f.data<float>()[shape[1] + j] = 0.f;
    return f.to(dt);
}

bool same_bytes(const cuda::DTensor& a, const cuda::DTensor& b, cudaStream_t s, const std::string& what) {
    EXPECT_EQ(a.defined(), b.defined()) << what;
    if (!a.defined() || !b.defined()) return a.defined() == b.defined();
    EXPECT_EQ(a.shape(), b.shape()) << what;
    EXPECT_EQ(a.dtype(), b.dtype()) << what;
    if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
    const Tensor x = a.download(s), y = b.download(s);
    const bool same = std::memcmp(x.raw(), y.raw(), x.nbytes()) == 0;
    EXPECT_TRUE(same) << what << ": bytes differ";
    return same;
}

void expect_same_group(const nn::gpu::Group& a, const nn::gpu::Group& b, cudaStream_t s, const std::string& what) {
    ASSERT_EQ(a.parts.size(), b.parts.size()) << what;
    EXPECT_EQ(a.n, b.n);
    for (size_t i = 0; i < a.parts.size(); ++i) {
        const auto &p = a.parts[i], &q = b.parts[i];
        const std::string w = what + " part " + std::to_string(i);
        EXPECT_EQ(p.int8, q.int8) << w;
        EXPECT_EQ(p.n, q.n) << w;
        same_bytes(p.w, q.w, s, w + " w");
        same_bytes(p.q, q.q, s, w + " q");
        same_bytes(p.wscale, q.wscale, s, w + " wscale");
        same_bytes(p.bias, q.bias, s, w + " bias");
    }
}

LayerPlan layer(const std::string& name, int64_t out, int64_t in, bool bias, Precision p, DType stored,
                bool prequantized = false) {
    LayerPlan l;
    l.spec = {name, out, in, bias};
    l.precision = p;
    l.stored = stored;
    l.prequantized = prequantized;
    return l;
}

class CudaWeightLoad : public ::testing::Test {
protected:
    void SetUp() override {
        if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
        cuda::check(cudaStreamCreate(&s_), "stream");
    }
    void TearDown() override {
        if (s_) cudaStreamDestroy(s_);
    }
    // Both paths for one group; the reader's version is made with every reader thread count given.
    void check_group(const Checkpoint& ck, const std::vector<Member>& ms, int64_t k, const std::string& what) {
        const nn::gpu::Group host = nn::gpu::make_group(ms, k, {&ck, 0, s_, nullptr});
        for (int threads : {1, 3}) {
            nn::gpu::CheckpointReader rd(ck, s_, threads);
            const nn::gpu::Group dev = nn::gpu::make_group(ms, k, {&ck, 0, s_, &rd});
            cuda::check(cudaStreamSynchronize(s_), "load");
            expect_same_group(host, dev, s_, what + " (" + std::to_string(threads) + " threads)");
        }
    }
    cudaStream_t s_ = nullptr;
};

}  // namespace

// Data larger than the staging buffers goes in pieces through the ring of buffers (each reused
// after its copy is done), in order, whatever the sizes.
TEST_F(CudaWeightLoad, StagedUploadCopiesInPieces) {
    std::vector<uint8_t> src(50000 + 123);
    for (size_t i = 0; i < src.size(); ++i) src[i] = uint8_t((i * 131 + 7) % 251);
    cuda::StagedUpload up(s_, 2, 4096);
    std::vector<cuda::DTensor> dst;
    std::vector<size_t> pieces;
    for (size_t n : {size_t(1), size_t(4096), size_t(4097), src.size()}) {
        dst.push_back(cuda::DTensor::empty({int64_t(n)}, DType::U8));
        up.copy(dst.back().raw(), n, [&](size_t off, size_t len, void* host) {
            ASSERT_LE(len, size_t(4096));
            pieces.push_back(len);
            std::memcpy(host, src.data() + off, len);
        });
    }
    EXPECT_EQ(pieces.size(), 1u + 1u + 2u + (src.size() + 4095) / 4096);
    EXPECT_EQ(up.bytes(), 1 + 4096 + 4097 + src.size());
    for (const cuda::DTensor& d : dst) {
        const Tensor h = d.download(s_);
        EXPECT_EQ(std::memcmp(h.raw(), src.data(), h.nbytes()), 0) << h.nbytes() << " bytes";
    }
}

TEST_F(CudaWeightLoad, GroupsEqualTheHostPathBitForBit) {
    const fs::path dir = fs::temp_directory_path() / ("qdit_weight_load_" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
    // Layers in each float dtype; K = 40 and 23 are not multiples of 16 (the int8 row stride pads).
    std::vector<std::pair<std::string, Tensor>> ts;
    const DType dts[] = {DType::F32, DType::F16, DType::BF16, DType::F64};
    std::vector<LayerPlan> dense, w8a8, wonly;
    for (int i = 0; i < 4; ++i) {
        const std::string n = "l" + std::to_string(i);
        const int64_t out = 24 + 8 * i, in = i % 2 ? 23 : 40;
        ts.emplace_back(n + ".weight", random_tensor({out, in}, dts[i], uint32_t(i), 0.05f));
        ts.emplace_back(n + ".bias", random_tensor({out}, i == 2 ? DType::BF16 : DType::F32, uint32_t(100 + i)));
        dense.push_back(layer(n, out, in, true, Precision::High, dts[i]));
        w8a8.push_back(layer(n, out, in, true, Precision::Int8, dts[i]));
        wonly.push_back(layer(n, out, in, true, Precision::Int8WeightOnly, dts[i]));
    }
    // Two layers without bias reading 40 inputs (fused q|k-like groups), in bf16 and f32.
    ts.emplace_back("a.weight", random_tensor({48, 40}, DType::BF16, 7, 0.02f));
    ts.emplace_back("b.weight", random_tensor({32, 40}, DType::F32, 8, 0.02f));
    // A pre-quantized layer: int8 weight, [out, 1] scales.
    Tensor pq = Tensor::empty({16, 40}, DType::I8);
    for (int64_t i = 0; i < pq.numel(); ++i) pq.data<int8_t>()[i] = int8_t((i * 37) % 255 - 127);
    ts.emplace_back("p.weight", pq);
    ts.emplace_back("p.weight_scale", random_tensor({16, 1}, DType::F32, 9, 0.01f));
    ts.emplace_back("p.bias", random_tensor({16}, DType::F32, 10));
    write_checkpoint(dir.string(), "model", ts, 4000);
    const Checkpoint ck(dir.string());
    ASSERT_GT(ck.files().size(), 3u);

    for (int i = 0; i < 4; ++i) {
        const std::string n = "l" + std::to_string(i) + " " + dtype_name(dts[i]);
        const int64_t out = dense[size_t(i)].spec.out_features, in = dense[size_t(i)].spec.in_features;
        check_group(ck, {{&dense[size_t(i)], out, in}}, in, n + " dense");
        check_group(ck, {{&w8a8[size_t(i)], out, in}}, in, n + " int8");
        check_group(ck, {{&wonly[size_t(i)], out, in}}, in, n + " weight-only");
        check_group(ck, {{&w8a8[size_t(i)], out + 5, 48}}, 48, n + " int8 padded");
        check_group(ck, {{&dense[size_t(i)], out + 3, 48}}, 48, n + " dense padded");
        // Tensor-parallel windows: rows past the end, columns from the middle (int8 keeps the whole
        // rows' scales).
        check_group(ck, {{&w8a8[size_t(i)], 16, 16, true, 8, in - 10}}, 16, n + " int8 window");
        check_group(ck, {{&dense[size_t(i)], 16, 16, true, out - 4, 3}}, 16, n + " dense window");
    }
    LayerPlan a_int8 = layer("a", 48, 40, false, Precision::Int8, DType::BF16),
              b_int8 = layer("b", 32, 40, false, Precision::Int8, DType::F32),
              a_bf16 = layer("a", 48, 40, false, Precision::High, DType::BF16),
              b_bf16 = layer("b", 32, 40, false, Precision::High, DType::F32);
    check_group(ck, {{&a_int8, 48, 40}, {&b_int8, 32, 40}, {&w8a8[0], 24, 40}}, 40, "fused int8");
    check_group(ck, {{&a_bf16, 48, 40}, {&b_bf16, 40, 40}, {&dense[2], 40, 40}}, 40, "fused bf16, padded");
    check_group(ck, {{&a_bf16, 48, 40}, {&b_int8, 32, 40}, {&wonly[2], 40, 40}, {&dense[0], 24, 40}}, 40,
                "mixed parts");
    LayerPlan p = layer("p", 16, 40, true, Precision::Int8, DType::BF16, true);
    check_group(ck, {{&p, 16, 40}}, 40, "pre-quantized");
    check_group(ck, {{&p, 16, 16, true, 4, 30}}, 16, "pre-quantized window");

    // Plain tensors (norm weights, embeddings) in the compute dtype: as get_as converts on the host.
    {
        nn::gpu::CheckpointReader rd(ck, s_, 2);
        for (const std::string& name : {"l0.weight", "l1.weight", "l2.weight", "l3.weight", "l0.bias", "p.weight_scale"})
            for (DType dt : {DType::BF16, DType::F32}) {
                const cuda::DTensor d = rd.tensor(name, dt);
                const Tensor host = ck.get_as(name, dt), got = d.download(s_);
                ASSERT_EQ(got.shape(), host.shape()) << name;
                EXPECT_EQ(std::memcmp(got.raw(), host.raw(), host.nbytes()), 0) << name << " as " << dtype_name(dt);
            }
    }
    const nn::LoadStats st = nn::load_stats();
    EXPECT_GT(st.bytes, 0u);
    EXPECT_GT(st.staging_bytes, 0u);
    fs::remove_all(dir);
}

// The fixture models, every Linear layer as the int8 and the bf16 plans load it.
TEST_F(CudaWeightLoad, FixtureModelsLoadAsOnTheHost) {
    for (const char* model : {"/zimage/h2_l3_sharded/transformer", "/pipeline"})
        for (QuantMethod method : {QuantMethod::Int8, QuantMethod::None}) {
            QuantConfig qc;
            qc.method = method;
            const PreparedModel m = prepare_model(std::string(QDIT_TEST_DATA) + model, qc);
            ASSERT_FALSE(m.plan.layers.empty());
            int int8 = 0;
            for (const LayerPlan& l : m.plan.layers) {
                int8 += int8_weights(l.precision);
                check_group(*m.checkpoint, {{&l, l.spec.out_features, l.spec.in_features}}, l.spec.in_features,
                            std::string(model) + " " + l.spec.name);
            }
            if (method == QuantMethod::Int8) EXPECT_GT(int8, 0) << model;
        }
}
