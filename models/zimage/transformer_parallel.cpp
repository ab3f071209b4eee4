#ifdef QDIT_WITH_CUDA  // a CUDA build: this file is empty without the CUDA backend
#include "models/zimage/transformer_parallel.h"

#include <set>

namespace qdit::zimage {

ops::Context ZImageTransformerParallel::rank_context(parallel::Communicator& comm, ParallelMode mode) {
    return {{DeviceType::CUDA, comm.device()}, comm.stream(), ops::AttentionImpl::Auto, &comm, mode};
}

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
        shards_[size_t(comm.rank())] = std::make_unique<ZImageTransformer>(m, DType::BF16, rank_context(comm, mode));
    });
}

ZImageTransformerParallel::~ZImageTransformerParallel() = default;

void ZImageTransformerParallel::set_attention(ops::AttentionImpl impl) {
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

Tensor ZImageTransformerParallel::forward_tokens(const Tensor& patches, const std::array<int64_t, 3>& grid,
                                                const Tensor& cap_feats, float t) const {
    Tensor out;
    group_->run([&](parallel::Communicator& comm) {
        const ZImageTransformer& m = *shards_[size_t(comm.rank())];
        const ops::Context& ctx = m.context();
        const Tensor y = m.forward_tokens(ops::to_device(patches.to(m.compute_dtype()), ctx), grid,
                                          ops::to_device(cap_feats.to(m.compute_dtype()), ctx), t);
        if (comm.rank() == 0) out = ops::to_host(y, ctx);
    });
    return out;
}

}  // namespace qdit::zimage

#endif  // QDIT_WITH_CUDA
