// One Z-Image transformer forward on the CPU at 256x256 (256 image tokens,
// 64 caption tokens) with real-width blocks (dim 3840, 30 heads, FFN 10240):
// one noise-refiner, one context-refiner and one main block, random weights.
// Compares f32, bf16 and int8 (default plan) compute. The label names the
// engines: oneDNN's matmul implementation for the dense layers (the large
// ones; ONEDNN_MAX_CPU_ISA limits it) and our int8 kernel path (QDIT_CPU_ISA).
#include <benchmark/benchmark.h>

#include <filesystem>
#include <random>
#include <string>

#include <oneapi/dnnl/dnnl.hpp>

#include "backend/cpu/int8_gemm.h"
#include "io/files.h"
#include "io/safetensors.h"
#include "models/zimage/transformer.h"
#include "models/loader.h"

namespace fs = std::filesystem;
using namespace qdit;

namespace {

const nlohmann::json kConfig = {
    {"_class_name", "ZImageTransformer2DModel"}, {"all_patch_size", {2}}, {"all_f_patch_size", {1}},
    {"in_channels", 16}, {"dim", 3840}, {"n_layers", 1}, {"n_refiner_layers", 1}, {"n_heads", 30},
    {"n_kv_heads", 30}, {"norm_eps", 1e-5}, {"qk_norm", true}, {"cap_feat_dim", 2560},
    {"rope_theta", 256.0}, {"t_scale", 1000.0}, {"axes_dims", {32, 48, 48}},
    {"axes_lens", {1536, 512, 512}}};

// Writes the checkpoint once per process into a temporary folder.
const std::string& model_dir() {
    static const std::string dir = [] {
        fs::path d = fs::temp_directory_path() / "qdit_bench_zimage";
        fs::remove_all(d);
        fs::create_directories(d);
        ModelSpec spec = model_spec_from_config(kConfig, "bench");
        std::mt19937 rng(7);
        std::vector<std::pair<std::string, Tensor>> ts;
        for (const ParamSpec& p : spec.params) {
            // Linear weights ~ U(-a, a) with the variance of N(0, 0.02²); norms near 1.
            bool norm = p.shape.size() == 1 && p.name.find("norm") != std::string::npos;
            std::uniform_real_distribution<float> u(-0.0346f, 0.0346f);
            Tensor t = Tensor::empty(p.shape, DType::BF16);
            for (int64_t i = 0; i < t.numel(); ++i)
                t.data<uint16_t>()[i] = f32_to_bf16(norm ? 1.f + u(rng) : u(rng));
            ts.emplace_back(p.name, t);
        }
        write_checkpoint(d.string(), "diffusion_pytorch_model", ts, size_t(1) << 32);
        write_file_atomic((d / "config.json").string(), kConfig.dump(2));
        return d.string();
    }();
    return dir;
}

// The implementation oneDNN picks for a dense Linear of this model (320 tokens,
// 3840 -> 3840, weights [N, K] as nn::Linear passes them).
std::string onednn_matmul_impl(DType compute) {
    using md = dnnl::memory::desc;
    using tag = dnnl::memory::format_tag;
    const auto t = compute == DType::BF16 ? dnnl::memory::data_type::bf16 : dnnl::memory::data_type::f32;
    const int64_t m = 320, k = 3840, n = 3840;
    dnnl::engine eng(dnnl::engine::kind::cpu, 0);
    const dnnl::matmul::desc d(md({m, k}, t, tag::ab), md({k, n}, t, tag::ba), md({m, n}, t, tag::ab));
    return dnnl::matmul::primitive_desc(d, eng).impl_info_str();
}

void BM_ZImageForward(benchmark::State& state, DType compute, QuantMethod method) {
    PreparedModel m = prepare_model(model_dir(), QuantConfig{method, {}, "dynamic"});
    zimage::ZImageTransformer model(m, compute);
    std::mt19937 rng(1);
    std::normal_distribution<float> n;
    Tensor x = Tensor::empty({16, 1, 32, 32}, DType::F32);  // 256x256 image: 32x32 latent
    Tensor cap = Tensor::empty({64, 2560}, DType::F32);
    for (Tensor* t : {&x, &cap})
        for (int64_t i = 0; i < t->numel(); ++i) t->data<float>()[i] = n(rng);
    Tensor t = Tensor::empty({1}, DType::F32);
    t.data<float>()[0] = 0.5f;
    for (auto _ : state) benchmark::DoNotOptimize(model.forward({x}, t, {cap}));
    state.counters["int8_layers"] = m.plan.quantized_count();
    std::string label = "dense: oneDNN " + onednn_matmul_impl(compute);
    if (method == QuantMethod::Int8) label += std::string(", int8: ") + cpu::isa_name(cpu::best_isa());
    state.SetLabel(label);
}

}  // namespace

BENCHMARK_CAPTURE(BM_ZImageForward, f32, DType::F32, QuantMethod::None)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_ZImageForward, bf16, DType::BF16, QuantMethod::None)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_ZImageForward, int8, DType::BF16, QuantMethod::Int8)->Unit(benchmark::kMillisecond)->UseRealTime();

BENCHMARK_MAIN();
