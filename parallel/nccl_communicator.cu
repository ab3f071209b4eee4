// The NCCL rank group (parallel/communicator.h): one rank per GPU, one process, libnccl.so.2
// loaded at run time.
#include "parallel/communicator.h"

#include <cstdlib>
#include <mutex>
#include <set>

#include "backend/cuda/device_tensor.h"
#include "backend/cuda/quantize.h"

#if QDIT_WITH_NCCL
#include <dlfcn.h>
#include <nccl.h>
#endif

namespace qdit::parallel {

#if QDIT_WITH_NCCL

namespace {

// The NCCL entry points qdit uses, looked up in the library loaded at run time.
struct NcclApi {
    decltype(&ncclGetVersion) GetVersion = nullptr;
    decltype(&ncclGetErrorString) GetErrorString = nullptr;
    decltype(&ncclCommInitAll) CommInitAll = nullptr;
    decltype(&ncclCommDestroy) CommDestroy = nullptr;
    decltype(&ncclCommAbort) CommAbort = nullptr;
    decltype(&ncclAllReduce) AllReduce = nullptr;
    decltype(&ncclAllGather) AllGather = nullptr;
    decltype(&ncclSend) Send = nullptr;
    decltype(&ncclRecv) Recv = nullptr;
    decltype(&ncclGroupStart) GroupStart = nullptr;
    decltype(&ncclGroupEnd) GroupEnd = nullptr;
    int version = 0;
    std::string path;   // the library that was loaded
    std::string error;  // why loading failed (empty on success)
};

const char* library_hint() {
    return "set QDIT_NCCL_LIBRARY to a libnccl.so.2 (for example the one of the nvidia-nccl-cu13 Python "
           "package, <site-packages>/nvidia/nccl/lib/libnccl.so.2) or add its folder to LD_LIBRARY_PATH";
}

const NcclApi& api() {
    static const NcclApi a = [] {
        NcclApi r;
        std::vector<std::string> candidates;
        if (const char* env = std::getenv("QDIT_NCCL_LIBRARY"); env && *env) {
            candidates.push_back(env);  // an explicit choice: no fallback
        } else {
            candidates.push_back("libnccl.so.2");
#ifdef QDIT_NCCL_FETCHED_LIBRARY
            candidates.push_back(QDIT_NCCL_FETCHED_LIBRARY);
#endif
        }
        void* lib = nullptr;
        std::string tried;
        for (const std::string& c : candidates) {
            lib = dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL);
            if (lib) {
                r.path = c;
                break;
            }
            const char* e = dlerror();
            tried += fmt::format("{}{} ({})", tried.empty() ? "" : "; ", c, e ? e : "not found");
        }
        if (!lib) {
            r.error = fmt::format("cannot load NCCL: tried {}; {}", tried, library_hint());
            return r;
        }
        bool ok = true;
        auto sym = [&](auto& fn, const char* name) {
            fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, name));
            if (!fn) {
                if (ok) r.error = fmt::format("{} lacks the NCCL function {} (NCCL too old?)", r.path, name);
                ok = false;
            }
        };
        sym(r.GetVersion, "ncclGetVersion");
        sym(r.GetErrorString, "ncclGetErrorString");
        sym(r.CommInitAll, "ncclCommInitAll");
        sym(r.CommDestroy, "ncclCommDestroy");
        sym(r.CommAbort, "ncclCommAbort");
        sym(r.AllReduce, "ncclAllReduce");
        sym(r.AllGather, "ncclAllGather");
        sym(r.Send, "ncclSend");
        sym(r.Recv, "ncclRecv");
        sym(r.GroupStart, "ncclGroupStart");
        sym(r.GroupEnd, "ncclGroupEnd");
        if (ok && r.GetVersion(&r.version) != ncclSuccess) {
            r.error = fmt::format("{}: ncclGetVersion failed", r.path);
            ok = false;
        }
        // bf16 reductions arrived in NCCL 2.10 (version code 21000).
        if (ok && r.version < 21000) {
            r.error = fmt::format("{} is NCCL {}, qdit needs 2.10 or newer", r.path, r.version);
            ok = false;
        }
        if (!ok) r.GetVersion = nullptr;
        return r;
    }();
    return a;
}

const NcclApi& loaded_api() {
    const NcclApi& a = api();
    if (!a.GetVersion) raise<Error>("{}", a.error);
    return a;
}

void check(ncclResult_t st, const char* what, int rank) {
    if (st != ncclSuccess)
        raise<Error>("NCCL {} failed on rank {}: {}", what, rank, api().GetErrorString(st));
}

ncclDataType_t nccl_type(DType t, const char* what) {
    switch (t) {
        case DType::F32: return ncclFloat32;
        case DType::I32: return ncclInt32;
        case DType::BF16: return ncclBfloat16;
        case DType::F16: return ncclFloat16;
        case DType::I8: return ncclInt8;
        case DType::U8: return ncclUint8;
        default: raise<UsageError>("NCCL {}: unsupported dtype {}", what, dtype_name(t));
    }
}

class NcclGroup;

class NcclComm final : public Communicator {
public:
    NcclComm(int rank, int world, int device, ncclComm_t comm, cudaStream_t s)
        : comm_(comm), rank_(rank), world_(world), device_(device), stream_(s) {}
    int rank() const override { return rank_; }
    int world() const override { return world_; }
    int device() const override { return device_; }
    cudaStream_t stream() const override { return stream_; }

