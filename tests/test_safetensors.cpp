#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "io/files.h"
#include "io/safetensors.h"

namespace fs = std::filesystem;
using namespace qdit;

namespace {

fs::path temp_dir(const std::string& name) {
    fs::path d = fs::temp_directory_path() /
                 ("qdit_test_" + name + "_" + std::to_string(::getpid()));
    fs::remove_all(d);
    fs::create_directories(d);
    return d;
}

Tensor random_tensor(Shape shape, DType dt, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist;
    Tensor f = Tensor::empty(shape, DType::F32);
    for (int64_t i = 0; i < f.numel(); ++i) f.data<float>()[i] = dist(rng) * 3;
    return f.to(dt);
}

bool same_bytes(const Tensor& a, const Tensor& b) {
    return a.dtype() == b.dtype() && a.shape() == b.shape() &&
           std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// Writes a file with a raw header and payload, for corruption tests.
void write_raw(const fs::path& p, const std::string& header, size_t payload, int64_t len = -1) {
    std::ofstream f(p, std::ios::binary);
    uint64_t n = len >= 0 ? uint64_t(len) : header.size();
    f.write(reinterpret_cast<const char*>(&n), 8);
    f << header;
    f << std::string(payload, '\x01');
}

std::string load_error(const fs::path& p) {
    try {
        SafetensorsFile f(p.string());
    } catch (const FormatError& e) {
        return e.what();
    } catch (const std::exception& e) {
        return std::string("wrong exception type: ") + e.what();
    }
    return "no error";
}

}  // namespace

TEST(Safetensors, RoundTripAllDtypes) {
    fs::path d = temp_dir("rt");
    std::vector<std::pair<std::string, Tensor>> ts;
    uint32_t seed = 1;
    for (DType dt : {DType::F32, DType::BF16, DType::F16, DType::I8, DType::I32, DType::U8,
                     DType::F64, DType::I64})
        ts.emplace_back(std::string("t.") + dtype_name(dt), random_tensor({3, 5, 2}, dt, seed++));
    ts.emplace_back("scalar", random_tensor({}, DType::F32, 99));
    ts.emplace_back("empty", Tensor::empty({0, 4}, DType::BF16));
    write_safetensors((d / "a.safetensors").string(), ts, {{"format", "pt"}});

    SafetensorsFile f((d / "a.safetensors").string());
    EXPECT_EQ(f.metadata().at("format"), "pt");
    ASSERT_EQ(f.keys().size(), ts.size());
    for (auto& [name, t] : ts) EXPECT_TRUE(same_bytes(f.get(name), t)) << name;
    // No temporary file is left behind.
    EXPECT_EQ(std::distance(fs::directory_iterator(d), fs::directory_iterator()), 1);
}

TEST(Safetensors, DtypeConversion) {
    Tensor f = random_tensor({64}, DType::F32, 7);
    Tensor b = f.to(DType::BF16).to(DType::F32);
    Tensor h = f.to(DType::F16).to(DType::F32);
    for (int64_t i = 0; i < 64; ++i) {
        float x = f.data<float>()[i];
        EXPECT_NEAR(b.data<float>()[i], x, std::abs(x) * (1.0f / 256));
        EXPECT_NEAR(h.data<float>()[i], x, std::abs(x) * (1.0f / 2048) + 1e-7f);
    }
    // Round-to-nearest-even on an exact tie: 1 + 2^-8 lies halfway between two bf16 values.
    EXPECT_EQ(f32_to_bf16(1.0f + 1.0f / 256), 0x3f80);
    EXPECT_EQ(f32_to_bf16(1.0f + 3.0f / 256), 0x3f82);
    EXPECT_EQ(f16_to_f32(f32_to_f16(65504.f)), 65504.f);
    EXPECT_TRUE(std::isinf(f16_to_f32(f32_to_f16(70000.f))));
    EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
}

TEST(Safetensors, ShardedCheckpointRoundTrip) {
    fs::path d = temp_dir("shards");
    std::vector<std::pair<std::string, Tensor>> ts;
    for (int i = 0; i < 6; ++i)
        ts.emplace_back("layer." + std::to_string(i) + ".weight",
                        random_tensor({16, 16}, DType::BF16, uint32_t(10 + i)));
    auto files = write_checkpoint(d.string(), "diffusion_pytorch_model", ts, 1100);
    ASSERT_GT(files.size(), 2u);  // several shards + the index
    EXPECT_TRUE(fs::exists(d / "diffusion_pytorch_model.safetensors.index.json"));

    Checkpoint ck(d.string());
    EXPECT_GT(ck.files().size(), 1u);
    ASSERT_EQ(ck.keys().size(), ts.size());
    for (auto& [name, t] : ts) {
        EXPECT_TRUE(same_bytes(ck.get(name), t)) << name;
        Tensor f = ck.get_as(name, DType::F32);
        EXPECT_EQ(f.dtype(), DType::F32);
        EXPECT_EQ(f.item_f32(5), t.item_f32(5));
    }
    // One file holds everything when it fits.
    fs::path d2 = temp_dir("single");
    files = write_checkpoint(d2.string(), "model", ts, size_t(1) << 30);
    ASSERT_EQ(files, std::vector<std::string>{"model.safetensors"});
    EXPECT_EQ(Checkpoint(d2.string()).keys().size(), ts.size());
}

// bytes_of + RangeReader give the same bytes as the mapping, from every shard, with the read split
// over threads or not; a range past the end of the file is an IoError naming it.
TEST(Safetensors, RangeReaderReadsTheTensorBytes) {
    fs::path d = temp_dir("ranges");
    std::vector<std::pair<std::string, Tensor>> ts;
    for (int i = 0; i < 4; ++i)
        ts.emplace_back("t" + std::to_string(i), random_tensor({64, 37 + i}, i % 2 ? DType::F32 : DType::BF16,
                                                               uint32_t(40 + i)));
    write_checkpoint(d.string(), "model", ts, 12000);
    Checkpoint ck(d.string());
    ASSERT_GT(ck.files().size(), 1u);
    for (size_t piece : {size_t(1), size_t(64), size_t(1) << 20}) {
        RangeReader rr(3, piece);
        for (auto& [name, t] : ts) {
            const TensorBytes b = ck.bytes_of(name);
            EXPECT_EQ(b.file, ck.file_of(name));
            ASSERT_EQ(b.nbytes, t.nbytes());
            std::vector<uint8_t> got(b.nbytes);
            rr.read(b.file, b.offset, b.nbytes, got.data());
            EXPECT_EQ(std::memcmp(got.data(), t.raw(), b.nbytes), 0) << name << " piece " << piece;
        }
    }
    RangeReader rr(2, 16);
    const TensorBytes b = ck.bytes_of("t3");
    std::vector<uint8_t> buf(4096);
    try {
        rr.read(b.file, b.offset + b.nbytes - 8, 100, buf.data());
        FAIL() << "read past the end";
    } catch (const IoError& e) {
        EXPECT_NE(std::string(e.what()).find(b.file), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("ends"), std::string::npos) << e.what();
    }
    EXPECT_THROW(rr.read((d / "absent.safetensors").string(), 0, 1, buf.data()), IoError);
}

TEST(Safetensors, IndexErrorsNameTheShard) {
    fs::path d = temp_dir("badindex");
    write_file_atomic((d / "model.safetensors.index.json").string(),
                      R"({"weight_map": {"a": "model-00001-of-00002.safetensors"}})");
    try {
        Checkpoint ck(d.string());
        FAIL() << "missing shard accepted";
    } catch (const IoError& e) {
        EXPECT_NE(std::string(e.what()).find("model-00001-of-00002.safetensors"), std::string::npos);
        EXPECT_NE(std::string(e.what()).find("missing"), std::string::npos);
    }
    // The index names a shard that does not hold the tensor.
    write_safetensors((d / "model-00001-of-00002.safetensors").string(),
                      {{"b", random_tensor({2}, DType::F32, 3)}});
    Checkpoint ck(d.string());
    try {
        ck.get("a");
        FAIL() << "index/shard mismatch accepted";
    } catch (const FormatError& e) {
        EXPECT_NE(std::string(e.what()).find("'a'"), std::string::npos);
    }
    write_file_atomic((d / "model.safetensors.index.json").string(), R"({"metadata": {}})");
    EXPECT_THROW(Checkpoint(d.string()), FormatError);
    // Not a plain file name: a folder part, a NUL (the system would read the name up to it and
    // open a.safetensors), the folder itself or its parent.
    write_safetensors((d / "a.safetensors").string(), {{"a", random_tensor({2}, DType::F32, 4)}});
    for (const std::string bad : {std::string(R"("sub/a.safetensors")"),
                                  std::string(R"("a.safetensors\u0000b")"), std::string(R"("")"),
                                  std::string(R"(".")"), std::string(R"("..")"),
                                  std::string("3")}) {
        write_file_atomic((d / "model.safetensors.index.json").string(),
                          R"({"weight_map": {"a": )" + bad + "}}");
        try {
            Checkpoint not_a_name(d.string());
            FAIL() << bad << " accepted as a shard name";
        } catch (const FormatError& e) {
            EXPECT_NE(std::string(e.what()).find("must be a file name"), std::string::npos)
                << e.what();
        }
    }
    // A shard name too long for the file system: an IoError naming it, not std::filesystem's
    // own filesystem_error.
    const std::string long_name(300, 'x');
    write_file_atomic((d / "model.safetensors.index.json").string(),
                      R"({"weight_map": {"a": ")" + long_name + R"("}})");
    try {
        Checkpoint too_long(d.string());
        FAIL() << "a shard name of 300 characters was accepted";
    } catch (const IoError& e) {
        EXPECT_NE(std::string(e.what()).find(long_name), std::string::npos) << e.what();
    }
}

// A header whose length is not a multiple of 8 puts an F64 at an odd address in the
// mapping: get() gives aligned memory holding the same values.
TEST(Safetensors, MisalignedDataIsCopiedToAlignedMemory) {
    fs::path p = temp_dir("misaligned") / "odd.safetensors";
    const std::string header = R"({"d":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}})";
    ASSERT_NE(header.size() % 8, 0u);
    const double values[2] = {1.5, -2.25};
    {
        std::ofstream f(p, std::ios::binary);
        const uint64_t n = header.size();
        f.write(reinterpret_cast<const char*>(&n), 8);
        f << header;
        f.write(reinterpret_cast<const char*>(values), sizeof values);
    }
    const Tensor t = SafetensorsFile(p.string()).get("d");
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw()) % alignof(double), 0u);
    EXPECT_EQ(t.data<double>()[0], 1.5);
    EXPECT_EQ(t.data<double>()[1], -2.25);
}

