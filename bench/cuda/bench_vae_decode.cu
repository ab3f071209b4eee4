// The FLUX AutoencoderKL decoder of Z-Image on the GPU at full size: the config of
// tests/data/vae/published/config.json with random weights, 16 x 128 x 128 latents → a 1024 x 1024
// uint8 image, bf16. Prints cuDNN's start-up, the first decode (which builds the convolution plans),
// the best and mean of 5 decodes after it (CUDA events), a hash of the decoded bf16 image (equal
// hashes: bit-identical outputs, bench/cuda/output_stats.h), the allocator's memory figures and the
// plans the largest convolutions got. Run from the repository root.
//
//   bench_vae_decode [--config PATH]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <tuple>

#include "backend/cuda/allocator.h"
#include "backend/cuda/conv.h"
#include "backend/cuda/device_tensor.h"
#include "bench/cuda/output_stats.h"
#include "io/files.h"
#include "models/vae/autoencoder_kl.h"
#include "ops/context.h"

using namespace qdit;
using cuda::DTensor;
using cuda::MemKind;

namespace {

Tensor random_tensor(Shape shape, uint32_t seed, float stddev = 1.0f) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist(0.f, stddev);
    Tensor t = Tensor::empty(std::move(shape), DType::F32);
    for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = dist(rng);
    return t;
}

double ms_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

double mib(size_t b) { return double(b) / 1048576.0; }

}  // namespace

int main(int argc, char** argv) {
    std::string path = "tests/data/vae/published/config.json";
    for (int i = 1; i < argc; ++i) {
        if (!std::strcmp(argv[i], "--config") && i + 1 < argc) {
            path = argv[++i];
        } else {
            std::fprintf(stderr, "usage: %s [--config PATH]\n", argv[0]);
            return 2;
        }
    }
    try {
        const vae::Config cfg = vae::Config::from_json(read_json_file(path), path);
        cudaStream_t s;
        cuda::check(cudaStreamCreate(&s), "stream");
        {
            auto& alloc = cuda::Allocator::instance();
            const ops::Context ctx{{DeviceType::CUDA, 0}, s};
            const vae::AutoencoderKL m = vae::AutoencoderKL::random(cfg, DType::BF16, 1, ctx);
            const int64_t h = 128, w = 128;
            const Tensor z = ops::to_device(random_tensor({1, cfg.latent_channels, h, w}, 3).to(DType::BF16), ctx);
            cudaEvent_t e0, e1;
            cudaEventCreate(&e0);
            cudaEventCreate(&e1);
            auto decode_ms = [&] {
                cudaEventRecord(e0, s);
                const Tensor u8 = m.decode_to_u8(z);
                cudaEventRecord(e1, s);
                cuda::check(cudaEventSynchronize(e1), "decode");
                float ms = 0;
                cudaEventElapsedTime(&ms, e0, e1);
                return ms;
            };
            {  // cuDNN's handle and libraries load on the first convolution: time that apart
                const auto t0 = std::chrono::steady_clock::now();
                cuda::Conv2d c("warmup", random_tensor({8, 8, 1, 1}, 4), Tensor(), 0, DType::BF16, s);
                c.forward(DTensor::zeros({1, 2, 2, 8}, DType::BF16, MemKind::Activation, s), s);
                cudaStreamSynchronize(s);
                std::printf("cuDNN start-up (handle, first plan): %.0f ms\n", ms_since(t0));
            }
            const auto t0 = std::chrono::steady_clock::now();
            decode_ms();
            std::printf("vae decode bf16 1024x1024, first call (builds the plans): %.0f ms\n", ms_since(t0));
            alloc.reset_peak();
            float best = 1e30f, sum = 0;
            for (int i = 0; i < 5; ++i) {
                const float ms = decode_ms();
                best = std::min(best, ms);
                sum += ms;
            }
            const cuda::MemStats st = alloc.stats();
            std::printf("vae decode bf16 1024x1024: best %.2f ms, mean %.2f ms of 5; weights %.1f MiB; peak in use "
                        "%.1f MiB (activations %.1f MiB); reserved %.1f MiB\n",
                        best, sum / 5, mib(m.weight_bytes()), mib(st.peak), mib(st.peak_activation), mib(st.reserved));
            {
                const bench::OutputStats os = bench::output_stats(ops::to_host(m.decode(z), ctx));
                std::printf("vae decode output (bf16 image before postprocess): hash %016llx rms %.6f%s\n",
                            (unsigned long long)os.hash, os.rms, os.finite ? "" : " NON-FINITE");
            }
            // The plans the largest layers got.
            for (auto [cin, cout, res] : {std::tuple<int64_t, int64_t, int64_t>{128, 128, 1024}, {256, 256, 512},
                                          {512, 512, 256}, {512, 512, 128}, {128, 3, 1024}, {16, 512, 128}}) {
                cuda::Conv2d c("probe", random_tensor({cout, cin, 3, 3}, 5, 0.05f), random_tensor({cout}, 6), 1,
                               DType::BF16, s);
                std::printf("    conv %lld->%lld at %lld^2: %s\n", (long long)cin, (long long)cout, (long long)res,
                            c.plan_info(1, res, res).c_str());
            }
            size_t free_b = 0, total_b = 0;
            cudaMemGetInfo(&free_b, &total_b);
            std::printf("device memory used %.1f MiB of %.1f MiB\n", mib(total_b - free_b), mib(total_b));
            cudaEventDestroy(e0);
            cudaEventDestroy(e1);
        }
        cudaStreamDestroy(s);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return 0;
}
