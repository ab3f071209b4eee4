// safetensors reading (memory-mapped, lazy per tensor, single files and
// sharded checkpoints) and writing (atomic: temp file + rename).
//
// File layout: u64 little-endian header length N, N bytes of JSON
// {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}},
// then the data region; offsets are relative to its start.
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace qdit {

struct TensorInfo {
    std::string name;
    DType dtype = DType::F32;
    Shape shape;
    size_t begin = 0, end = 0;  // byte offsets into the data region
};

// Where a tensor's bytes lie in its file, for readers that do not go through the mapping
// (io/files.h's RangeReader).
struct TensorBytes {
    std::string file;
    uint64_t offset = 0;  // from the start of the file
    size_t nbytes = 0;
};

// A read-only mapping of a whole file.
class MappedFile : public Storage {
public:
    explicit MappedFile(const std::string& path);
    ~MappedFile() override;
    uint8_t* data() override { return ptr_; }
    size_t size() const override { return size_; }
    bool writable() const override { return false; }
    const std::string& path() const { return path_; }

private:
    std::string path_;
    uint8_t* ptr_ = nullptr;
    size_t size_ = 0;
};

// Largest header accepted (the format's reference reader uses 100 MB).
constexpr size_t kMaxSafetensorsHeader = 100u << 20;

class SafetensorsFile {
public:
    // Maps the file and validates the whole header; throws FormatError naming
    // the file (and tensor) on any inconsistency.
    explicit SafetensorsFile(const std::string& path);

    const std::string& path() const { return map_->path(); }
    const std::vector<std::string>& keys() const { return keys_; }  // in file order
    bool contains(const std::string& name) const { return index_.count(name) != 0; }
    const TensorInfo& info(const std::string& name) const;
    const std::map<std::string, std::string>& metadata() const { return metadata_; }
    // A zero-copy view of the tensor's bytes (kept alive by the view); a copy when
    // the file places them where their element type cannot be read in place.
    Tensor get(const std::string& name) const;
    TensorBytes bytes_of(const std::string& name) const;

private:
    std::shared_ptr<MappedFile> map_;
    size_t data_start_ = 0;
    std::vector<std::string> keys_;
    std::map<std::string, TensorInfo> index_;
    std::map<std::string, std::string> metadata_;
};

// Called (under a lock) with each tensor's byte count as Checkpoint::get hands it to a loader: what
// a front end counts to show load progress. Process-wide; empty (the default) calls nothing.
void set_checkpoint_read_observer(std::function<void(uint64_t bytes)> observer);

// A checkpoint: one .safetensors file, or the shards listed by a
// *.safetensors.index.json ("weight_map": {tensor: shard file}).
// Shards are opened on first use.
class Checkpoint {
public:
    // `path` is a .safetensors file, an index .json, or a folder holding exactly
    // one of `diffusion_pytorch_model.safetensors[.index.json]`,
    // `model.safetensors[.index.json]` or a single *.safetensors file.
    explicit Checkpoint(const std::string& path);

    const std::string& path() const { return path_; }  // what was opened (file or index)
    const std::vector<std::string>& keys() const { return keys_; }  // sorted
    bool contains(const std::string& name) const { return shard_of_.count(name) != 0; }
    const TensorInfo& info(const std::string& name) const;
    Tensor get(const std::string& name) const;  // zero-copy view
    // The tensor converted to `dtype` (a copy unless already that dtype).
    Tensor get_as(const std::string& name, DType dtype) const;
    // Where the tensor's bytes lie (validates the index entry as get does).
    TensorBytes bytes_of(const std::string& name) const;
    // Which file holds a tensor.
    const std::string& file_of(const std::string& name) const;
    std::vector<std::string> files() const;

private:
    const SafetensorsFile& shard(const std::string& file) const;

    std::string path_;
    std::vector<std::string> keys_;
    std::map<std::string, std::string> shard_of_;  // tensor -> file path
    mutable std::map<std::string, std::unique_ptr<SafetensorsFile>> shards_;
};

// Writes `tensors` (contiguous host tensors) in the given order to `path`
// atomically: the data goes to a temporary file in the same folder, which is
// renamed over `path` only once complete.
void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Writes a sharded checkpoint into `dir`: files `<stem>-0000i-of-0000n.safetensors`
// of at most `max_shard_bytes` each plus `<stem>.safetensors.index.json`; a
// single `<stem>.safetensors` when everything fits in one shard. Returns the
// files written (relative names).
std::vector<std::string> write_checkpoint(
    const std::string& dir, const std::string& stem,
    const std::vector<std::pair<std::string, Tensor>>& tensors, size_t max_shard_bytes);

}  // namespace qdit
