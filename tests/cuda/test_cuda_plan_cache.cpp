// The cuDNN plan cache on disk (backend/cuda/plan_cache.h). Attention plans (attention.h) for one
// item, one causal grouped-query item and padded batches of 2 and 3 items (the same sizes
// otherwise, so the batch must be part of the key), and convolution plans (conv.h; bf16 with a
// fused bias, f32 without bias): a plan built with an empty cache folder is stored in a file of its
// own; after the process forgets its plans the next call reads it from disk (counted as read,
// nothing built) and gives the built plan's output bit for bit, for attention also when the read
// plan's first execution is captured in a CUDA graph (as the transformers' steps are); a corrupt
// entry, an entry whose payload is not a plan and one whose payload is a JSON object without the
// plan's fields are each counted as unusable, rebuilt (same bits) and stored again;
// QDIT_PLAN_CACHE=0 builds without reading or writing. Runs where a CUDA device and cuDNN are present.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "backend/cuda/allocator.h"
#include "backend/cuda/attention.h"
#include "backend/cuda/conv.h"
#include "backend/cuda/device_tensor.h"
#include "backend/cuda/plan_cache.h"
#include "backend/cuda/quantize.h"
#include "io/cache.h"
#include "io/files.h"
#include "tests/env_var.h"
#include "tests/random_tensor.h"

namespace fs = std::filesystem;
using namespace qdit;
using testutil::EnvVar;
using cuda::DTensor;
using cuda::MemKind;

namespace {

std::set<std::string> entries(const fs::path& dir) {
    std::set<std::string> s;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec)) s.insert(e.path().string());
    return s;
}

// The key stored in a cache entry ("qdit-blob 1\n", u64 key length, key, ...).
std::string stored_key(const std::string& path) {
    const std::string s = read_text_file(path);
    const size_t at = std::strlen("qdit-blob 1\n");
    uint64_t n = 0;
    EXPECT_GE(s.size(), at + 8);
    if (s.size() < at + 8) return {};
    std::memcpy(&n, s.data() + at, 8);
    EXPECT_LE(at + 8 + n, s.size());
    return s.substr(at + 8, size_t(n));
}

struct Case {
    const char* name;
    int64_t s, heads, kv_heads, hd;
    bool causal;
    std::vector<int32_t> lengths;  // a padded batch of these items (s rows apart); empty: one item
    int64_t items() const { return lengths.empty() ? 1 : int64_t(lengths.size()); }
};

// Runs one case on fused q|k|v rows, returning the output's valid rows.
struct Runner {
    const Case& c;
    int64_t D, Dkv, ld;
    DTensor qkv, len;

    explicit Runner(const Case& cs) : c(cs) {
        D = c.heads * c.hd;
        Dkv = c.kv_heads * c.hd;
        ld = D + 2 * Dkv;
        qkv = DTensor::upload(testutil::randn({c.items() * c.s, ld}, 21, 0.f, 1.5f), MemKind::Activation, nullptr);
        if (!c.lengths.empty()) {
            len = DTensor::empty({c.items()}, DType::I32);
            cuda::check(cudaMemcpy(len.raw(), c.lengths.data(), c.lengths.size() * 4, cudaMemcpyHostToDevice), "len");
        }
    }
    void issue(void* o, cudaStream_t stream) const {
        const auto* p = static_cast<const uint16_t*>(qkv.raw());
        if (c.lengths.empty())
            cuda::attention(p, ld, p + D, ld, p + D + Dkv, ld, o, D, c.s, c.heads, c.hd, stream,
                            cuda::AttentionImpl::Cudnn, c.kv_heads, c.causal);
        else
            cuda::attention_padded(p, ld, p + D, ld, p + D + Dkv, ld, o, D, c.items(), c.s,
                                   static_cast<const int32_t*>(len.raw()), c.heads, c.kv_heads, c.hd, stream);
    }
    // The valid rows' bytes (rows past an item's length are unspecified).
    std::vector<uint8_t> valid_rows(const DTensor& o) const {
        const Tensor h = o.download(nullptr);
        const auto* b = static_cast<const uint8_t*>(h.raw());
        const size_t row = size_t(D) * 2;
        std::vector<uint8_t> out;
        for (int64_t i = 0; i < c.items(); ++i) {
            const int64_t n = c.lengths.empty() ? c.s : c.lengths[size_t(i)];
            out.insert(out.end(), b + size_t(i * c.s) * row, b + size_t(i * c.s + n) * row);
        }
        return out;
    }
    std::vector<uint8_t> run() const {
        DTensor o = DTensor::empty({c.items() * c.s, D}, DType::BF16);
        cuda::check(cudaMemset(o.raw(), 0xff, o.nbytes()), "poison");
        issue(o.raw(), nullptr);
        cuda::check(cudaDeviceSynchronize(), c.name);
        return valid_rows(o);
    }
    // The call captured in a CUDA graph on a stream of its own, then launched.
    std::vector<uint8_t> run_in_graph() const {
        DTensor o = DTensor::empty({c.items() * c.s, D}, DType::BF16);
        cuda::check(cudaMemset(o.raw(), 0xff, o.nbytes()), "poison");
        cuda::check(cudaDeviceSynchronize(), "poison");  // the stream below does not wait for the default one
        cudaStream_t s = nullptr;
        cuda::check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "stream");
        auto& alloc = cuda::Allocator::instance();
        alloc.begin_record();
        cuda::check(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed), "capture");
        cudaGraph_t g = nullptr;
        try {
            issue(o.raw(), s);
        } catch (...) {
            cudaStreamEndCapture(s, &g);
            for (void* p : alloc.end_record()) alloc.release(p);
            throw;
        }
        cuda::check(cudaStreamEndCapture(s, &g), "end capture");
        const std::vector<void*> held = alloc.end_record();
        cudaGraphExec_t exec = nullptr;
        cuda::check(cudaGraphInstantiate(&exec, g, 0), "instantiate");
        cuda::check(cudaGraphLaunch(exec, s), "launch");
        cuda::check(cudaStreamSynchronize(s), c.name);
        cudaGraphExecDestroy(exec);
        cudaGraphDestroy(g);
        for (void* p : held) alloc.release(p);
        cudaStreamDestroy(s);
        return valid_rows(o);
    }
};

