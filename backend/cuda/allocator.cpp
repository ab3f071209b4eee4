#include "backend/cuda/allocator.h"

#include <algorithm>
#include <type_traits>

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include "core/error.h"

namespace qdit::cuda {

// One device's weight arena: [base, base + va) reserved, [base, base + mapped) backed by physical
// memory (one handle per growth step), weights in [base, base + top) with free ranges in `holes`.
struct Allocator::Arena {
    CUdeviceptr base = 0;
    size_t va = 0, gran = 0, mapped = 0, top = 0;
    std::vector<std::pair<CUmemGenericAllocationHandle, size_t>> handles;  // in address order
    std::map<size_t, size_t> holes;                                         // offset -> size
    CUmemAllocationProp prop{};
    bool usable = false;
};

namespace {
constexpr size_t kWeightAlign = 256;

// The driver's virtual memory functions, looked up through the runtime so that programs do not
// link libcuda (they must start on machines without a driver, e.g. to list their tests). All null
// when the driver does not provide them.
struct VmmApi {
    PFN_cuDeviceGetAttribute_v2000 device_attribute = nullptr;
    PFN_cuMemGetAllocationGranularity_v10020 granularity = nullptr;
    PFN_cuMemAddressReserve_v10020 reserve = nullptr;
    PFN_cuMemCreate_v10020 create = nullptr;
    PFN_cuMemMap_v10020 map = nullptr;
    PFN_cuMemSetAccess_v10020 set_access = nullptr;
    PFN_cuMemUnmap_v10020 unmap = nullptr;
    PFN_cuMemRelease_v10020 release = nullptr;

