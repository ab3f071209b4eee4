// io/cache.h: the cache folder's environment variables, and cache entries read back as written,
// absent when missing, and ignored with a reason (never an exception) when corrupt, truncated,
// foreign or written for another key; a failed write reports instead of throwing. The plan cache's
// folder and switch (QDIT_PLAN_CACHE), and its keys: a plan is never read for another GPU, driver,
// library, qdit version, kind, format or shape.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "io/cache.h"
#include "io/files.h"
#include "tests/env_var.h"

namespace fs = std::filesystem;
using namespace qdit;
using testutil::EnvVar;

namespace {

fs::path temp_dir(const std::string& name) {
    fs::path d = fs::temp_directory_path() / ("qdit_test_" + name + "_" + std::to_string(::getpid()));
    fs::remove_all(d);
    return d;
}

std::string read_all(const std::string& path) { return read_text_file(path); }
void write_all(const std::string& path, const std::string& s) {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << s;
}

}  // namespace

TEST(BlobCache, CacheFolderFromTheEnvironment) {
    EnvVar a("QDIT_CACHE_DIR", "/x/qdit-cache"), b("XDG_CACHE_HOME", "/y"), c("HOME", "/home/z");
    EXPECT_EQ(default_cache_dir(), "/x/qdit-cache");
    {
        EnvVar a2("QDIT_CACHE_DIR", nullptr);
        EXPECT_EQ(default_cache_dir(), "/y/qdit");
        EnvVar b2("XDG_CACHE_HOME", "");
        EXPECT_EQ(default_cache_dir(), "/home/z/.cache/qdit");
        EnvVar c2("HOME", nullptr);
        EXPECT_THROW(default_cache_dir(), IoError);
    }
}

TEST(BlobCache, RoundTripMissingAndUnusableEntries) {
    const fs::path d = temp_dir("blob_cache");
    const BlobCache cache((d / "plans").string());  // the folder is made by the first put
    const std::vector<uint8_t> payload{1, 2, 3, 0, 255, 42};
    std::string problem;
    EXPECT_FALSE(cache.get("gpu=A|shape=1", &problem).has_value());
    EXPECT_TRUE(problem.empty()) << problem;  // absent is not a problem

    ASSERT_TRUE(cache.put("gpu=A|shape=1", payload, &problem)) << problem;
    auto got = cache.get("gpu=A|shape=1", &problem);
    ASSERT_TRUE(got.has_value()) << problem;
    EXPECT_EQ(*got, payload);
    EXPECT_FALSE(cache.get("gpu=B|shape=1", &problem).has_value());  // another key, another file
    ASSERT_TRUE(cache.put("empty", {}, &problem));
    ASSERT_TRUE(cache.get("empty").has_value());
    EXPECT_TRUE(cache.get("empty")->empty());

    const std::string path = cache.path_of("gpu=A|shape=1"), good = read_all(path);
    auto expect_unusable = [&](const std::string& bytes, const char* reason) {
        write_all(path, bytes);
        std::string why;
        EXPECT_FALSE(cache.get("gpu=A|shape=1", &why).has_value()) << reason;
        EXPECT_NE(why.find(reason), std::string::npos) << why;
        EXPECT_NE(why.find(path), std::string::npos) << why;
    };
    std::string flipped = good;
    flipped[flipped.size() - 12] ^= 0x20;  // a payload byte
    expect_unusable(flipped, "checksum");
    expect_unusable(good.substr(0, good.size() - 3), "truncated");
    expect_unusable(good.substr(0, 15), "truncated");
    expect_unusable(good + "x", "trailing");
    expect_unusable("garbage that is long enough", "not a qdit cache entry");
    expect_unusable("", "not a qdit cache entry");
    // An entry of another key at this key's file (a hash collision, a renamed file).
    ASSERT_TRUE(cache.put("other", payload));
    expect_unusable(read_all(cache.path_of("other")), "another key");
    // A rewrite repairs the entry.
    ASSERT_TRUE(cache.put("gpu=A|shape=1", payload));
    EXPECT_EQ(cache.get("gpu=A|shape=1").value(), payload);

    // A folder that cannot be made: put says why and does not throw.
    write_all((d / "file").string(), "x");
    const BlobCache bad((d / "file" / "sub").string());
    std::string why;
    EXPECT_FALSE(bad.put("k", payload, &why));
    EXPECT_FALSE(why.empty());
    EXPECT_FALSE(bad.get("k", &why).has_value());
    fs::remove_all(d);
}

