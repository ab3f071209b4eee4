#ifdef QDIT_WITH_CUDA  // a CUDA build: this file is empty without the CUDA backend
#include "models/zimage/transformer_parallel.h"

#include <set>

namespace qdit::zimage {

ZImageTransformerParallel::ZImageTransformerParallel(const PreparedModel& m, parallel::RankGroup& group,
                                                     ParallelMode mode)
    : group_(&group), shards_(size_t(group.world())) {
    // The checkpoint opens its shard files lazily; open them all here so the rank threads only
    // read from it.
    const Checkpoint& ck = *m.checkpoint;
    std::set<std::string> files;
    for (const std::string& k : ck.keys())
        if (files.insert(ck.file_of(k)).second) (void)ck.get(k);
    group.run([&](parallel::Communicator& comm) {
        shards_[size_t(comm.rank())] = std::make_unique<ZImageTransformerCuda>(m, comm, mode);
    });
}

ZImageTransformerParallel::~ZImageTransformerParallel() = default;

int ZImageTransformerParallel::world() const { return int(shards_.size()); }
const Config& ZImageTransformerParallel::config() const { return shards_[0]->config(); }
ParallelMode ZImageTransformerParallel::mode() const { return shards_[0]->parallel_mode(); }
int ZImageTransformerParallel::int8_layers() const { return shards_[0]->int8_layers(); }
int ZImageTransformerParallel::linear_layers() const { return shards_[0]->linear_layers(); }
size_t ZImageTransformerParallel::weight_bytes(int rank) const { return shards_.at(size_t(rank))->weight_bytes(); }
ZImageTransformerCuda& ZImageTransformerParallel::shard(int rank) { return *shards_.at(size_t(rank)); }

void ZImageTransformerParallel::set_attention(cuda::AttentionImpl impl) {
    for (auto& s : shards_) s->set_attention(impl);
}

std::vector<Tensor> ZImageTransformerParallel::forward(const std::vector<Tensor>& x, const Tensor& t,
                                                       const std::vector<Tensor>& caps) const {
    std::vector<Tensor> out;
    group_->run([&](parallel::Communicator& comm) {
        std::vector<Tensor> y = shards_[size_t(comm.rank())]->forward(x, t, caps);
        if (comm.rank() == 0) out = std::move(y);
    });
    return out;
}

}  // namespace qdit::zimage

#endif  // QDIT_WITH_CUDA
