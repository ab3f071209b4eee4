// RankGroup::run and the local group: several ranks on one GPU (parallel/communicator.h).
#include "parallel/communicator.h"

#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>

#include <cuda_bf16.h>

#include "backend/cuda/device_tensor.h"
#include "backend/cuda/quantize.h"

namespace qdit::parallel {

void RankGroup::run(const std::function<void(Communicator&)>& fn) {
    if (broken_) raise<Error>("{} rank group: an earlier run failed on one rank; make a new group", backend());
    const int W = world();
    start();
    std::vector<std::exception_ptr> rank_errors(static_cast<size_t>(W));
    std::vector<char> aborted(size_t(W), 0);  // char: written from several threads
    std::vector<std::thread> threads;
    for (int r = 0; r < W; ++r)
        threads.emplace_back([&, r] {
            try {
                enter(r);
                fn(comm(r));
                leave(r);
            } catch (const RankAborted&) {
                rank_errors[size_t(r)] = std::current_exception();
                aborted[size_t(r)] = 1;
                leave(r);  // safe also when enter() threw
            } catch (...) {
                rank_errors[size_t(r)] = std::current_exception();
                leave(r);  // safe also when enter() threw
                abort();
            }
        });
    for (std::thread& t : threads) t.join();
    std::exception_ptr first;
    for (int r = 0; r < W && !first; ++r)
        if (rank_errors[size_t(r)] && !aborted[size_t(r)]) first = rank_errors[size_t(r)];
    for (int r = 0; r < W && !first; ++r)
        if (rank_errors[size_t(r)]) first = rank_errors[size_t(r)];
    if (first) {
        broken_ = true;
        std::rethrow_exception(first);
    }
}

namespace {

constexpr int kMaxLocalWorld = 8;

struct Sources {
    const void* p[kMaxLocalWorld];
};

template <typename T>
__device__ __forceinline__ float load_f(const void* p, int64_t i) {
    return float(static_cast<const T*>(p)[i]);
}

// dst[i] = op over the n sources of src[i] in rank order; F32 / BF16 in f32 (BF16 rounded once),
// I32 in int32 (wrapping like NCCL's).
__global__ void reduce_f32_kernel(Sources src, int n, float* dst, int64_t count, bool max) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= count) return;
    float a = static_cast<const float*>(src.p[0])[i];
    for (int r = 1; r < n; ++r) {
        const float v = static_cast<const float*>(src.p[r])[i];
        a = max ? fmaxf(a, v) : a + v;
    }
    dst[i] = a;
}

__global__ void reduce_bf16_kernel(Sources src, int n, __nv_bfloat16* dst, int64_t count, bool max) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= count) return;
    float a = __bfloat162float(static_cast<const __nv_bfloat16*>(src.p[0])[i]);
    for (int r = 1; r < n; ++r) {
        const float v = __bfloat162float(static_cast<const __nv_bfloat16*>(src.p[r])[i]);
        a = max ? fmaxf(a, v) : a + v;
    }
    dst[i] = __float2bfloat16_rn(a);
}

__global__ void reduce_i32_kernel(Sources src, int n, int32_t* dst, int64_t count, bool max) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= count) return;
    uint32_t a = uint32_t(static_cast<const int32_t*>(src.p[0])[i]);
    int32_t m = int32_t(a);
    for (int r = 1; r < n; ++r) {
        const int32_t v = static_cast<const int32_t*>(src.p[r])[i];
        a += uint32_t(v);
        m = v > m ? v : m;
    }
    dst[i] = max ? m : int32_t(a);
}

enum class Kind { AllReduce, AllGather, AllToAll, Barrier };

const char* kind_name(Kind k) {
    switch (k) {
        case Kind::AllReduce: return "all_reduce";
        case Kind::AllGather: return "all_gather";
        case Kind::AllToAll: return "all_to_all";
        case Kind::Barrier: return "barrier";
    }
    return "?";
}

class LocalGroup;

class LocalComm final : public Communicator {
public:
    LocalComm(LocalGroup* g, int rank) : g_(g), rank_(rank) {}
    int rank() const override { return rank_; }
    int world() const override;
    int device() const override;
    cudaStream_t stream() const override;
    void all_reduce(const void* send, void* recv, int64_t count, DType dtype, ReduceOp op, cudaStream_t s) override;
    void all_gather(const void* send, void* recv, int64_t count, DType dtype, cudaStream_t s) override;
    void all_to_all(const void* send, void* recv, int64_t count, DType dtype, cudaStream_t s) override;
    void barrier(cudaStream_t s) override;

