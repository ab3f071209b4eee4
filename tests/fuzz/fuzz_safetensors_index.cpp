// Fuzz target: the *.safetensors.index.json of a sharded checkpoint, as
// arbitrary text, in a folder that holds two valid shards. Opening the folder
// and reading every tensor the index names must either give each tensor from
// the shard that holds it, or throw a qdit::Error.
#include <filesystem>
#include <map>

#include <fmt/format.h>

#include "fuzz_util.h"
#include "io/safetensors.h"

using namespace qdit;

namespace {

Tensor filled(Shape shape, float value) {
    Tensor t = Tensor::empty(std::move(shape), DType::F32);
    for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = value + float(i);
    return t;
}

// The folder: a.safetensors {x, y}, b.safetensors {z}, and the index, a link to the
// in-memory file that each input overwrites.
struct Folder {
    fuzz::TempDir dir;
    fuzz::MemFile index;
    Folder() {
        write_safetensors((dir.path() / "a.safetensors").string(),
                          {{"x", filled({2, 3}, 1)}, {"y", filled({4}, 10)}});
        write_safetensors((dir.path() / "b.safetensors").string(), {{"z", filled({1, 2, 2}, 20)}});
        std::filesystem::create_symlink(index.path(), dir.path() / "model.safetensors.index.json");
    }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static Folder folder;
    folder.index.write(data, size);
    const fuzz::TempDir& dir = folder.dir;
    fuzz::only_qdit_errors([&] {
        const Checkpoint ck(dir.path().string());
        // Only x, y (in a) and z (in b) exist: any other name must have failed above or in get.
        const std::map<std::string, std::pair<std::string, float>> expected = {
            {"x", {"a.safetensors", 1}},
            {"y", {"a.safetensors", 10}},
            {"z", {"b.safetensors", 20}}};
        for (const std::string& name : ck.keys()) {
            const Tensor t = ck.get(name);
            const std::string file = std::filesystem::path(ck.file_of(name)).filename().string();
            auto it = expected.find(name);
            if (it == expected.end() || it->second.first != file ||
                t.item_f32(0) != it->second.second)
                fuzz::property_failed(fmt::format("tensor '{}' read from {}", name, file));
        }
        (void)ck.files();
    });
    return 0;
}
