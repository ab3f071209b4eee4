// The Qwen-Image VAE decoder (AutoencoderKLQwenImage) on the GPU at full size: the published config
// (tests/data/qwen_image_vae/published/config.json) with random bf16 weights written to a scratch
// folder, 16 x 128 x 128 latents → a 1024 x 1024 image, bf16. For the whole decode (one piece) and
// for decoding in bands of rows (decode's automatic choice, and the --rows given): the first decode
// (which builds that shape's convolution plans), the best and mean of 5 after it (CUDA events), the
// allocator's peak of activations during them, and a hash of the bf16 image (equal hashes: the same
// bits, bench/cuda/output_stats.h). Run from the repository root.
//
//   bench_qwen_vae_decode [--config PATH] [--rows N,...] [--size PIXELS]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/allocator.h"
#include "backend/cuda/device_tensor.h"
#include "bench/cuda/output_stats.h"
#include "io/files.h"
#include "io/safetensors.h"
#include "models/vae/autoencoder_kl_qwenimage.h"
#include "ops/context.h"

using namespace qdit;
namespace fs = std::filesystem;

namespace {

double mib(size_t b) { return double(b) / 1048576.0; }

// A folder with the config and random decoder weights: conv weights ~ N(0, 1 / fan_in), biases
// ~ N(0, 0.02), RMS norm gammas ~ N(1, 0.02), all bf16.
std::string write_random_vae(const std::string& config_path) {
    const nlohmann::json j = read_json_file(config_path);
    const vae::QwenImageVaeConfig cfg = vae::QwenImageVaeConfig::from_json(j, config_path);
    const fs::path dir = fs::temp_directory_path() / "qdit_bench_qwen_vae";
    fs::create_directories(dir);
    write_file_atomic((dir / "config.json").string(), j.dump());
    std::mt19937 rng(7);
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (const ParamSpec& p : vae::model_spec(cfg).params) {
        Tensor t = Tensor::empty(p.shape, DType::F32);
        const bool gamma = p.name.find("gamma") != std::string::npos, bias = p.name.find(".bias") != std::string::npos;
        int64_t fan_in = 1;
        for (size_t d = 1; d < p.shape.size(); ++d) fan_in *= p.shape[d];
        std::normal_distribution<float> dist(gamma ? 1.0f : 0.0f,
                                             gamma || bias ? 0.02f : float(1.0 / std::sqrt(double(fan_in))));
        for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = dist(rng);
        tensors.emplace_back(p.name, t.to(DType::BF16));
    }
    write_safetensors((dir / "diffusion_pytorch_model.safetensors").string(), tensors);
    return dir.string();
}

}  // namespace

int main(int argc, char** argv) {
    std::string path = "tests/data/qwen_image_vae/published/config.json";
    std::vector<int64_t> rows_list;
    int64_t size = 1024;
    for (int i = 1; i < argc; ++i) {
        if (!std::strcmp(argv[i], "--config") && i + 1 < argc) {
            path = argv[++i];
        } else if (!std::strcmp(argv[i], "--rows") && i + 1 < argc) {
            for (const char* s = argv[++i]; *s;) {
                rows_list.push_back(std::strtoll(s, const_cast<char**>(&s), 10));
                if (*s == ',') ++s;
            }
        } else if (!std::strcmp(argv[i], "--size") && i + 1 < argc) {
            size = std::atoll(argv[++i]);
        } else {
            std::fprintf(stderr, "usage: %s [--config PATH] [--rows N,...] [--size PIXELS]\n", argv[0]);
            return 2;
        }
    }
    try {
        const std::string dir = write_random_vae(path);
        cudaStream_t s;
        cuda::check(cudaStreamCreate(&s), "stream");
        {
            auto& alloc = cuda::Allocator::instance();
            const ops::Context ctx{{DeviceType::CUDA, 0}, s};
            const vae::AutoencoderKLQwenImage m(dir, DType::BF16, ctx);
            const int64_t h = size / m.config().spatial_scale(), w = h;
            Tensor z = Tensor::empty({1, m.config().z_dim, h, w}, DType::F32);
            std::mt19937 rng(3);
            std::normal_distribution<float> dist(0.f, 1.f);
            for (int64_t i = 0; i < z.numel(); ++i) z.data<float>()[i] = dist(rng);
            std::printf("Qwen-Image VAE decode, bf16, %lldx%lld, weights %.1f MiB; automatic bands of %lld rows of %lld\n",
                        (long long)size, (long long)size, mib(m.weight_bytes()), (long long)m.band_rows(1, h, w),
                        (long long)h);
            std::vector<int64_t> all{h, 0};
            all.insert(all.end(), rows_list.begin(), rows_list.end());
            for (int64_t rows : all) {
                cudaEvent_t e0, e1;
                cudaEventCreate(&e0);
                cudaEventCreate(&e1);
                Tensor image;
                auto decode_ms = [&] {
                    cudaEventRecord(e0, s);
                    image = m.decode(z, rows);  // ends with the copy to the host
                    cudaEventRecord(e1, s);
                    cuda::check(cudaEventSynchronize(e1), "decode");
                    float ms = 0;
                    cudaEventElapsedTime(&ms, e0, e1);
                    return ms;
                };
                const auto t0 = std::chrono::steady_clock::now();
                decode_ms();
                const double first =
                    std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
                alloc.empty_cache();
                alloc.reset_peak();
                const size_t base = alloc.stats().activation;
                float best = 1e30f, sum = 0;
                for (int i = 0; i < 5; ++i) {
                    const float ms = decode_ms();
                    best = std::min(best, ms);
                    sum += ms;
                }
                const cuda::MemStats st = alloc.stats();
                const bench::OutputStats os = bench::output_stats(image);
                std::printf("  %-22s first %7.0f ms, best %7.2f ms, mean %7.2f ms; activations peak %7.1f MiB; hash "
                            "%016llx rms %.6f\n",
                            rows == h ? "one piece" : rows == 0 ? "bands (automatic)"
                                                                : ("bands of " + std::to_string(rows) + " rows").c_str(),
                            first, best, sum / 5, mib(st.peak_activation - base), (unsigned long long)os.hash, os.rms);
                cudaEventDestroy(e0);
                cudaEventDestroy(e1);
            }
        }
        cudaStreamDestroy(s);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return 0;
}