    static const VmmApi& get() {
        static const VmmApi api = [] {
            VmmApi a;
            bool ok = true;
            auto load = [&](const char* name, auto& fn, unsigned version) {
                void* p = nullptr;
                cudaDriverEntryPointQueryResult st{};
                ok = ok && cudaGetDriverEntryPointByVersion(name, &p, version, cudaEnableDefault, &st) == cudaSuccess &&
                     st == cudaDriverEntryPointSuccess && p;
                fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(p);
            };
            load("cuDeviceGetAttribute", a.device_attribute, 2000);
            load("cuMemGetAllocationGranularity", a.granularity, 10020);
            load("cuMemAddressReserve", a.reserve, 10020);
            load("cuMemCreate", a.create, 10020);
            load("cuMemMap", a.map, 10020);
            load("cuMemSetAccess", a.set_access, 10020);
            load("cuMemUnmap", a.unmap, 10020);
            load("cuMemRelease", a.release, 10020);
            cudaGetLastError();
            return ok ? a : VmmApi();
        }();
        return api;
    }
    bool usable() const { return release != nullptr; }
};
}  // namespace

void* Allocator::arena_allocate(int dev, size_t size) {
    Arena*& a = arenas_[dev];
    if (!a) {
        a = new Arena();
        const VmmApi& vmm = VmmApi::get();
        int supported = 0;
        size_t free_b = 0, total = 0;
        cudaFree(nullptr);  // the runtime's primary context is current from here on
        if (vmm.usable() &&
            vmm.device_attribute(&supported, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, dev) ==
                CUDA_SUCCESS &&
            supported && cudaMemGetInfo(&free_b, &total) == cudaSuccess) {
            a->prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
            a->prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
            a->prop.location.id = dev;
            if (vmm.granularity(&a->gran, &a->prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM) == CUDA_SUCCESS && a->gran > 0) {
                a->va = (total + a->gran - 1) / a->gran * a->gran;
                a->usable = vmm.reserve(&a->base, a->va, 0, 0, 0) == CUDA_SUCCESS;
            }
        }
        cudaGetLastError();
    }
    if (!a->usable) return nullptr;
    const VmmApi& vmm = VmmApi::get();
    // First fit among the freed ranges.
    for (auto it = a->holes.begin(); it != a->holes.end(); ++it) {
        if (it->second < size) continue;
        const size_t off = it->first, rest = it->second - size;
        a->holes.erase(it);
        if (rest) a->holes[off + size] = rest;
        return reinterpret_cast<void*>(a->base + off);
    }
    if (a->top + size > a->va) return nullptr;
    if (a->top + size > a->mapped) {
        const size_t grow = (a->top + size - a->mapped + a->gran - 1) / a->gran * a->gran;
        CUmemGenericAllocationHandle h;
        CUresult r = vmm.create(&h, grow, &a->prop, 0);
        if (r == CUDA_ERROR_OUT_OF_MEMORY) {
            free_cached();
            r = vmm.create(&h, grow, &a->prop, 0);
        }
        if (r != CUDA_SUCCESS)
            raise<Error>("cuda allocator: cannot allocate {} bytes of weight memory: driver error {} ({} bytes in use, "
                         "{} reserved)",
                         grow, int(r), st_.weight + st_.activation, st_.reserved);
        CUmemAccessDesc access{};
        access.location = a->prop.location;
        access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
        if (vmm.map(a->base + a->mapped, grow, 0, h, 0) != CUDA_SUCCESS ||
            vmm.set_access(a->base + a->mapped, grow, &access, 1) != CUDA_SUCCESS) {
            vmm.unmap(a->base + a->mapped, grow);
            vmm.release(h);
            raise<Error>("cuda allocator: mapping {} bytes of weight memory failed", grow);
        }
        a->handles.emplace_back(h, grow);
        a->mapped += grow;
        ++st_.mallocs;
        st_.reserved += grow;
        st_.peak_reserved = std::max(st_.peak_reserved, st_.reserved);
    }
    void* p = reinterpret_cast<void*>(a->base + a->top);
    a->top += size;
    return p;
}

void Allocator::arena_release(int dev, void* p, size_t size) {
    Arena* a = arenas_.at(dev);
    size_t off = size_t(reinterpret_cast<CUdeviceptr>(p) - a->base);
    // Merge with the free neighbours.
    auto next = a->holes.lower_bound(off);
    if (next != a->holes.end() && next->first == off + size) {
        size += next->second;
        next = a->holes.erase(next);
    }
    if (next != a->holes.begin()) {
        auto prev = std::prev(next);
        if (prev->first + prev->second == off) {
            off = prev->first;
            size += prev->second;
            a->holes.erase(prev);
        }
    }
    if (off + size == a->top)
        a->top = off;
    else
        a->holes[off] = size;
    if (a->top > 0) return;
    // No weight left: the physical memory goes back (the address range stays reserved).
    size_t at = 0;
    const VmmApi& vmm = VmmApi::get();
    for (auto& [h, bytes] : a->handles) {
        vmm.unmap(a->base + at, bytes);
        vmm.release(h);
        at += bytes;
    }
    st_.reserved -= a->mapped;
    a->handles.clear();
    a->mapped = 0;
}

Allocator& Allocator::instance() {
    static Allocator* a = new Allocator();  // never destroyed: blocks may outlive static destructors
    return *a;
}

size_t Allocator::round_size(size_t bytes) {
    constexpr size_t kSmall = 512, kLarge = size_t(2) << 20;
    if (bytes == 0) bytes = 1;
    const size_t g = bytes < (size_t(1) << 20) ? kSmall : kLarge;
    return (bytes + g - 1) / g * g;
}

void* Allocator::allocate(size_t bytes, MemKind kind, const void* stream) {
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) raise<Error>("cuda allocator: no CUDA device");
    std::lock_guard<std::mutex> lk(mu_);
    if (kind == MemKind::Weight) {
        const size_t size = (std::max<size_t>(bytes, 1) + kWeightAlign - 1) / kWeightAlign * kWeightAlign;
        if (void* p = arena_allocate(dev, size)) {
            used_[p] = Block{size, kind, dev, true};
            st_.weight += size;
            st_.peak = std::max(st_.peak, st_.weight + st_.activation);
            return p;
        }
    }
    const size_t size = round_size(bytes);
    void* p = nullptr;
    auto take = [&p](std::vector<void*>& blocks) {
        if (blocks.empty()) return false;
        p = blocks.back();
        blocks.pop_back();
        return true;
    };
    auto it = free_.find({dev, size});
    auto its = holds_ > 0 && stream ? stream_free_.find({dev, stream, size}) : stream_free_.end();
    const bool cached = (it != free_.end() && take(it->second)) || (its != stream_free_.end() && take(its->second));
    if (!cached) {
        cudaError_t e = cudaMalloc(&p, size);
        if (e == cudaErrorMemoryAllocation) {
            // Give the cached blocks back and try once more.
            cudaGetLastError();
            free_cached();
            e = cudaMalloc(&p, size);
        }
        if (e != cudaSuccess) {
            cudaGetLastError();
            raise<Error>("cuda allocator: cudaMalloc of {} bytes failed: {} ({} bytes in use, {} reserved)",
                         size, cudaGetErrorString(e), st_.weight + st_.activation, st_.reserved);
        }
        ++st_.mallocs;
        st_.reserved += size;
        st_.peak_reserved = std::max(st_.peak_reserved, st_.reserved);
    }
    used_[p] = Block{size, kind, dev, false, stream, holds_ > 0 ? hold_id_ : 0};
    if (recording_) recorded_.push_back(p);
    (kind == MemKind::Weight ? st_.weight : st_.activation) += size;
    st_.peak_activation = std::max(st_.peak_activation, st_.activation);
    st_.peak = std::max(st_.peak, st_.weight + st_.activation);
    return p;
}

