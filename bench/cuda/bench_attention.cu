// Qwen-Image's joint attention alone (24 heads × 128, q|k|v strided as the fused projection writes
// them, the CFG batch of 2), in the ways it could be called: one unpadded call per item (what the
// model does), one padded cuDNN call for both items (items S rows apart, or S rounded up to 128),
// the same with both items full length, and for timing alone unpadded calls at lengths rounded up
// to 64 or 128 (their extra rows are random tokens: a wrong result, the cost of an aligned length).
// Random bf16 inputs, variants interleaved in rounds, each timed as bench_gemm times a kernel
// (bench/cuda/timing.h: median of back-to-back calls after 150 ms of them). Run on the GPU.
//
//   bench_attention [--image 4096] [--text 16,3] [--rounds 5] [--iters 20]
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/attention.h"
#include "bench/cuda/timing.h"

using namespace qdit;

int main(int argc, char** argv) {
    int64_t image = 4096, t0 = 16, t1 = 3;
    int rounds = 5, iters = 20;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string a = argv[i], v = argv[i + 1];
        if (a == "--image") image = std::stoll(v);
        else if (a == "--text") std::sscanf(v.c_str(), "%ld,%ld", &t0, &t1);
        else if (a == "--rounds") rounds = std::stoi(v);
        else if (a == "--iters") iters = std::stoi(v);
        else {
            std::fprintf(stderr, "unknown flag %s\n", a.c_str());
            return 2;
        }
    }
    const int64_t H = 24, hd = 128, D = H * hd, ld = 3 * D;
    const int64_t S = image + std::max(t0, t1), len0 = image + t0, len1 = image + t1;
    auto up = [](int64_t n, int64_t m) { return (n + m - 1) / m * m; };
    const int64_t Sa = up(S, 128);  // the buffer's item stride, which fits every variant's items
    const cudaStream_t st = nullptr;  // the default stream, which time_median records on
    std::vector<__nv_bfloat16> host(size_t(2 * Sa * ld));
    std::mt19937 rng(1);
    std::normal_distribution<float> nd(0.f, 1.f);
    for (auto& x : host) x = __float2bfloat16(nd(rng));
    __nv_bfloat16 *qkv, *o;
    int32_t *lens, *full;
    CK(cudaMalloc(&qkv, host.size() * 2));
    CK(cudaMalloc(&o, size_t(2 * Sa * D) * 2));
    CK(cudaMalloc(&lens, 8));
    CK(cudaMalloc(&full, 8));
    CK(cudaMemcpy(qkv, host.data(), host.size() * 2, cudaMemcpyHostToDevice));
    const int32_t l[2] = {int32_t(len0), int32_t(len1)}, f[2] = {int32_t(S), int32_t(S)};
    CK(cudaMemcpy(lens, l, 8, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(full, f, 8, cudaMemcpyHostToDevice));
    auto item = [&](int64_t b) { return qkv + b * Sa * ld; };
    auto per_item = [&](int64_t n0, int64_t n1) {
        for (int64_t b = 0; b < 2; ++b)
            cuda::attention(item(b), ld, item(b) + D, ld, item(b) + 2 * D, ld, o + b * Sa * D, D, b ? n1 : n0, H, hd,
                            st);
    };

    struct Variant {
        const char* name;
        double flop;  // useful work: 4·hd·len² per head and item
        std::function<void()> run;
        std::vector<double> ms;
    };
    const double w = 4.0 * double(hd) * double(H);
    const double useful = w * double(len0 * len0 + len1 * len1);
    std::vector<Variant> vs = {
        {"two unpadded calls, one per item (the model)", useful, [&] { per_item(len0, len1); }},
        {"padded batch of 2", useful,
         [&] { cuda::attention_padded(qkv, ld, qkv + D, ld, qkv + 2 * D, ld, o, D, 2, S, lens, H, H, hd, st); }},
        {"padded batch of 2, items 128-row aligned", useful,
         [&] { cuda::attention_padded(qkv, ld, qkv + D, ld, qkv + 2 * D, ld, o, D, 2, Sa, lens, H, H, hd, st); }},
        {"padded batch of 2, both full length", w * double(2 * S * S),
         [&] { cuda::attention_padded(qkv, ld, qkv + D, ld, qkv + 2 * D, ld, o, D, 2, S, full, H, H, hd, st); }},
        {"per item, lengths up to 64 (timing only)", useful, [&] { per_item(up(len0, 64), up(len1, 64)); }},
        {"per item, lengths up to 128 (timing only)", useful, [&] { per_item(up(len0, 128), up(len1, 128)); }},
        {"image tokens only, two unpadded calls", w * double(2 * image * image), [&] { per_item(image, image); }},
    };
    cudaDeviceProp p;
    cudaGetDeviceProperties(&p, 0);
    std::printf("%s; %ld image + %ld / %ld text tokens, %ld heads x %ld, %d rounds x %d calls\n", p.name, image, t0, t1,
                H, hd, rounds, iters);
    for (int r = 0; r < rounds; ++r)
        for (auto& v : vs) v.ms.push_back(time_median([&](int) { v.run(); }, 3, iters));
    for (auto& v : vs) {
        std::string each;
        for (double m : v.ms) each += (each.empty() ? "" : " / ") + std::to_string(m * 1000).substr(0, 5);
        std::sort(v.ms.begin(), v.ms.end());
        const double med = v.ms[v.ms.size() / 2];
        std::printf("%-46s median %7.1f us  %6.1f TFLOP/s  (rounds: %s us)\n", v.name, med * 1000,
                    v.flop / (med * 1e-3) / 1e12, each.c_str());
    }
    return 0;
}
