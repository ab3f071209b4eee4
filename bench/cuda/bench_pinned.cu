// Page-locked host memory for weights kept on the host (Qwen-Image's modulation groups: 120 tensors
// of 3072 × 18432 int8, 6.3 GiB): the cost of getting N such buffers page-locked and filled from
// the device, in the ways it could be done. Variants, each over fresh memory (freed after):
//   host-alloc     cudaHostAlloc per tensor (what the load does), then the device-to-host copy
//   huge-register  mmap of 2 MiB-aligned memory, madvise(MADV_HUGEPAGE), cudaHostRegister, copy
//   populate       as huge-register, with the pages touched (MAP_POPULATE) before registering
// Prints seconds for allocation + page-locking and for the copies, and GB/s over the bytes. Run on
// the GPU machine: its kernel decides what huge pages and page-locking cost.
//
//   bench_pinned [--tensors 40] [--mib 54]
#include <sys/mman.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "bench/cuda/timing.h"

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

}  // namespace

int main(int argc, char** argv) {
    int tensors = 40;
    size_t mib = 54;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string a = argv[i];
        if (a == "--tensors") tensors = std::atoi(argv[i + 1]);
        else if (a == "--mib") mib = std::strtoull(argv[i + 1], nullptr, 10);
        else {
            std::fprintf(stderr, "unknown flag %s\n", a.c_str());
            return 2;
        }
    }
    const size_t bytes = mib << 20, huge = size_t(2) << 20, mapped = (bytes + huge - 1) / huge * huge;
    void* dev = nullptr;
    CK(cudaMalloc(&dev, bytes));
    CK(cudaMemset(dev, 1, bytes));
    cudaStream_t st;
    CK(cudaStreamCreate(&st));
    const double total = double(bytes) * tensors;
    std::printf("%d tensors of %zu MiB (%.2f GB)\n", tensors, mib, total / 1e9);
    for (const char* v : {"host-alloc", "huge-register", "populate", "host-alloc", "huge-register", "populate"}) {
        const std::string name = v;
        std::vector<void*> bufs, raws;
        double t_alloc = 0, t_copy = 0;
        for (int i = 0; i < tensors; ++i) {
            double t0 = now();
            void* p = nullptr;
            if (name == "host-alloc") {
                CK(cudaHostAlloc(&p, bytes, cudaHostAllocDefault));
            } else {
                const int flags = MAP_PRIVATE | MAP_ANONYMOUS | (name == "populate" ? MAP_POPULATE : 0);
                // Over-map by 2 MiB and keep an aligned window, so that whole huge pages back it.
                void* raw = mmap(nullptr, mapped + huge, PROT_READ | PROT_WRITE, flags, -1, 0);
                if (raw == MAP_FAILED) {
                    std::perror("mmap");
                    return 1;
                }
                raws.push_back(raw);
                p = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(raw) + huge - 1) / huge * huge);
                madvise(p, mapped, MADV_HUGEPAGE);
                CK(cudaHostRegister(p, mapped, cudaHostRegisterDefault));
            }
            const double t1 = now();
            CK(cudaMemcpyAsync(p, dev, bytes, cudaMemcpyDeviceToHost, st));
            CK(cudaStreamSynchronize(st));
            const double t2 = now();
            t_alloc += t1 - t0;
            t_copy += t2 - t1;
            bufs.push_back(p);
        }
        // A second copy into the same memory: the rate once the pages exist.
        const double t3 = now();
        for (void* p : bufs) CK(cudaMemcpyAsync(p, dev, bytes, cudaMemcpyDeviceToHost, st));
        CK(cudaStreamSynchronize(st));
        const double t_again = now() - t3;
        for (void* p : bufs) {
            if (name == "host-alloc") cudaFreeHost(p);
            else cudaHostUnregister(p);
        }
        for (void* r : raws) munmap(r, mapped + huge);
        std::printf("%-14s alloc + lock %6.3f s (%5.1f GB/s)  first copy %6.3f s (%5.1f GB/s)  copy again %6.3f s "
                    "(%5.1f GB/s)\n",
                    v, t_alloc, total / t_alloc / 1e9, t_copy, total / t_copy / 1e9, t_again, total / t_again / 1e9);
    }
    return 0;
}