enum class Kind { Conv, Attention };

// The counts of `kind` gained while `f` runs, with this process's plans of that kind forgotten first.
cuda::PlanCounts fresh(Kind kind, const std::function<void()>& f) {
    auto of = [kind] {
        const cuda::CudnnPlanStats s = cuda::cudnn_plan_stats();
        return kind == Kind::Conv ? s.conv : s.attention;
    };
    if (kind == Kind::Conv)
        cuda::forget_conv_plans();
    else
        cuda::forget_attention_plans();
    const cuda::PlanCounts a = of();
    f();
    const cuda::PlanCounts b = of();
    cuda::PlanCounts d;
    d.built = b.built - a.built;
    d.cached = b.cached - a.cached;
    d.rejected = b.rejected - a.rejected;
    d.unstored = b.unstored - a.unstored;
    return d;
}

// A plan cache folder of its own for the test, QDIT_PLAN_CACHE unset.
struct TempCache {
    fs::path dir = fs::temp_directory_path() / ("qdit_test_plan_cache_" + std::to_string(::getpid()));
    fs::path plans = dir / "cudnn-plans";
    EnvVar cache_dir{"QDIT_CACHE_DIR", dir.string().c_str()}, on{"QDIT_PLAN_CACHE", nullptr};
    TempCache() { fs::remove_all(dir); }
    ~TempCache() {
        cuda::forget_conv_plans();
        cuda::forget_attention_plans();
        fs::remove_all(dir);
    }
};

