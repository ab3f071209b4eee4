// Caching device allocator: cudaMalloc'ed blocks are kept after release and handed out again for
// requests of the same rounded size, so a denoising loop that repeats the same shapes allocates
// from the driver only in its first step. Bytes in use are tracked per kind (weights, activations)
// with their peaks. No managed memory.
//
// Reuse is stream-ordered: a block released while kernels on a stream may still read it can be
// handed out at once, which is safe when all work runs on one stream (the model forward does).
// Where a second stream runs beside it (ops::Fork), hold_begin() .. hold_end() keeps the blocks
// released in between out of the cache (still counted as in use) until the streams have joined,
// except those allocated in between for a stream (allocate's `stream`): a stream that
// allocated a block during the fork is the only one that uses it before the join (ops::Fork's
// rule), so that stream alone may have it again at once.
//
// Weights are packed instead: each device has one weight arena, a virtual address range reserved
// once (CUDA virtual memory management) into which physical memory is mapped as it grows, so
// weight tensors sit back to back (256-byte aligned) rather than each rounded up to 2 MiB; the
// arena holds at most one allocation granule (2 MiB) more than its weights. A freed weight's range
// is reused first-fit by later weights; the arena's physical memory goes back to the driver when
// no weight is left in it. Where the device has no virtual memory management, weights are plain
// cached blocks like activations.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>
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

    // Activations: rounded up to 512 B below 1 MiB, 2 MiB above; weights: to 256 B in the arena.
    // Throws qdit::Error when the device is out of memory even after the cache is emptied.
    // `stream`: the cudaStream_t whose work uses the block (null: unknown), for holds.
    void* allocate(size_t bytes, MemKind kind, const void* stream = nullptr);
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

    // Nested holds: while one is open, released activation blocks wait for the last hold_end().
    void hold_begin();
    void hold_end();

private:
    struct Block {
        size_t size;
        MemKind kind;
        int device;
        bool arena = false;  // a range of the device's weight arena
        const void* stream = nullptr;
        uint64_t hold = 0;  // the hold it was allocated in (0: none)
    };
    struct Arena;
    void* arena_allocate(int device, size_t size);  // nullptr when the arena cannot take it
    void arena_release(int device, void* p, size_t size);
    void free_cached();  // frees the cached blocks (mu_ held)

    mutable std::mutex mu_;
    std::map<int, Arena*> arenas_;  // never destroyed, like the allocator
    std::unordered_map<void*, Block> used_;
    std::map<std::pair<int, size_t>, std::vector<void*>> free_;  // (device, size) -> blocks
    MemStats st_;
    bool recording_ = false;
    std::vector<void*> recorded_;
    int holds_ = 0;
    uint64_t hold_id_ = 0;     // of the open hold (counts the holds)
    std::vector<void*> held_;  // released during a hold, still counted in st_.activation
    // Allocated and released during the open hold: (device, stream, size) -> blocks, for that stream.
    std::map<std::tuple<int, const void*, size_t>, std::vector<void*>> stream_free_;
};

}  // namespace qdit::cuda
