// One Qwen-Image DiT step on the GPU at the published config (60 dual-stream blocks, width 3072,
// 24 heads) with random weights ~ N(0, 0.02) made on the GPU: 1024x1024 (a 64x64 grid of packed
// 2x2 latents, 4096 image tokens) + text tokens, a batch of 2 (true CFG's prompt and negative
// prompt, --text 256,40 by default: the shorter one's text padded, masked), bf16 / int8 (default
// plan: attention and MLP W8A8, img_mod / txt_mod weight-only) / int8 with img_mlp kept. Prints ms/step (median of --steps
// after warm-up, CUDA events; the inputs and the output on the device, as in the pipeline), the
// allocator's weight / activation / peak bytes, a hash of the output and, after the bf16
// mode, each mode's SQNR against the bf16 output (same seed: the same weights before quantization).
// The modes ending in -fp8-attention run the joint attention in FP8 (ops::AttentionImpl::Fp8).
//
// The blocks run as one CUDA graph (--graph 1, the default; 0: eager). --profile 1 times the
// model's regions (ops/profile.h: GPU time per region summed over the timed steps, graph off) and
// brackets the timed steps with cudaProfilerStart / Stop (for ncu --profile-from-start off).
// --kept-modulation 1 (the default, as the pipeline runs): the modulation Linears' outputs for a
// 50-step schedule are computed before the steps (QwenImageTransformer::set_timesteps, timed
// and printed) and each step reads them; 0: every step computes its modulation.
// --modulation-on-host 1: img_mod / txt_mod in pinned host memory (qwen_image::Placement, the
// pipeline's --offload modulation), uploaded block by block by set_timesteps.
//
//   bench_qwen_image_step [--steps N] [--layers N] [--graph 0|1] [--profile 0|1] [--kept-modulation 0|1]
//       [--modulation-on-host 0|1] [--text PROMPT_TOKENS,NEGATIVE_TOKENS]
//       [--mode bf16|int8|int8-keep-img-mlp|int8-fp8-attention|bf16-fp8-attention|all or a comma-separated list]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <cuda_profiler_api.h>

#include "backend/cuda/allocator.h"
#include "backend/cuda/device_tensor.h"
#include "bench/cuda/output_stats.h"
#include "models/qwen_image/transformer.h"
#include "ops/profile.h"

using namespace qdit;

