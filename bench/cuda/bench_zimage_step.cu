// One Z-Image-Turbo DiT step on the GPU at the real config (dim 3840, 30 layers, 2 + 2 refiners,
// 30 heads) with random weights ~ N(0, 0.02) generated on the GPU: 1024x1024 (64x64 = 4096 image
// tokens) + 512 caption tokens, batch 1, bf16 and int8 (default plan), int8 with FP8 attention
// (ops::AttentionImpl::Fp8). Prints ms/step (median of --steps after warm-up, CUDA events), the
// allocator's weight / activation / peak bytes and, after the bf16 mode, each mode's SQNR against it.
//
//   bench_zimage_step [--steps N] [--mode bf16|int8|int8-fp8-attention|both, or a comma-separated list]
//       [--layers N] [--caption N] [--profile 1] [--graph 0|1]
//
// --caption N: caption tokens (default 512; a pipeline's prompt is usually far shorter, and its
// step is this one with that caption length).
//
// The model is zimage::ZImageTransformer (written on the op layer) on a CUDA context. --graph 1
// (default) runs the blocks as one CUDA graph (set_cuda_graph), captured in the warm-up. The output
// hash (bench/cuda/output_stats.h) identifies the output bit for bit across builds.
//
// --profile 1 brackets the timed steps with cudaProfilerStart / Stop, so that
// `ncu --profile-from-start off` sees only those kernels (bench/cuda/NOTES.md, "profile").
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <cuda_profiler_api.h>
#include <fmt/format.h>

#include <stdexcept>

#include "backend/cuda/attention.h"
#include "backend/cuda/device_tensor.h"
#include "bench/cuda/output_stats.h"
#include "bench/cuda/zimage_step_inputs.h"
#include "models/zimage/transformer.h"

using namespace qdit;

namespace {

double gib(size_t b) { return double(b) / double(size_t(1) << 30); }

// The bf16 mode's output, which later modes' SQNR is measured against (same seed: same weights
// before quantization).
Tensor g_bf16_out;

void run(const std::string& mode, int steps, int64_t layers, int64_t caption, bool profile, bool graph) {
    zimage::Config cfg;  // defaults are Z-Image-Turbo's
    cfg.n_layers = layers;
    auto& alloc = cuda::Allocator::instance();
    alloc.empty_cache();
    const bool fp8 = mode == "int8-fp8-attention";
    const QuantConfig q = mode != "bf16" ? QuantConfig{QuantMethod::Int8, {}, "dynamic"} : QuantConfig{};
    cudaStream_t s;
    cuda::check(cudaStreamCreate(&s), "stream");
    {
        zimage::ZImageTransformer model({cfg, q, 42}, DType::BF16, ops::Context{{DeviceType::CUDA, 0}, s});
        model.set_cuda_graph(graph);
        if (fp8) model.set_attention(ops::AttentionImpl::Fp8);
        auto forward = [&](const cuda::DTensor& p, const cuda::DTensor& c) {
            return model.forward_tokens(p.as_tensor(), {1, 64, 64}, c.as_tensor(), 0.5f);
        };
        const size_t wbytes = alloc.stats().weight;
        const bench::ZImageStepInputs in = bench::zimage_step_inputs(cfg, caption);
        const Tensor &p = in.patches, &c = in.caption;
        cuda::DTensor dp = cuda::DTensor::upload(p, cuda::MemKind::Activation, s);
        cuda::DTensor dc = cuda::DTensor::upload(c, cuda::MemKind::Activation, s);

        for (int i = 0; i < 3; ++i) forward(dp, dc);
        cuda::check(cudaStreamSynchronize(s), "warm-up");
        alloc.reset_peak();
        cudaEvent_t e0, e1;
        cudaEventCreate(&e0);
        cudaEventCreate(&e1);
        std::vector<float> ms;
        std::vector<double> host_ms;  // time to enqueue one step (host side of forward_tokens)
        Tensor out;
        if (profile) cudaProfilerStart();
        for (int i = 0; i < steps; ++i) {
            cudaEventRecord(e0, s);
            const auto h0 = std::chrono::steady_clock::now();
            out = forward(dp, dc);
            host_ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - h0).count());
            cudaEventRecord(e1, s);
            cuda::check(cudaEventSynchronize(e1), "step");
            float t = 0;
            cudaEventElapsedTime(&t, e0, e1);
            ms.push_back(t);
        }
        if (profile) cudaProfilerStop();
        std::sort(ms.begin(), ms.end());
        std::sort(host_ms.begin(), host_ms.end());
        const cuda::MemStats m = alloc.stats();
        const Tensor host_out = cuda::DTensor::of(out).download(s);
        const bench::OutputStats st = bench::output_stats(host_out);
        if (mode == "bf16") g_bf16_out = host_out;
        const std::string sqnr = mode != "bf16" && g_bf16_out.defined()
                                     ? fmt::format(", SQNR vs bf16 {:.2f} dB", bench::sqnr_db(g_bf16_out, host_out))
                                     : "";
        std::printf("%-5s layers %lld, caption %lld: %.2f ms/step median of %d (min %.2f, max %.2f); int8 Linear %d of %d; "
                    "weights %.2f GiB (model's count %.2f GiB), activations peak %.2f GiB, peak in use %.2f GiB, "
                    "reserved peak %.2f GiB; attention %s, graph %s; output rms %.4g%s, hash %016llx%s; host enqueue %.2f ms/step (median)\n",
                    mode.c_str(), (long long)layers, (long long)caption, ms[ms.size() / 2], steps, ms.front(), ms.back(),
                    model.int8_layers(), model.linear_layers(), gib(wbytes), gib(model.weight_bytes()),
                    gib(m.peak_activation), gib(m.peak), gib(m.peak_reserved), fp8 ? "fp8" : cuda::attention_impl_name(),
                    graph ? "on" : "off", st.rms, st.finite ? "" : " NON-FINITE", (unsigned long long)st.hash,
                    sqnr.c_str(), host_ms[host_ms.size() / 2]);
        cudaEventDestroy(e0);
        cudaEventDestroy(e1);
    }
    cudaStreamDestroy(s);
}

}  // namespace

int main(int argc, char** argv) {
    int steps = 10;
    int64_t layers = 30, caption = 512;
    std::string mode = "both";
    bool profile = false, graph = true;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!std::strcmp(argv[i], "--steps")) steps = std::max(1, std::atoi(argv[i + 1]));
        else if (!std::strcmp(argv[i], "--mode")) mode = argv[i + 1];
        else if (!std::strcmp(argv[i], "--layers")) layers = std::atoll(argv[i + 1]);
        else if (!std::strcmp(argv[i], "--caption")) caption = std::max<int64_t>(1, std::atoll(argv[i + 1]));
        else if (!std::strcmp(argv[i], "--profile")) profile = std::atoi(argv[i + 1]) != 0;
        else if (!std::strcmp(argv[i], "--graph")) graph = std::atoi(argv[i + 1]) != 0;
    }
    try {
        // --mode: one mode, a comma-separated list of them (run in this order), or both (bf16,int8).
        const std::string list = "," + (mode == "both" ? std::string("bf16,int8") : mode) + ",";
        for (const char* m : {"bf16", "int8", "int8-fp8-attention"})
            if (list.find("," + std::string(m) + ",") != std::string::npos) run(m, steps, layers, caption, profile, graph);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_zimage_step: %s\n", e.what());
        return 1;
    }
    return 0;
}