    std::unique_lock<std::mutex> turn;  // held while this rank's thread runs

private:
    LocalGroup* g_;
    int rank_;
};

class LocalGroup final : public RankGroup {
public:
    LocalGroup(int world, int device) : world_(world), device_(device) {
        const int n = cuda::device_count();
        if (world < 1 || world > kMaxLocalWorld)
            raise<UsageError>("local rank group: world {} is outside 1..{}", world, kMaxLocalWorld);
        if (device < 0 || device >= n)
            raise<UsageError>("local rank group: CUDA device {} does not exist ({} visible)", device, n);
        cuda::check(cudaSetDevice(device), "local rank group: selecting the device");
        cuda::check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "local rank group: stream");
        for (int r = 0; r < world; ++r) comms_.push_back(std::make_unique<LocalComm>(this, r));
    }
    ~LocalGroup() override {
        cudaSetDevice(device_);
        cudaStreamSynchronize(stream_);
        cudaStreamDestroy(stream_);
    }
    int world() const override { return world_; }
    const char* backend() const override { return "local"; }
    Communicator& comm(int rank) override { return *comms_.at(size_t(rank)); }

    int device() const { return device_; }
    cudaStream_t stream() const { return stream_; }

    // Rank `rank` (holding its turn) arrives at a collective; the last one to arrive performs it.
    void collective(int rank, Kind kind, const void* send, void* recv, int64_t count, DType dtype, ReduceOp op,
                    cudaStream_t s) {
        LocalComm& me = *comms_[size_t(rank)];
        if (s != stream_)
            raise<UsageError>("local rank group: {} on rank {} was given another stream than the group's", kind_name(kind),
                              rank);
        if (count < 0) raise<UsageError>("local rank group: {} of {} elements", kind_name(kind), count);
        if (kind == Kind::AllReduce && dtype != DType::F32 && dtype != DType::I32 && dtype != DType::BF16)
            raise<UsageError>("local rank group: all_reduce of {} (F32, I32 or BF16)", dtype_name(dtype));
        if (aborted_) throw RankAborted(fmt::format("rank {}: another rank of the local group failed", rank));
        if (arrived_ == 0) {
            kind_ = kind;
            count_ = count;
            dtype_ = dtype;
            op_ = op;
        } else if (kind != kind_ || count != count_ || dtype != dtype_ || (kind == Kind::AllReduce && op != op_)) {
            aborted_ = true;
            cv_.notify_all();
            raise<Error>("local rank group: rank {} called {} of {} {} while another rank is in {} of {} {}: every "
                         "rank must call the same collectives in the same order",
                         rank, kind_name(kind), count, dtype_name(dtype), kind_name(kind_), count_, dtype_name(dtype_));
        }
        send_[size_t(rank)] = send;
        recv_[size_t(rank)] = recv;
        if (++arrived_ == world_) {
            perform();
            arrived_ = 0;
            ++generation_;
            cv_.notify_all();
            return;
        }
        const uint64_t gen = generation_;
        cv_.wait(me.turn, [&] { return generation_ != gen || aborted_ || arrived_ + finished_ == world_; });
        if (generation_ != gen) return;
        if (aborted_) throw RankAborted(fmt::format("rank {}: another rank of the local group failed", rank));
        // Every other rank has returned without calling this collective.
        aborted_ = true;
        cv_.notify_all();
        raise<Error>("local rank group: rank {} waits in {} but {} rank(s) returned without calling it: every rank "
                     "must call the same collectives",
                     rank, kind_name(kind_), finished_);
    }

protected:
    void enter(int rank) override {
        LocalComm& me = *comms_[size_t(rank)];
        me.turn = std::unique_lock<std::mutex>(mu_);
        if (aborted_) {
            me.turn.unlock();
            throw RankAborted(fmt::format("rank {}: another rank of the local group failed", rank));
        }
        cuda::check(cudaSetDevice(device_), "local rank group: selecting the device");
    }
    void start() override {
        std::lock_guard<std::mutex> lk(mu_);
        finished_ = 0;
        arrived_ = 0;
    }
    void leave(int rank) override {
        LocalComm& me = *comms_[size_t(rank)];
        if (!me.turn.owns_lock()) me.turn = std::unique_lock<std::mutex>(mu_);
        ++finished_;
        cv_.notify_all();
        me.turn.unlock();
    }
    void abort() override {
        std::lock_guard<std::mutex> lk(mu_);
        aborted_ = true;
        cv_.notify_all();
    }