namespace {

double gib(size_t b) { return double(b) / double(size_t(1) << 30); }

// Deterministic pseudo-random bf16 values in [-1, 1).
Tensor inputs(Shape shape, uint32_t seed) {
    Tensor t = Tensor::empty(std::move(shape), DType::BF16);
    uint32_t st = seed;
    for (int64_t i = 0; i < t.numel(); ++i) {
        st = st * 1664525u + 1013904223u;
        t.data<uint16_t>()[i] = f32_to_bf16(float(int32_t(st >> 8) - (1 << 23)) / float(1 << 23));
    }
    return t;
}

// The output of the bf16 run, which the later modes' SQNR is measured against (the same seed, so
// the same weights before quantization).
Tensor g_bf16_out;

void run(const std::string& mode, int steps, int64_t layers, bool graph, bool profile, bool kept, bool mod_host,
         int64_t t0, int64_t t1) {
    qwen_image::Config cfg;  // defaults are the published Qwen-Image config
    cfg.num_layers = layers;
    auto& alloc = cuda::Allocator::instance();
    alloc.empty_cache();
    const std::string fp8_suffix = "-fp8-attention";
    const bool fp8 = mode.size() > fp8_suffix.size() && mode.compare(mode.size() - fp8_suffix.size(), std::string::npos, fp8_suffix) == 0;
    const std::string base = fp8 ? mode.substr(0, mode.size() - fp8_suffix.size()) : mode;
    QuantConfig q;
    if (base != "bf16") q = QuantConfig{QuantMethod::Int8, {}, "dynamic"};
    if (base == "int8-keep-img-mlp") q.ignored_layers = {"img_mlp"};
    cudaStream_t s;
    cuda::check(cudaStreamCreate(&s), "stream");
    {
        qwen_image::QwenImageTransformer model({cfg, q, 42}, DType::BF16, ops::Context{{DeviceType::CUDA, 0}, s},
                                               qwen_image::Placement{mod_host});
        model.set_cuda_graph(graph);
        if (fp8) model.set_attention(ops::AttentionImpl::Fp8);
        const size_t wbytes = alloc.stats().weight;
        const int64_t B = 2, L = 64 * 64, T = std::max(t0, t1);
        // On the device, as the pipeline keeps them (the output stays there too).
        const ops::Context ctx{{DeviceType::CUDA, 0}, s};
        const Tensor hs = ops::to_device(inputs({B, L, cfg.in_channels}, 1), ctx),
                     enc = ops::to_device(inputs({B, T, cfg.joint_attention_dim}, 2), ctx);
        Tensor mask = Tensor::zeros({B, T}, DType::U8), t = Tensor::empty({B}, DType::F32);
        for (int64_t k = 0; k < t0; ++k) mask.data<uint8_t>()[k] = 1;      // the prompt's tokens
        for (int64_t k = 0; k < t1; ++k) mask.data<uint8_t>()[T + k] = 1;  // the negative prompt's
        t.data<float>()[0] = t.data<float>()[1] = 0.5f;
        std::string kept_note;
        if (kept) {  // as the pipeline: the modulation of a 50-step schedule (0.5 among its timesteps) kept
            std::vector<float> sched(50);
            for (size_t i = 0; i < sched.size(); ++i) sched[i] = 1.0f - float(i) / 50.0f;
            cuda::check(cudaStreamSynchronize(s), "set-up");
            const auto start = std::chrono::steady_clock::now();
            model.set_timesteps(sched);
            cuda::check(cudaStreamSynchronize(s), "set_timesteps");
            const double ms_kept =
                std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
            kept_note = fmt::format("; modulation of 50 steps kept in {:.1f} ms ({:.2f} ms per step, {:.0f} MiB)", ms_kept,
                                    ms_kept / 50, double(model.modulation_cache_bytes(50)) / double(1 << 20));
        }
        if (mod_host) kept_note += fmt::format("; modulation weights on the host {:.2f} GiB", gib(model.host_weight_bytes()));
        for (int i = 0; i < 2; ++i) model.forward(hs, enc, mask, t, {1, 64, 64});
        cuda::check(cudaStreamSynchronize(s), "warm-up");
        alloc.reset_peak();
        ops::Profile::enable(profile);
        ops::Profile::reset();
        cudaEvent_t e0, e1;
        cudaEventCreate(&e0);
        cudaEventCreate(&e1);
        std::vector<float> ms;
        Tensor out;
        if (profile) cudaProfilerStart();
        for (int i = 0; i < steps; ++i) {
            cudaEventRecord(e0, s);
            out = model.forward(hs, enc, mask, t, {1, 64, 64});
            cudaEventRecord(e1, s);
            cuda::check(cudaEventSynchronize(e1), "step");
            float v = 0;
            cudaEventElapsedTime(&v, e0, e1);
            ms.push_back(v);
        }
        if (profile) cudaProfilerStop();
        std::sort(ms.begin(), ms.end());
        const std::string regions = ops::Profile::report();
        ops::Profile::enable(false);
        const cuda::MemStats m = alloc.stats();
        out = ops::to_host(out, ctx);
        const bench::OutputStats st = bench::output_stats(out);
        if (mode == "bf16") g_bf16_out = out;
        const std::string vs_bf16 =
            mode != "bf16" && g_bf16_out.defined() ? fmt::format(", SQNR vs bf16 {:.2f} dB", bench::sqnr_db(g_bf16_out, out)) : "";
        std::printf("%-17s layers %lld: %.2f ms/step median of %d (min %.2f, max %.2f); int8 Linear %d; weights %.2f "
                    "GiB (model's count %.2f GiB), activations peak %.2f GiB, peak in use %.2f GiB; graph %s; output "
                    "rms %.4g%s, hash %016llx%s%s\n",
                    mode.c_str(), (long long)layers, ms[ms.size() / 2], steps, ms.front(), ms.back(),
                    model.int8_layers(), gib(wbytes), gib(model.weight_bytes()), gib(m.peak_activation), gib(m.peak),
                    graph && !profile ? "on" : "off", st.rms, st.finite ? "" : " NON-FINITE", (unsigned long long)st.hash,
                    vs_bf16.c_str(), kept_note.c_str());
        if (profile) std::printf("%s regions, %d steps:\n%s", mode.c_str(), steps, regions.c_str());
        cudaEventDestroy(e0);
        cudaEventDestroy(e1);
    }
    cudaStreamDestroy(s);
}

}  // namespace

int main(int argc, char** argv) {
    int steps = 5;
    int64_t layers = 60;
    std::string mode = "all";
    bool graph = true, profile = false, kept = true, mod_host = false;
    int64_t t0 = 256, t1 = 40;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!std::strcmp(argv[i], "--steps")) steps = std::max(1, std::atoi(argv[i + 1]));
        else if (!std::strcmp(argv[i], "--mode")) mode = argv[i + 1];
        else if (!std::strcmp(argv[i], "--layers")) layers = std::atoll(argv[i + 1]);
        else if (!std::strcmp(argv[i], "--graph")) graph = std::atoi(argv[i + 1]) != 0;
        else if (!std::strcmp(argv[i], "--profile")) profile = std::atoi(argv[i + 1]) != 0;
        else if (!std::strcmp(argv[i], "--kept-modulation")) kept = std::atoi(argv[i + 1]) != 0;
        else if (!std::strcmp(argv[i], "--modulation-on-host")) mod_host = std::atoi(argv[i + 1]) != 0;
        else if (!std::strcmp(argv[i], "--text")) {
            long long a = 0, b = 0;
            if (std::sscanf(argv[i + 1], "%lld,%lld", &a, &b) != 2 || a < 1 || b < 1) {
                std::fprintf(stderr, "bench_qwen_image_step: --text wants two token counts >= 1, e.g. 256,40\n");
                return 2;
            }
            t0 = a;
            t1 = b;
        }
    }
    try {
        // --mode: one mode, a comma-separated list of them (run in this order), or all.
        const std::string list = "," + mode + ",";
        for (const char* m : {"bf16", "int8", "int8-keep-img-mlp", "int8-fp8-attention", "bf16-fp8-attention"})
            if (mode == "all" || list.find("," + std::string(m) + ",") != std::string::npos)
                run(m, steps, layers, graph, profile, kept, mod_host, t0, t1);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_qwen_image_step: %s\n", e.what());
        return 1;
    }
    return 0;
}