void Allocator::release(void* p) {
    if (!p) return;
    std::lock_guard<std::mutex> lk(mu_);
    auto it = used_.find(p);
    if (it == used_.end()) return;
    const Block b = it->second;
    const bool own = b.stream && b.hold != 0 && b.hold == hold_id_;  // allocated in this hold
    if (holds_ > 0 && !b.arena && !own) {
        held_.push_back(p);  // stays in used_ until hold_end()
        return;
    }
    used_.erase(it);
    (b.kind == MemKind::Weight ? st_.weight : st_.activation) -= b.size;
    if (b.arena)
        arena_release(b.device, p, b.size);
    else if (holds_ > 0)
        stream_free_[{b.device, b.stream, b.size}].push_back(p);
    else
        free_[{b.device, b.size}].push_back(p);
}

void Allocator::empty_cache() {
    std::lock_guard<std::mutex> lk(mu_);
    free_cached();
}

void Allocator::free_cached() {
    int cur = 0;
    cudaGetDevice(&cur);
    for (auto& [key, blocks] : free_) {
        cudaSetDevice(key.first);
        for (void* b : blocks) {
            cudaFree(b);
            st_.reserved -= key.second;
        }
    }
    cudaSetDevice(cur);
    free_.clear();
}

void Allocator::begin_record() {
    std::lock_guard<std::mutex> lk(mu_);
    recording_ = true;
    recorded_.clear();
}

std::vector<void*> Allocator::end_record() {
    std::lock_guard<std::mutex> lk(mu_);
    recording_ = false;
    std::vector<void*> held;
    std::sort(recorded_.begin(), recorded_.end());
    recorded_.erase(std::unique(recorded_.begin(), recorded_.end()), recorded_.end());
    for (void* p : recorded_) {
        if (used_.count(p)) continue;
        for (auto& [key, blocks] : free_) {
            auto it = std::find(blocks.begin(), blocks.end(), p);
            if (it == blocks.end()) continue;
            blocks.erase(it);
            used_[p] = Block{key.second, MemKind::Activation, key.first};
            st_.activation += key.second;
            st_.peak_activation = std::max(st_.peak_activation, st_.activation);
            st_.peak = std::max(st_.peak, st_.weight + st_.activation);
            held.push_back(p);
            break;
        }
    }
    recorded_.clear();
    return held;
}

void Allocator::hold_begin() {
    std::lock_guard<std::mutex> lk(mu_);
    if (holds_++ == 0) ++hold_id_;
}

void Allocator::hold_end() {
    std::vector<void*> ps;
    {
        std::lock_guard<std::mutex> lk(mu_);
        if (holds_ == 0 || --holds_ > 0) return;
        ps.swap(held_);
        for (auto& [key, blocks] : stream_free_) {
            auto& to = free_[{std::get<0>(key), std::get<2>(key)}];
            to.insert(to.end(), blocks.begin(), blocks.end());
        }
        stream_free_.clear();
    }
    for (void* p : ps) release(p);
}

MemStats Allocator::stats() const {
    std::lock_guard<std::mutex> lk(mu_);
    return st_;
}

void Allocator::reset_peak() {
    std::lock_guard<std::mutex> lk(mu_);
    st_.peak_activation = st_.activation;
    st_.peak = st_.weight + st_.activation;
    st_.peak_reserved = st_.reserved;
}

}  // namespace qdit::cuda