TEST(PlanCache, FolderAndSwitch) {
    EnvVar a("QDIT_CACHE_DIR", "/x/qdit-cache"), p("QDIT_PLAN_CACHE", nullptr);
    EXPECT_EQ(plan_cache_dir(), "/x/qdit-cache/cudnn-plans");
    {
        EnvVar off("QDIT_PLAN_CACHE", "0");
        EXPECT_EQ(plan_cache_dir(), "");
    }
    {
        EnvVar on("QDIT_PLAN_CACHE", "1");
        EXPECT_EQ(plan_cache_dir(), "/x/qdit-cache/cudnn-plans");
    }
    EnvVar a2("QDIT_CACHE_DIR", nullptr), b("XDG_CACHE_HOME", nullptr), c("HOME", nullptr);
    EXPECT_EQ(plan_cache_dir(), "");  // no cache folder: off, not an error
}

TEST(PlanCache, KeyNamesEverythingThePlanDependsOn) {
    const PlanEnvironment env{"NVIDIA H100 80GB HBM3", 9, 0, 12080, 91000, 13200, "0.1.0"};
    const std::string shape = "bf16 sdpa s 4096 heads 30 kv_heads 30 hd 128 padded batch 2";
    const std::string base = plan_cache_key("cudnn attention plan", 1, env, shape);
    std::vector<std::string> others{plan_cache_key("cudnn convolution plan", 1, env, shape),
                                    plan_cache_key("cudnn attention plan", 2, env, shape),
                                    plan_cache_key("cudnn attention plan", 1, env, shape + "x")};
    auto changed = [&](auto edit) {
        PlanEnvironment e = env;
        edit(e);
        others.push_back(plan_cache_key("cudnn attention plan", 1, e, shape));
    };
    changed([](PlanEnvironment& e) { e.gpu = "NVIDIA H200"; });
    changed([](PlanEnvironment& e) { e.cc_major = 8; });
    changed([](PlanEnvironment& e) { e.cc_minor = 9; });
    changed([](PlanEnvironment& e) { e.driver = 12090; });
    changed([](PlanEnvironment& e) { e.library = 91100; });
    changed([](PlanEnvironment& e) { e.frontend = 13300; });
    changed([](PlanEnvironment& e) { e.qdit = "0.1.1"; });
    for (const std::string& o : others) EXPECT_NE(o, base);
    EXPECT_EQ(plan_cache_key("cudnn attention plan", 1, env, shape), base);

    // A plan stored under one key is not read under another (another driver, another batch).
    const fs::path d = temp_dir("plan_key");
    const BlobCache cache(d.string());
    ASSERT_TRUE(cache.put(base, {7, 7, 7}));
    std::string problem;
    EXPECT_TRUE(cache.get(base, &problem).has_value()) << problem;
    for (const std::string& o : others) {
        EXPECT_FALSE(cache.get(o, &problem).has_value()) << o;
        EXPECT_TRUE(problem.empty()) << problem;
        // Even at the other key's file name (a renamed file, a hash collision): refused.
        fs::copy_file(cache.path_of(base), cache.path_of(o), fs::copy_options::overwrite_existing);
        EXPECT_FALSE(cache.get(o, &problem).has_value()) << o;
        EXPECT_NE(problem.find("another key"), std::string::npos) << problem;
        problem.clear();
    }
    fs::remove_all(d);
}