    void all_reduce(const void* send, void* recv, int64_t count, DType dtype, ReduceOp op, cudaStream_t s) override {
        if (dtype != DType::F32 && dtype != DType::I32 && dtype != DType::BF16)
            raise<UsageError>("NCCL all_reduce of {} (F32, I32 or BF16)", dtype_name(dtype));
        check(api().AllReduce(send, recv, size_t(count), nccl_type(dtype, "all_reduce"),
                              op == ReduceOp::Max ? ncclMax : ncclSum, comm_, s),
              "all_reduce", rank_);
    }
    void all_gather(const void* send, void* recv, int64_t count, DType dtype, cudaStream_t s) override {
        check(api().AllGather(send, recv, size_t(count), nccl_type(dtype, "all_gather"), comm_, s), "all_gather",
              rank_);
    }
    void all_to_all(const void* send, void* recv, int64_t count, DType dtype, cudaStream_t s) override {
        const ncclDataType_t t = nccl_type(dtype, "all_to_all");
        const size_t bytes = size_t(count) * dtype_size(dtype);
        // Point-to-point pairs in one NCCL group (NCCL runs them concurrently).
        check(api().GroupStart(), "all_to_all (group start)", rank_);
        for (int peer = 0; peer < world_; ++peer) {
            check(api().Send(static_cast<const uint8_t*>(send) + size_t(peer) * bytes, size_t(count), t, peer, comm_, s),
                  "all_to_all (send)", rank_);
            check(api().Recv(static_cast<uint8_t*>(recv) + size_t(peer) * bytes, size_t(count), t, peer, comm_, s),
                  "all_to_all (recv)", rank_);
        }
        check(api().GroupEnd(), "all_to_all (group end)", rank_);
    }
    void barrier(cudaStream_t s) override {
        if (!flag_.defined()) flag_ = cuda::DTensor::zeros({1}, DType::I32, cuda::MemKind::Activation, s);
        all_reduce(flag_.raw(), flag_.raw(), 1, DType::I32, ReduceOp::Sum, s);
        cuda::check(cudaStreamSynchronize(s), "NCCL barrier");
    }

    ncclComm_t comm_;

private:
    int rank_, world_, device_;
    cudaStream_t stream_;
    cuda::DTensor flag_;
};

class NcclGroup final : public RankGroup {
public:
    explicit NcclGroup(const std::vector<int>& devices) : devices_(devices) {
        const NcclApi& a = loaded_api();
        const int W = int(devices.size());
        std::vector<ncclComm_t> comms(size_t(W), nullptr);
        check(a.CommInitAll(comms.data(), W, devices.data()), "ncclCommInitAll", 0);
        for (int r = 0; r < W; ++r) {
            cuda::check(cudaSetDevice(devices[size_t(r)]), "NCCL rank group: selecting the device");
            cudaStream_t s = nullptr;
            cuda::check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "NCCL rank group: stream");
            comms_.push_back(std::make_unique<NcclComm>(r, W, devices[size_t(r)], comms[size_t(r)], s));
        }
        cuda::check(cudaSetDevice(devices[0]), "NCCL rank group: selecting the device");
    }
    ~NcclGroup() override {
        for (auto& c : comms_) {
            cudaSetDevice(c->device());
            cudaStreamSynchronize(c->stream());
            if (!aborted_) api().CommDestroy(c->comm_);
            cudaStreamDestroy(c->stream());
        }
        if (!devices_.empty()) cudaSetDevice(devices_[0]);
    }
    int world() const override { return int(comms_.size()); }
    const char* backend() const override { return "nccl"; }
    Communicator& comm(int rank) override { return *comms_.at(size_t(rank)); }

protected:
    void enter(int rank) override {
        cuda::check(cudaSetDevice(devices_[size_t(rank)]), "NCCL rank group: selecting the device");
    }
    void leave(int) override {}
    void abort() override {
        std::lock_guard<std::mutex> lk(mu_);
        if (aborted_) return;
        aborted_ = true;
        for (auto& c : comms_) api().CommAbort(c->comm_);
    }

private:
    std::vector<int> devices_;
    std::vector<std::unique_ptr<NcclComm>> comms_;
    std::mutex mu_;
    bool aborted_ = false;
};

}  // namespace

std::unique_ptr<RankGroup> RankGroup::nccl(const std::vector<int>& devices) {
    const int n = cuda::device_count();
    if (devices.empty()) raise<UsageError>("NCCL rank group: no devices given");
    std::set<int> seen;
    for (int d : devices) {
        if (d < 0 || d >= n)
            raise<UsageError>("NCCL rank group: CUDA device {} does not exist ({} visible{})", d, n,
                              n ? fmt::format(": 0..{}", n - 1) : std::string());
        if (!seen.insert(d).second) raise<UsageError>("NCCL rank group: device {} is listed twice", d);
    }
    return std::make_unique<NcclGroup>(devices);
}

bool nccl_available(std::string* why) {
    const NcclApi& a = api();
    if (!a.GetVersion && why) *why = a.error;
    return a.GetVersion != nullptr;
}

#else  // !QDIT_WITH_NCCL

std::unique_ptr<RankGroup> RankGroup::nccl(const std::vector<int>&) {
    raise<UsageError>("this build of qdit has no NCCL support (configure with the CUDA backend and nccl.h: "
                      "scripts/fetch-headers.sh nccl, -DQDIT_NCCL=ON)");
}

bool nccl_available(std::string* why) {
    if (why) *why = "this build of qdit has no NCCL support (scripts/fetch-headers.sh nccl, -DQDIT_NCCL=ON)";
    return false;
}

#endif

}  // namespace qdit::parallel
