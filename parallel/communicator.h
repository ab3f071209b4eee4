// Collectives over device buffers for multi-GPU runs (CUDA builds only).
//
// One process drives every rank: a RankGroup holds one Communicator per rank and runs a function
// on one host thread per rank (RankGroup::run), with that rank's device current. Each rank's model
// shard and its collectives use the rank's stream (Communicator::stream()).
//
//   RankGroup::nccl(devices): one rank per GPU over NCCL. The communicators come from
//       ncclCommInitAll; every rank's thread issues its own collectives on its own communicator and
//       stream (no ncclGroupStart/End across ranks is needed, as each communicator is driven by one
//       thread). libnccl.so.2 is loaded at run time (dlopen) when the first group is made: from
//       $QDIT_NCCL_LIBRARY if set, else the default library search path (LD_LIBRARY_PATH), else the
//       copy fetched next to the build's nccl.h. A build without nccl.h throws UsageError here.
//   RankGroup::local(world, device): `world` ranks on ONE GPU in one process, for tests of sharded
//       models on a one-GPU machine (NCCL refuses two ranks on one device). All ranks share one
//       stream and their threads take turns: a rank runs until it waits in a collective (or ends),
//       then another runs, so host-side caches and the stream-ordered allocator see one thread at a
//       time and every kernel is ordered on the one stream. The last rank to reach a collective
//       performs it for everyone with copies and a small reduction kernel.
//
// Collectives are collective: every rank calls the same ones in the same order with the same count
// and dtype. They are asynchronous on `stream` (the local group's run in stream order as well), so
// buffers must stay alive until the stream has passed them.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "core/dtype.h"
#include "core/error.h"

namespace qdit::parallel {

enum class ReduceOp { Sum, Max };

class Communicator {
public:
    virtual ~Communicator() = default;
    virtual int rank() const = 0;
    virtual int world() const = 0;
    virtual int device() const = 0;            // the rank's CUDA device
    virtual cudaStream_t stream() const = 0;   // the rank's stream (created by the group)

    // recv[i] = op over ranks of send[i], i < count, on every rank (F32, I32 or BF16; Sum or Max).
    // send == recv (in place) is allowed. BF16 sums accumulate in f32 in the local group; NCCL's
    // own order and rounding apply over NCCL.
    virtual void all_reduce(const void* send, void* recv, int64_t count, DType dtype, ReduceOp op,
                            cudaStream_t stream) = 0;
    // recv = the ranks' send buffers (count elements each) one after another in rank order.
    // In place when send == recv + rank·count.
    virtual void all_gather(const void* send, void* recv, int64_t count, DType dtype, cudaStream_t stream) = 0;
    // send holds world blocks of count elements, block j for rank j; recv receives world blocks,
    // block j from rank j. send and recv must not overlap.
    virtual void all_to_all(const void* send, void* recv, int64_t count, DType dtype, cudaStream_t stream) = 0;
    // Returns on every rank once all ranks called it and the work each queued on `stream` before
    // the call has finished.
    virtual void barrier(cudaStream_t stream) = 0;
};

// Thrown on the other ranks when one rank of a group fails: their collectives cannot complete.
class RankAborted : public Error {
public:
    using Error::Error;
};

class RankGroup {
public:
    // One rank per device in `devices` (distinct, each visible). Throws UsageError when the build
    // has no NCCL or a device is missing, Error when libnccl.so.2 cannot be loaded or NCCL fails.
    static std::unique_ptr<RankGroup> nccl(const std::vector<int>& devices);
    // `world` ranks (1..8) on CUDA device `device`, for tests.
    static std::unique_ptr<RankGroup> local(int world, int device = 0);

    virtual ~RankGroup() = default;
    virtual int world() const = 0;
    virtual const char* backend() const = 0;  // "nccl" or "local"
    virtual Communicator& comm(int rank) = 0;

    // Runs fn(comm(r)) for every rank r on its own host thread, with the rank's device current,
    // and returns when all have finished. When a rank throws, the group is aborted (ranks waiting
    // in a collective throw RankAborted) and the first rank's own error is rethrown; the group
    // cannot be used again after that.
    void run(const std::function<void(Communicator&)>& fn);

protected:
    virtual void start() {}            // on the calling thread, before the ranks' threads start
    virtual void enter(int rank) = 0;  // on the rank's thread, before fn
    virtual void leave(int rank) = 0;  // on the rank's thread, after fn (also when it threw)
    virtual void abort() = 0;          // from any thread: make every pending collective fail
    bool broken_ = false;
};

// Whether multi-GPU runs over NCCL can start here: this build has nccl.h and libnccl.so.2 loads.
// On false, *why (when given) says which of the two is missing and what to do.
bool nccl_available(std::string* why = nullptr);

}  // namespace qdit::parallel