private:
    void perform() {
        const size_t es = dtype_size(dtype_), bytes = size_t(count_) * es;
        cudaStream_t s = stream_;
        if (kind_ == Kind::Barrier) {  // every rank's work is on this one stream
            cuda::check(cudaStreamSynchronize(s), "local barrier");
            return;
        }
        if (count_ == 0) return;
        if (kind_ == Kind::AllReduce) {
            // Into a scratch buffer first: recv may alias a send buffer of this or another rank.
            cuda::DTensor tmp = cuda::DTensor::empty({count_}, dtype_);
            Sources src{};
            for (int r = 0; r < world_; ++r) src.p[r] = send_[size_t(r)];
            const unsigned blocks = unsigned((count_ + 255) / 256);
            const bool max = op_ == ReduceOp::Max;
            if (dtype_ == DType::F32)
                reduce_f32_kernel<<<blocks, 256, 0, s>>>(src, world_, tmp.data<float>(), count_, max);
            else if (dtype_ == DType::BF16)
                reduce_bf16_kernel<<<blocks, 256, 0, s>>>(src, world_, tmp.data<__nv_bfloat16>(), count_, max);
            else
                reduce_i32_kernel<<<blocks, 256, 0, s>>>(src, world_, tmp.data<int32_t>(), count_, max);
            cuda::check(cudaGetLastError(), "local all_reduce");
            for (int r = 0; r < world_; ++r)
                cuda::check(cudaMemcpyAsync(recv_[size_t(r)], tmp.raw(), bytes, cudaMemcpyDeviceToDevice, s),
                            "local all_reduce");
        } else if (kind_ == Kind::AllGather) {
            for (int src = 0; src < world_; ++src)
                for (int r = 0; r < world_; ++r) {
                    void* dst = static_cast<uint8_t*>(recv_[size_t(r)]) + size_t(src) * bytes;
                    if (dst != send_[size_t(src)])
                        cuda::check(cudaMemcpyAsync(dst, send_[size_t(src)], bytes, cudaMemcpyDeviceToDevice, s),
                                    "local all_gather");
                }
        } else {
            for (int src = 0; src < world_; ++src)
                for (int r = 0; r < world_; ++r)
                    cuda::check(cudaMemcpyAsync(static_cast<uint8_t*>(recv_[size_t(r)]) + size_t(src) * bytes,
                                                static_cast<const uint8_t*>(send_[size_t(src)]) + size_t(r) * bytes,
                                                bytes, cudaMemcpyDeviceToDevice, s),
                                "local all_to_all");
        }
    }

    int world_, device_;
    cudaStream_t stream_ = nullptr;
    std::vector<std::unique_ptr<LocalComm>> comms_;
    std::mutex mu_;
    std::condition_variable cv_;
    int arrived_ = 0, finished_ = 0;  // ranks waiting in the current collective / returned from fn
    uint64_t generation_ = 0;
    bool aborted_ = false;
    Kind kind_ = Kind::Barrier;
    int64_t count_ = 0;
    DType dtype_ = DType::F32;
    ReduceOp op_ = ReduceOp::Sum;
    const void* send_[kMaxLocalWorld] = {};
    void* recv_[kMaxLocalWorld] = {};
};

int LocalComm::world() const { return g_->world(); }
int LocalComm::device() const { return g_->device(); }
cudaStream_t LocalComm::stream() const { return g_->stream(); }
void LocalComm::all_reduce(const void* send, void* recv, int64_t count, DType dtype, ReduceOp op, cudaStream_t s) {
    g_->collective(rank_, Kind::AllReduce, send, recv, count, dtype, op, s);
}
void LocalComm::all_gather(const void* send, void* recv, int64_t count, DType dtype, cudaStream_t s) {
    g_->collective(rank_, Kind::AllGather, send, recv, count, dtype, ReduceOp::Sum, s);
}
void LocalComm::all_to_all(const void* send, void* recv, int64_t count, DType dtype, cudaStream_t s) {
    if (send == recv && count > 0 && world() > 1)
        raise<UsageError>("local rank group: all_to_all cannot run in place (rank {})", rank_);
    g_->collective(rank_, Kind::AllToAll, send, recv, count, dtype, ReduceOp::Sum, s);
}
void LocalComm::barrier(cudaStream_t s) { g_->collective(rank_, Kind::Barrier, nullptr, nullptr, 0, DType::F32, ReduceOp::Sum, s); }

}  // namespace

std::unique_ptr<RankGroup> RankGroup::local(int world, int device) {
    return std::make_unique<LocalGroup>(world, device);
}

}  // namespace qdit::parallel