// Everything above for one shape whose plan is in neither this process nor the folder yet: `run`
// issues the work and returns its output's bytes; `run_in_graph` (if any) does the same captured
// in a CUDA graph.
void check_cached(Kind kind, TempCache& tc, const std::function<std::vector<uint8_t>()>& run,
                  const std::function<std::vector<uint8_t>()>& run_in_graph) {
    // Built with no entry, and stored in a file of its own.
    const auto before = entries(tc.plans);
    std::vector<uint8_t> built;
    cuda::PlanCounts n = fresh(kind, [&] { built = run(); });
    ASSERT_EQ(n.built, 1);
    EXPECT_EQ(n.cached, 0);
    EXPECT_EQ(n.rejected, 0);
    ASSERT_EQ(n.unstored, 0) << "cuDNN could not serialize the plan, or the folder could not be written";
    std::vector<std::string> added;
    for (const std::string& e : entries(tc.plans))
        if (!before.count(e)) added.push_back(e);
    ASSERT_EQ(added.size(), 1u) << "each shape has its own entry";
    const std::string file = added[0], key = stored_key(file);
    EXPECT_NE(key.find(kind == Kind::Conv ? "convolution" : "attention"), std::string::npos) << key;

    // Read back by a process that has no plan yet: nothing built, the same bits.
    std::vector<uint8_t> read;
    n = fresh(kind, [&] { read = run(); });
    EXPECT_EQ(n.cached, 1);
    EXPECT_EQ(n.built, 0);
    EXPECT_EQ(n.rejected, 0);
    EXPECT_TRUE(read == built) << "the plan read from disk gives other bits than the built one";
    if (run_in_graph) {  // read, and first executed inside a CUDA graph capture
        n = fresh(kind, [&] { read = run_in_graph(); });
        EXPECT_EQ(n.cached, 1);
        EXPECT_EQ(n.built, 0);
        EXPECT_TRUE(read == built) << "the plan read from disk, captured in a graph, gives other bits";
    }

    // Unusable entries: counted, rebuilt with the same bits, stored again.
    ASSERT_FALSE(key.empty());
    auto expect_rebuilt = [&](const char* what) {
        SCOPED_TRACE(what);
        std::vector<uint8_t> again;
        cuda::PlanCounts m = fresh(kind, [&] { again = run(); });
        EXPECT_EQ(m.rejected, 1);
        EXPECT_EQ(m.built, 1);
        EXPECT_EQ(m.cached, 0);
        EXPECT_TRUE(again == built);
        m = fresh(kind, [&] { again = run(); });  // stored again by the rebuild
        EXPECT_EQ(m.cached, 1);
        EXPECT_EQ(m.built, 0);
    };
    std::string flipped = read_text_file(file);
    flipped[flipped.size() / 2] ^= 0x10;
    std::ofstream(file, std::ios::binary | std::ios::trunc) << flipped;
    expect_rebuilt("a corrupt file");
    const BlobCache blobs(tc.plans.string());
    const std::string text = "not a plan";
    ASSERT_TRUE(blobs.put(key, std::vector<uint8_t>(text.begin(), text.end())));
    expect_rebuilt("a payload that is not a plan");
    ASSERT_TRUE(blobs.put(key, nlohmann::json::to_ubjson(nlohmann::json{{"json_version", "1.0"}})));
    expect_rebuilt("a JSON object without the plan's fields");

    // QDIT_PLAN_CACHE=0: built, the entry neither read nor written.
    tc.on.set("0");
    const std::string stored = read_text_file(file);
    fs::remove(file);
    n = fresh(kind, [&] { read = run(); });
    EXPECT_EQ(n.built, 1);
    EXPECT_EQ(n.cached, 0);
    EXPECT_FALSE(fs::exists(file));
    EXPECT_TRUE(read == built);
    std::ofstream(file, std::ios::binary | std::ios::trunc) << stored;
    n = fresh(kind, [&] { read = run(); });
    EXPECT_EQ(n.built, 1);
    EXPECT_EQ(n.cached, 0);
    tc.on.set(nullptr);
}

}  // namespace

TEST(CudaPlanCache, AttentionPlansStoredReadAndRebuilt) {
    if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
    if (!cuda::cudnn_attention_available()) GTEST_SKIP() << "no cuDNN";
    TempCache tc;
    ASSERT_EQ(plan_cache_dir(), tc.plans.string());
    const std::vector<Case> cases{{"one item", 256, 4, 4, 128, false, {}},
                                  {"causal, grouped-query", 200, 4, 2, 64, true, {}},
                                  {"padded batch of 2", 128, 4, 4, 64, false, {128, 77}},
                                  {"padded batch of 3", 128, 4, 4, 64, false, {128, 77, 5}}};
    for (const Case& c : cases) {
        SCOPED_TRACE(c.name);
        const Runner r(c);
        check_cached(Kind::Attention, tc, [&] { return r.run(); }, [&] { return r.run_in_graph(); });
    }
}

TEST(CudaPlanCache, ConvolutionPlansStoredReadAndRebuilt) {
    if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
    if (!cuda::cudnn_conv_available()) GTEST_SKIP() << "no cuDNN";
    TempCache tc;
    struct ConvCase {
        DType dt;
        int64_t in, out, k, pad, H, W;
        bool bias;
    };
    for (const ConvCase& c : {ConvCase{DType::BF16, 16, 24, 3, 1, 12, 10, true},
                              ConvCase{DType::F32, 8, 16, 1, 0, 7, 9, false}}) {
        SCOPED_TRACE(fmt::format("{} {}->{} k{}", dtype_name(c.dt), c.in, c.out, c.k));
        const Tensor w = testutil::randn({c.out, c.in, c.k, c.k}, 31, 0.f, 0.3f, DType::F32);
        const Tensor b = c.bias ? testutil::randn({c.out}, 32, 0.f, 1.f, DType::F32) : Tensor();
        const cuda::Conv2d conv("test.conv", w, b, c.pad, c.dt);
        const DTensor x =
            DTensor::upload(testutil::randn({1, c.H, c.W, c.in}, 33, 0.f, 1.f, c.dt), MemKind::Activation, nullptr);
        auto run = [&] {
            const DTensor y = conv.forward(x, nullptr);
            const Tensor h = y.download(nullptr);
            const auto* p = static_cast<const uint8_t*>(h.raw());
            return std::vector<uint8_t>(p, p + h.nbytes());
        };
        check_cached(Kind::Conv, tc, run, nullptr);
    }
}
