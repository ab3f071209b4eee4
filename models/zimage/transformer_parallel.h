// The Z-Image transformer over several ranks (tensor or sequence parallelism, ops::ParallelMode):
// one ZImageTransformer per rank of a parallel::RankGroup (NCCL over GPUs, or the local test group
// on one GPU), each with its rank's communicator in its op context, driven from one host thread per
// rank. The caller sees the one-device interface: host tensors in, the velocity out (rank 0's copy;
// every rank computes the whole output).
#pragma once
#include <memory>
#include <vector>

#include "core/tensor.h"
#include "models/loader.h"
#include "models/zimage/transformer.h"
#include "parallel/communicator.h"

namespace qdit::zimage {

class ZImageTransformerParallel {
public:
    // Loads every rank's part on its device (in parallel, one thread per rank). `group` must
    // outlive the model.
    ZImageTransformerParallel(const PreparedModel& m, parallel::RankGroup& group,
                              ParallelMode mode = ParallelMode::Tensor);
    ~ZImageTransformerParallel();

    int world() const { return int(shards_.size()); }
    const Config& config() const { return shards_[0]->config(); }
    int int8_layers() const { return shards_[0]->int8_layers(); }
    int linear_layers() const { return shards_[0]->linear_layers(); }
    ParallelMode mode() const { return shards_[0]->context().parallel; }
    size_t weight_bytes(int rank) const { return shards_.at(size_t(rank))->weight_bytes(); }
    void set_attention(ops::AttentionImpl impl);
    ZImageTransformer& shard(int rank) { return *shards_.at(size_t(rank)); }

    // ZImageTransformer::forward on every rank; returns rank 0's result.
    std::vector<Tensor> forward(const std::vector<Tensor>& x, const Tensor& t, const std::vector<Tensor>& caps) const;
    // ZImageTransformer::forward_tokens on every rank from host patches and caption features (any float
    // dtype, cast to the compute dtype); returns rank 0's result on the host.
    Tensor forward_tokens(const Tensor& patches, const std::array<int64_t, 3>& grid, const Tensor& cap_feats,
                          float t) const;

    // The op context of `comm`'s rank: its device and stream, the communicator and the split.
    static ops::Context rank_context(parallel::Communicator& comm, ParallelMode mode);

private:
    parallel::RankGroup* group_;
    std::vector<std::unique_ptr<ZImageTransformer>> shards_;
};

}  // namespace qdit::zimage
