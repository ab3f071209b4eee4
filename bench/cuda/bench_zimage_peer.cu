// qdit's half of the side-by-side benchmark (bench/peers/run.sh): one Z-Image DiT step on the GPU
// from a real checkpoint folder (the one diffusers saved), on inputs saved by the Python side.
//
//   bench_zimage_peer --model DIR --inputs FILE --out FILE [--steps N] [--warmup N] [--mode bf16|int8|both]
//                   [--graph 0|1]
//
// inputs: x bf16 [C, F, H, W], t f32 [1] (1 - sigma), cap_feats bf16 [L, cap_feat_dim] (batch 1).
// For each mode the model is loaded with prepare_model (bf16: no quantization; int8: the default
// plan), run once through forward() for the output (written to --out as "<mode>" bf16 [C, F, H, W]),
// then timed: forward_tokens on device-resident patches, CUDA events, median of --steps after
// --warmup steps; --graph 1 (default) runs the blocks as one CUDA graph (set_cuda_graph). One line
// per mode starts with "QDIT_RESULT " followed by JSON.
#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "backend/cuda/allocator.h"
#include "backend/cuda/attention.h"
#include "backend/cuda/device_tensor.h"
#include "io/safetensors.h"
#include "models/zimage/transformer.h"
#include "models/loader.h"

using namespace qdit;

namespace {

double gib(size_t b) { return double(b) / double(size_t(1) << 30); }

// Token (f, h, w) holds (pf, ph, pw, c) with c fastest: the layout forward() builds (patch 2, frame patch 1).
Tensor patchify(const Tensor& x, int64_t p) {
    const int64_t C = x.size(0), F = x.size(1), H = x.size(2), W = x.size(3);
    const int64_t gh = H / p, gw = W / p, pd = p * p * C;
    Tensor xf = x.to(DType::F32);
    Tensor out = Tensor::empty({F * gh * gw, pd}, DType::F32);
    for (int64_t tok = 0; tok < F * gh * gw; ++tok) {
        const int64_t f = tok / (gh * gw), h = (tok / gw) % gh, w = tok % gw;
        for (int64_t e = 0; e < pd; ++e) {
            const int64_t c = e % C, pw = (e / C) % p, ph = e / (C * p);
            out.data<float>()[tok * pd + e] = xf.data<float>()[((c * F + f) * H + h * p + ph) * W + w * p + pw];
        }
    }
    return out.to(DType::BF16);
}

Tensor run(const std::string& mode, const std::string& dir, const Tensor& x, const Tensor& t, const Tensor& cap,
           int steps, int warmup, bool graph) {
    auto& alloc = cuda::Allocator::instance();
    alloc.empty_cache();
    const QuantConfig q = mode == "int8" ? QuantConfig{QuantMethod::Int8, {}, "dynamic"} : QuantConfig{};
    cudaStream_t s;
    cuda::check(cudaStreamCreate(&s), "stream");
    Tensor y;
    {
        const PreparedModel m = prepare_model(dir, q);
        const size_t w0 = alloc.stats().weight;
        zimage::ZImageTransformer model(m, DType::BF16, ops::Context{{DeviceType::CUDA, 0}, s});
        model.set_cuda_graph(graph);  // forward() below captures; the timed steps replay
        cuda::check(cudaStreamSynchronize(s), "load");
        const size_t wbytes = alloc.stats().weight - w0;

        y = model.forward({x}, t, {cap})[0];  // the output compared with diffusers

        const std::array<int64_t, 3> grid{x.size(1), x.size(2) / 2, x.size(3) / 2};
        cuda::DTensor dp = cuda::DTensor::upload(patchify(x, 2), cuda::MemKind::Activation, s);
        cuda::DTensor dc = cuda::DTensor::upload(cap.to(DType::BF16), cuda::MemKind::Activation, s);
        const float tv = t.data<float>()[0];
        for (int i = 0; i < warmup; ++i) model.forward_tokens(dp.as_tensor(), grid, dc.as_tensor(), tv);
        cuda::check(cudaStreamSynchronize(s), "warm-up");
        alloc.reset_peak();
        cudaEvent_t e0, e1;
        cuda::check(cudaEventCreate(&e0), "event");
        cuda::check(cudaEventCreate(&e1), "event");
        std::vector<float> ms;
        for (int i = 0; i < steps; ++i) {
            cudaEventRecord(e0, s);
            Tensor out = model.forward_tokens(dp.as_tensor(), grid, dc.as_tensor(), tv);
            cudaEventRecord(e1, s);
            cuda::check(cudaEventSynchronize(e1), "step");
            float v = 0;
            cudaEventElapsedTime(&v, e0, e1);
            ms.push_back(v);
        }
        cuda::check(cudaGetLastError(), "steps");
        std::sort(ms.begin(), ms.end());
        const cuda::MemStats st = alloc.stats();
        std::printf("QDIT_RESULT {\"mode\": \"%s\", \"ms_median\": %.3f, \"ms_min\": %.3f, \"ms_max\": %.3f, "
                    "\"steps\": %d, \"int8_layers\": %d, \"linear_layers\": %d, \"weight_gib\": %.4f, "
                    "\"peak_gib\": %.4f, \"peak_reserved_gib\": %.4f, \"attention\": \"%s\", \"cuda_graph\": %d}\n",
                    mode.c_str(), ms[ms.size() / 2], ms.front(), ms.back(), steps, model.int8_layers(),
                    model.linear_layers(), gib(wbytes), gib(st.peak), gib(st.peak_reserved),
                    cuda::attention_impl_name(), graph ? 1 : 0);
        std::fflush(stdout);
        cudaEventDestroy(e0);
        cudaEventDestroy(e1);
    }
    cuda::check(cudaStreamDestroy(s), "stream");
    return y;
}

}  // namespace

int main(int argc, char** argv) {
    std::string model, inputs, out, mode = "both";
    int steps = 10, warmup = 3;
    bool graph = true;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string a = argv[i];
        if (a == "--model") model = argv[i + 1];
        else if (a == "--inputs") inputs = argv[i + 1];
        else if (a == "--out") out = argv[i + 1];
        else if (a == "--mode") mode = argv[i + 1];
        else if (a == "--steps") steps = std::max(1, std::atoi(argv[i + 1]));
        else if (a == "--warmup") warmup = std::max(0, std::atoi(argv[i + 1]));
        else if (a == "--graph") graph = std::atoi(argv[i + 1]) != 0;
    }
    if (model.empty() || inputs.empty() || out.empty()) {
        std::fprintf(stderr, "usage: bench_zimage_peer --model DIR --inputs FILE --out FILE [--steps N] "
                             "[--warmup N] [--mode bf16|int8|both] [--graph 0|1]\n");
        return 2;
    }
    try {
        SafetensorsFile in(inputs);
        const Tensor x = in.get("x"), t = in.get("t").to(DType::F32), cap = in.get("cap_feats");
        std::vector<std::pair<std::string, Tensor>> results;
        for (const char* m : {"bf16", "int8"})
            if (mode == "both" || mode == m) results.emplace_back(m, run(m, model, x, t, cap, steps, warmup, graph));
        write_safetensors(out, results);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_zimage_peer: %s\n", e.what());
        return 1;
    }
    return 0;
}
