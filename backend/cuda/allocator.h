// Caching device allocator: cudaMalloc'ed blocks are kept after release and handed out again for
// requests of the same rounded size, so a denoising loop that repeats the same shapes allocates
// from the driver only in its first step. Bytes in use are tracked per kind (weights, activations)
// with their peaks. No managed memory.
//
// Reuse is stream-ordered: a block released while kernels on a stream may still read it can be
// handed out at once, which is safe when all work runs on one stream (the model forward does).
#pragma once
#include <cstddef>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace qdit::cuda {

enum class MemKind { Weight, Activation };

struct MemStats {
    size_t weight = 0;           // bytes in use by weights
    size_t activation = 0;       // bytes in use by activations (and workspaces)
    size_t peak_activation = 0;  // since the last reset_peak()
    size_t peak = 0;             // peak of weight + activation in use
    size_t reserved = 0;         // bytes obtained from cudaMalloc (in use + cached)
    size_t peak_reserved = 0;
    size_t mallocs = 0;          // cudaMalloc calls so far
};

class Allocator {
public:
    // The process-wide allocator (blocks belong to the device current at allocation).
    static Allocator& instance();

    // Rounded up: 512 B below 1 MiB, 2 MiB above. Throws qdit::Error when the device is out of
    // memory even after the cache is emptied.
    void* allocate(size_t bytes, MemKind kind);
    void release(void* p);
    // Frees the cached (unused) blocks back to the driver.
    void empty_cache();

    MemStats stats() const;
    void reset_peak();

    static size_t round_size(size_t bytes);

    // CUDA graph capture: begin_record() notes every block handed out until end_record(), which
    // takes those of them that are free again out of the cache and returns them (they stay counted
    // as activations in use). A graph captured in between replays into these blocks, so they must
    // not be handed out again: the graph's owner gives each back with release() when it drops the
    // graph. Blocks still in use at end_record() stay with their owners.
    void begin_record();
    std::vector<void*> end_record();

private:
    struct Block {
        size_t size;
        MemKind kind;
        int device;
    };
    mutable std::mutex mu_;
    std::unordered_map<void*, Block> used_;
    std::map<std::pair<int, size_t>, std::vector<void*>> free_;  // (device, size) -> blocks
    MemStats st_;
    bool recording_ = false;
    std::vector<void*> recorded_;
};

}  // namespace qdit::cuda
