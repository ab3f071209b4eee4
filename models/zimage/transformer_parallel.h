// The Z-Image transformer over several ranks (tensor or sequence parallelism, ParallelMode): one
// ZImageTransformerCuda per rank of a parallel::RankGroup (NCCL over GPUs, or the local test group
// on one GPU), driven from one host thread per rank. The caller sees the one-GPU interface: host
// tensors in, the velocity out (rank 0's copy; every rank computes the whole output).
#pragma once
#include <memory>
#include <vector>

#include "backend/cuda/attention.h"
#include "core/tensor.h"
#include "models/zimage/transformer_cuda.h"
#include "parallel/communicator.h"
#include "models/loader.h"

namespace qdit::zimage {

class ZImageTransformerParallel {
public:
    // Loads every rank's shard on its device (in parallel, one thread per rank). `group` must
    // outlive the model.
    ZImageTransformerParallel(const PreparedModel& m, parallel::RankGroup& group,
                              ParallelMode mode = ParallelMode::Tensor);
    ~ZImageTransformerParallel();

    int world() const;
    const Config& config() const;
    int int8_layers() const;
    int linear_layers() const;
    ParallelMode mode() const;
    size_t weight_bytes(int rank) const;  // device bytes of rank's part
    void set_attention(cuda::AttentionImpl impl);
    ZImageTransformerCuda& shard(int rank);

    // ZImageTransformerCuda::forward on every rank; returns rank 0's result.
    std::vector<Tensor> forward(const std::vector<Tensor>& x, const Tensor& t, const std::vector<Tensor>& caps) const;

private:
    parallel::RankGroup* group_;
    std::vector<std::unique_ptr<ZImageTransformerCuda>> shards_;
};

}  // namespace qdit::zimage
