// The qdit cache folder and a small on-disk store of blobs kept between processes (e.g. compiled
// cuDNN execution plans, backend/cuda/plan_cache.h). An entry that cannot be used (truncated, corrupt,
// written for another key) reads as absent with the reason given, never as an error: the caller
// warns, rebuilds and writes it again.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace qdit {

// $QDIT_CACHE_DIR, else $XDG_CACHE_HOME/qdit, else ~/.cache/qdit (IoError when none is set).
std::string default_cache_dir();

// Entries are files <dir>/<16 hex digits of the key's hash>.bin holding "qdit-blob 1\n", the key
// (u64 length + bytes), the payload (u64 length + bytes) and an FNV-1a 64-bit checksum of all
// that precedes it. The key says everything the payload depends on (versions, device, shape), so
// an entry made under other conditions is never found.
class BlobCache {
public:
    explicit BlobCache(std::string dir) : dir_(std::move(dir)) {}
    const std::string& dir() const { return dir_; }
    std::string path_of(const std::string& key) const;

    // The payload stored under `key`, or nullopt: when there is no entry (*problem left empty) or
    // the entry is unusable (*problem says why).
    std::optional<std::vector<uint8_t>> get(const std::string& key, std::string* problem = nullptr) const;
    // Stores `payload` under `key` (a temporary file renamed over the entry, the folder made if
    // needed). Returns false with *problem when it cannot be written; never throws for that.
    bool put(const std::string& key, const std::vector<uint8_t>& payload, std::string* problem = nullptr) const;

private:
    std::string dir_;
};

// The folder of compiled GPU plans, <default_cache_dir()>/cudnn-plans, or "" when the plan cache is
// off (QDIT_PLAN_CACHE=0) or there is no cache folder. Read from the environment at each call.
std::string plan_cache_dir();

// What a compiled plan depends on beside its own shape: a plan made for another GPU, driver or
// library version is never reused.
struct PlanEnvironment {
    std::string gpu;                 // the device's name
    int cc_major = 0, cc_minor = 0;  // its compute capability
    int driver = 0;                  // the CUDA driver's version
    int64_t library = 0;             // cuDNN's version
    int64_t frontend = 0;            // cudnn-frontend's version
    std::string qdit;                // qdit's version
};

// The cache key of a plan: its kind and format (a number bumped whenever the code that builds
// plans of that kind changes), the environment and `shape`, which describes everything else the
// plan was built for.
std::string plan_cache_key(const std::string& kind, int format, const PlanEnvironment& env, const std::string& shape);

}  // namespace qdit