struct CorruptCase {
    const char* name;
    std::string header;
    size_t payload;
    int64_t len;        // header length to write (-1: the real one)
    const char* needle;  // must appear in the message
};

TEST(Safetensors, CorruptFilesRaiseClearErrors) {
    fs::path d = temp_dir("corrupt");
    const std::vector<CorruptCase> cases = {
        {"len_past_end", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4, 5000,
         "runs past the end"},
        {"len_absurd", "{}", 0, int64_t(1) << 40, "limit"},
        {"bad_json", R"({"a":{"dtype":"F32",)", 0, -1, "not valid JSON"},
        {"number_overflow", R"({"a":{"dtype":"F32","shape":[1e400],"data_offsets":[0,4]}})", 4,
         -1, "not valid JSON"},
        {"not_object", "[1,2]", 0, -1, "not a JSON object"},
        {"unknown_dtype", R"({"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}})", 1, -1,
         "unknown or unsupported dtype"},
        {"missing_field", R"({"a":{"dtype":"F32","shape":[1]}})", 4, -1, "data_offsets"},
        {"offsets_out_of_range", R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8,
         -1, "out of range"},
        {"offsets_reversed", R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}})", 8, -1,
         "out of range"},
        {"size_mismatch", R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8, -1,
         "needs 12 bytes"},
        {"overlap",
         R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
         12, -1, "overlap"},
        {"negative_shape", R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4, -1,
         "shape"},
        {"absurd_shape",
         R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}})", 4, -1,
         "absurd shape"},
        {"bad_metadata", R"({"__metadata__":{"a":1}})", 0, -1, "__metadata__"},
    };
    for (const CorruptCase& c : cases) {
        fs::path p = d / (std::string(c.name) + ".safetensors");
        write_raw(p, c.header, c.payload, c.len);
        std::string msg = load_error(p);
        EXPECT_NE(msg.find(c.needle), std::string::npos) << c.name << ": " << msg;
        EXPECT_NE(msg.find(p.string()), std::string::npos) << c.name << " names no file: " << msg;
    }
    // Truncated: shorter than the length prefix, and a valid file cut short.
    {
        fs::path p = d / "tiny.safetensors";
        std::ofstream(p, std::ios::binary) << "abc";
        EXPECT_NE(load_error(p).find("truncated"), std::string::npos);
    }
    {
        fs::path p = d / "cut.safetensors";
        write_safetensors(p.string(), {{"w", random_tensor({64, 64}, DType::F32, 5)}});
        fs::resize_file(p, fs::file_size(p) - 100);
        EXPECT_NE(load_error(p).find("out of range"), std::string::npos);
    }
    EXPECT_THROW(SafetensorsFile((d / "nope.safetensors").string()), IoError);
}

// The load-progress hook: Checkpoint::get reports each tensor's bytes to the observer while one is
// set, and nothing once it is cleared.
TEST(Safetensors, ReadObserverCountsTheBytesHandedOut) {
    fs::path d = temp_dir("observer");
    std::vector<std::pair<std::string, Tensor>> ts;
    for (int i = 0; i < 4; ++i)
        ts.emplace_back("w" + std::to_string(i), random_tensor({8, 4 + i}, DType::BF16, uint32_t(i)));
    write_checkpoint(d.string(), "model", ts, 300);
    Checkpoint ck(d.string());
    uint64_t seen = 0, calls = 0, want = 0;
    set_checkpoint_read_observer([&](uint64_t b) {
        seen += b;
        ++calls;
    });
    for (auto& [name, t] : ts) {
        ck.get(name);
        want += t.nbytes();
    }
    set_checkpoint_read_observer({});
    ck.get("w0");
    EXPECT_EQ(seen, want);
    EXPECT_EQ(calls, ts.size());
}
