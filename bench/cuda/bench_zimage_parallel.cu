// One Z-Image-Turbo DiT step split over several GPUs (tensor or sequence parallelism over NCCL) at
// the real config with random weights, 1024x1024 (4096 image tokens) + 512 caption tokens, batch 1,
// bf16 and int8 (default plan). Prints ms/step (median wall time of --steps after warm-up, from a
// barrier before the step to a barrier after it, which waits for every GPU) and per GPU the weight
// bytes of its part and the device memory in use (cudaMemGetInfo: weights, activations, caches,
// NCCL buffers and the CUDA context).
//
//   bench_zimage_parallel [--gpus N] [--parallel tensor|sequence|both] [--mode bf16|int8|both]
//                         [--steps N] [--layers N] [--local 1]
//
// --gpus defaults to every visible GPU. --local 1 runs N ranks on GPU 0 through the local test group
// instead of NCCL: a functional check on one GPU, its times are not multi-GPU times.
// Each rank draws its own random part, so outputs are not comparable across splits (the tests
// compare splits on real checkpoints); CUDA graphs are off for split models.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "backend/cuda/attention.h"
#include "backend/cuda/device_tensor.h"
#include "backend/cuda/quantize.h"
#include "bench/cuda/zimage_step_inputs.h"
#include "models/zimage/transformer_parallel.h"
#include "parallel/communicator.h"

using namespace qdit;

namespace {

double gib(size_t b) { return double(b) / double(size_t(1) << 30); }

void run(parallel::RankGroup& group, zimage::ParallelMode mode, const std::string& quant, int steps, int64_t layers) {
    zimage::Config cfg;  // defaults are Z-Image-Turbo's
    cfg.n_layers = layers;
    const QuantConfig q = quant == "int8" ? QuantConfig{QuantMethod::Int8, {}, "dynamic"} : QuantConfig{};
    const int W = group.world();
    const bench::ZImageStepInputs in = bench::zimage_step_inputs(cfg);
    const Tensor &p = in.patches, &c = in.caption;

    std::vector<double> ms;
    std::vector<size_t> weights(static_cast<size_t>(W)), used(static_cast<size_t>(W));
    std::vector<double> rms(static_cast<size_t>(W));
    int int8_layers = 0, linear_layers = 0;
    group.run([&](parallel::Communicator& comm) {
        const int r = comm.rank();
        cudaStream_t s = comm.stream();
        zimage::ZImageTransformer model({cfg, q, 42}, DType::BF16,
                                        zimage::ZImageTransformerParallel::rank_context(comm, mode));
        weights[size_t(r)] = model.weight_bytes();
        if (r == 0) {
            int8_layers = model.int8_layers();
            linear_layers = model.linear_layers();
        }
        cuda::DTensor dp = cuda::DTensor::upload(p, cuda::MemKind::Activation, s);
        cuda::DTensor dc = cuda::DTensor::upload(c, cuda::MemKind::Activation, s);
        Tensor out;
        for (int i = 0; i < 2; ++i) out = model.forward_tokens(dp.as_tensor(), {1, 64, 64}, dc.as_tensor(), 0.5f);
        for (int i = 0; i < steps; ++i) {
            comm.barrier(s);
            const auto t0 = std::chrono::steady_clock::now();
            out = model.forward_tokens(dp.as_tensor(), {1, 64, 64}, dc.as_tensor(), 0.5f);
            comm.barrier(s);
            if (r == 0) ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
        }
        size_t free_b = 0, total_b = 0;
        cuda::check(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
        used[size_t(r)] = total_b - free_b;
        Tensor o = cuda::DTensor::of(out).download(s).to(DType::F32);
        double ss = 0;
        for (int64_t i = 0; i < o.numel(); ++i) ss += double(o.data<float>()[i]) * o.data<float>()[i];
        rms[size_t(r)] = std::sqrt(ss / double(o.numel()));
    });
    std::sort(ms.begin(), ms.end());
    std::printf("%s %s=%d layers %lld: %.2f ms/step median of %d (min %.2f, max %.2f); int8 Linear %d of %d; "
                "attention %s; output rms %.4g\n",
                quant.c_str(), mode == zimage::ParallelMode::Tensor ? "TP" : "SP", W, (long long)layers,
                ms[ms.size() / 2], steps, ms.front(), ms.back(), int8_layers, linear_layers,
                cuda::attention_impl_name(), rms[0]);
    for (int r = 0; r < W; ++r)
        std::printf("  rank %d (GPU %d): weights %.2f GiB, device memory in use %.2f GiB%s\n", r,
                    group.comm(r).device(), gib(weights[size_t(r)]), gib(used[size_t(r)]),
                    std::string(group.backend()) == "local" ? " (all ranks on this GPU)" : "");
}

}  // namespace

int main(int argc, char** argv) {
    int steps = 10, gpus = 0;
    int64_t layers = 30;
    bool local = false;
    std::string quant = "both", split = "both";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!std::strcmp(argv[i], "--steps")) steps = std::max(1, std::atoi(argv[i + 1]));
        else if (!std::strcmp(argv[i], "--gpus")) gpus = std::atoi(argv[i + 1]);
        else if (!std::strcmp(argv[i], "--mode")) quant = argv[i + 1];
        else if (!std::strcmp(argv[i], "--parallel")) split = argv[i + 1];
        else if (!std::strcmp(argv[i], "--layers")) layers = std::atoll(argv[i + 1]);
        else if (!std::strcmp(argv[i], "--local")) local = std::atoi(argv[i + 1]) != 0;
        else {
            std::fprintf(stderr, "bench_zimage_parallel: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    try {
        if (gpus <= 0) gpus = cuda::device_count();
        if (gpus < 1) throw Error("no CUDA device is visible");
        std::unique_ptr<parallel::RankGroup> group;
        if (local) {
            group = parallel::RankGroup::local(gpus, 0);
        } else {
            std::vector<int> devices(static_cast<size_t>(gpus));
            std::iota(devices.begin(), devices.end(), 0);
            group = parallel::RankGroup::nccl(devices);
        }
        for (const char* sp : {"tensor", "sequence"}) {
            if (split != "both" && split != sp) continue;
            const auto mode = std::string(sp) == "tensor" ? zimage::ParallelMode::Tensor : zimage::ParallelMode::Sequence;
            for (const char* qm : {"bf16", "int8"})
                if (quant == "both" || quant == qm) run(*group, mode, qm, steps, layers);
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_zimage_parallel: %s\n", e.what());
        return 1;
    }
    return 0;
}
