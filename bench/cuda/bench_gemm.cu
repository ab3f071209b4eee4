// GPU GEMM benchmark: qdit int8 W8A8 GEMM (CUTLASS, fused per-token x per-channel scales + bias,
// bf16 out) vs cuBLASLt bf16 (bias epilogue), plus the per-token quantization pass that feeds the
// int8 GEMM. Shapes: the 8 of shared/reference/h100-measured.md (Z-Image / Qwen-Image Linears).
//
// Timing: CUDA events around each launch, median of --iters (default 60) after --warmup (10);
// inputs rotate over several buffer sets (>= 256 MB per operand kind, > 5x the 50 MB L2) so that
// L2 does not hold the operands between launches; random data (never zeros).
//
//   bench_gemm [--iters N] [--warmup N] [--all-kernels 0|1] [--shape MxKxN]...
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "backend/cuda/lt_gemm.h"
#include "backend/cuda/int8_gemm.h"
#include "backend/cuda/quantize.h"
#include "bench/cuda/timing.h"

namespace {

struct Shape {
    int64_t m, k, n;
};

// Fill with random data on the device (a cheap hash; never zeros).
__global__ void fill_i8(int8_t* p, size_t n, uint32_t seed) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
        uint32_t h = uint32_t(i) * 2654435761u ^ seed;
        h ^= h >> 15;
        h *= 2246822519u;
        h ^= h >> 13;
        p[i] = int8_t(int(h % 255u) - 127);
    }
}
__global__ void fill_bf16(__nv_bfloat16* p, size_t n, uint32_t seed, float scale) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
        uint32_t h = uint32_t(i) * 2654435761u ^ seed;
        h ^= h >> 15;
        h *= 2246822519u;
        h ^= h >> 13;
        const float u = (float(h & 0xFFFFFF) / 16777216.f) * 2.f - 1.f;  // (-1, 1)
        p[i] = __float2bfloat16(scale * (u + (u >= 0 ? 0.01f : -0.01f)));
    }
}
__global__ void fill_f32(float* p, size_t n, uint32_t seed, float lo, float hi) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
        uint32_t h = uint32_t(i) * 2654435761u ^ seed;
        h ^= h >> 15;
        h *= 2246822519u;
        h ^= h >> 13;
        p[i] = lo + (hi - lo) * (float(h & 0xFFFFFF) / 16777216.f);
    }
}

template <class T>
T* dalloc(size_t n) {
    void* p = nullptr;
    CK(cudaMalloc(&p, n * sizeof(T)));
    return static_cast<T*>(p);
}


int sets_for(size_t bytes_per_set) {
    const size_t target = size_t(256) << 20;
    return int(std::min<size_t>(8, std::max<size_t>(2, (target + bytes_per_set - 1) / bytes_per_set)));
}

}  // namespace

int run(int argc, char** argv) {
    int iters = 60, warmup = 10;
    bool all_kernels = true, sweep = false;
    std::vector<Shape> shapes;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "--iters" && i + 1 < argc) iters = std::atoi(argv[++i]);
        else if (a == "--warmup" && i + 1 < argc) warmup = std::atoi(argv[++i]);
        else if (a == "--all-kernels" && i + 1 < argc) all_kernels = std::atoi(argv[++i]) != 0;
        else if (a == "--sweep") sweep = true;
        else if (a == "--shape" && i + 1 < argc) {
            Shape s{};
            if (std::sscanf(argv[++i], "%ldx%ldx%ld", &s.m, &s.k, &s.n) != 3) {
                std::fprintf(stderr, "bad --shape (MxKxN)\n");
                return 2;
            }
            shapes.push_back(s);
        } else {
            std::fprintf(stderr, "usage: %s [--iters N] [--warmup N] [--all-kernels 0|1] [--sweep] [--shape MxKxN]...\n", argv[0]);
            return 2;
        }
    }
    if (shapes.empty())
        shapes = {{4608, 3840, 3840},  {4608, 3840, 11520}, {4608, 10240, 3840}, {4608, 3840, 10240},
                  {4224, 3072, 3072},  {4224, 3072, 12288}, {4224, 12288, 3072}, {8192, 8192, 8192}};

    int dev = 0, drv = 0, rt = 0;
    CK(cudaGetDevice(&dev));
    cudaDeviceProp prop{};
    CK(cudaGetDeviceProperties(&prop, dev));
    CK(cudaDriverGetVersion(&drv));
    CK(cudaRuntimeGetVersion(&rt));
    std::printf("device: %s, cc %d.%d, %d SMs, L2 %d MB; driver API %d, runtime %d\n", prop.name, prop.major,
                prop.minor, prop.multiProcessorCount, prop.l2CacheSize >> 20, drv, rt);

    // Ceiling 1: device-to-device copy bandwidth (bytes read + written), 1 GiB.
    {
        const size_t bytes = size_t(1) << 30;
        char* src = dalloc<char>(bytes);
        char* dst = dalloc<char>(bytes);
        CK(cudaMemset(src, 1, bytes));
        const double ms = time_median([&](int) { CK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice)); }, 3, 20);
        std::printf("copy bandwidth: %.0f GB/s (read + write)\n", 2.0 * double(bytes) / (ms * 1e-3) / 1e9);
        CK(cudaFree(src));
        CK(cudaFree(dst));
    }

    std::vector<qdit::cuda::Int8GemmKernel> variants = {qdit::cuda::Int8GemmKernel::Auto};
    if (all_kernels)
        for (auto k : qdit::cuda::int8_gemm_kernels())
            if (qdit::cuda::int8_gemm_kernel_available(k)) variants.push_back(k);

    struct Row {
        Shape s;
        double int8_auto_ms, int8_best_ms, bf16_ms, quant_ms;
        std::string best;
    };
    std::vector<Row> rows;
    for (const Shape& s : shapes) {
        const size_t mk = size_t(s.m * s.k), nk = size_t(s.n * s.k), mn = size_t(s.m * s.n);
        const int nset = sets_for(std::min(mk, nk));  // the smaller int8 operand decides
        const size_t mp = (size_t(s.m) + 3) / 4 * 4;  // a set's row scales, 16-byte aligned for any M
        int8_t* A = dalloc<int8_t>(mk * nset);
        int8_t* W = dalloc<int8_t>(nk * nset);
        __nv_bfloat16* X = dalloc<__nv_bfloat16>(mk * nset);
        __nv_bfloat16* WB = dalloc<__nv_bfloat16>(nk * nset);
        __nv_bfloat16* BB = dalloc<__nv_bfloat16>(size_t(s.n));
        float* SX = dalloc<float>(mp * nset);
        float* SW = dalloc<float>(size_t(s.n) * nset);
        float* B = dalloc<float>(size_t(s.n));
        __nv_bfloat16* Y = dalloc<__nv_bfloat16>(mn);
        fill_i8<<<1024, 256>>>(A, mk * nset, 1);
        fill_i8<<<1024, 256>>>(W, nk * nset, 2);
        fill_bf16<<<1024, 256>>>(X, mk * nset, 3, 4.f);
        fill_bf16<<<1024, 256>>>(WB, nk * nset, 4, 0.05f);
        fill_bf16<<<1024, 256>>>(BB, size_t(s.n), 5, 1.f);
        fill_f32<<<256, 256>>>(SX, mp * nset, 6, 1e-3f, 5e-2f);
        fill_f32<<<256, 256>>>(SW, size_t(s.n) * nset, 7, 1e-4f, 1e-2f);
        fill_f32<<<256, 256>>>(B, size_t(s.n), 8, -1.f, 1.f);
        CK(cudaGetLastError());
        CK(cudaDeviceSynchronize());

        Row r{s, 0, 1e30, 0, 0, ""};
        auto int8_ms = [&](qdit::cuda::Int8GemmKernel kv, qdit::cuda::Int8GemmTuning tu) {
            return time_median(
                [&](int i) {
                    const int j = i % nset;
                    qdit::cuda::int8_gemm_bf16(A + mk * j, s.k, SX + mp * j, W + nk * j, s.k, SW + size_t(s.n) * j,
                                               B, Y, s.n, s.m, s.n, s.k, nullptr, kv, tu);
                },
                warmup, iters);
        };
        auto bf16_ms = [&] {
            return time_median(
                [&](int i) {
                    const int j = i % nset;
                    qdit::cuda::bf16_gemm(X + mk * j, s.k, WB + nk * j, s.k, BB, Y, s.n, s.m, s.n, s.k, nullptr);
                },
                warmup, iters);
        };
        auto quant_ms = [&](int nv) {
            return time_median(
                [&](int i) {
                    const int j = i % nset;
                    if (nv < 0)
                        CK(qdit::cuda::quantize_rows_int8_bf16(X + mk * j, s.m, s.k, s.k, A + mk * j,
                                                               SX + mp * j, nullptr));
                    else
                        CK(qdit::cuda::detail::quantize_rows_int8_bf16_nv(X + mk * j, s.m, s.k, s.k, A + mk * j,
                                                                          SX + mp * j, nullptr, nv));
                },
                warmup, iters);
        };
        auto tops = [&](double ms) { return 2.0 * double(s.m) * double(s.n) * double(s.k) / (ms * 1e-3) / 1e12; };
        // Order: bf16, int8 auto, the variants, int8 auto, bf16; the table takes the mean of the two
        // auto and the two bf16 runs (their spread is printed).
        const double bf16_a = bf16_ms();
        const double auto_a = int8_ms(qdit::cuda::Int8GemmKernel::Auto, {});
        for (auto kv : variants) {
            if (kv == qdit::cuda::Int8GemmKernel::Auto) continue;
            const double ms = int8_ms(kv, {});
            std::printf("  M=%ld K=%ld N=%ld  int8 %-32s %8.1f us  %7.0f TOP/s\n", s.m, s.k, s.n,
                        qdit::cuda::int8_gemm_kernel_name(kv), ms * 1e3, tops(ms));
            if (ms < r.int8_best_ms) {
                r.int8_best_ms = ms;
                r.best = qdit::cuda::int8_gemm_kernel_name(kv);
            }
            if (sweep && kv != qdit::cuda::Int8GemmKernel::Sm80_128x128)
                for (int raster : {1, 2})
                    for (int sw : {1, 2, 4, 8}) {
                        const double t = int8_ms(kv, {sw, raster});
                        std::printf("  M=%ld K=%ld N=%ld  int8 %-32s swizzle %d raster %s %8.1f us  %7.0f TOP/s\n", s.m,
                                    s.k, s.n, qdit::cuda::int8_gemm_kernel_name(kv), sw, raster == 1 ? "M" : "N",
                                    t * 1e3, tops(t));
                        if (t < r.int8_best_ms) {
                            r.int8_best_ms = t;
                            r.best = std::string(qdit::cuda::int8_gemm_kernel_name(kv)) + " sw" + std::to_string(sw) +
                                     (raster == 1 ? " rM" : " rN");
                        }
                    }
        }
        const double auto_b = int8_ms(qdit::cuda::Int8GemmKernel::Auto, {});
        const double bf16_b = bf16_ms();
        r.int8_auto_ms = 0.5 * (auto_a + auto_b);
        r.bf16_ms = 0.5 * (bf16_a + bf16_b);
        std::printf("  M=%ld K=%ld N=%ld  int8 auto %.1f / %.1f us, bf16 %.1f / %.1f us (first / second run)\n", s.m, s.k,
                    s.n, auto_a * 1e3, auto_b * 1e3, bf16_a * 1e3, bf16_b * 1e3);
        if (r.best.empty()) {
            r.int8_best_ms = r.int8_auto_ms;
            r.best = "auto";
        }
        for (int nv : {0, 2, 4, 8}) {
            if (nv > 0 && (s.k / 8 + nv - 1) / nv > 1024) continue;
            const double t = quant_ms(nv);
            std::printf("  M=%ld K=%ld N=%ld  quantize variant nv=%d %6.1f us (%.0f GB/s)\n", s.m, s.k, s.n, nv, t * 1e3,
                        3.0 * double(mk) / (t * 1e-3) / 1e9);
        }
        r.quant_ms = quant_ms(-1);
        std::printf("  M=%ld K=%ld N=%ld  bf16 cuBLASLt %8.1f us; quantize %6.1f us (%.0f GB/s)\n", s.m, s.k, s.n,
                    r.bf16_ms * 1e3, r.quant_ms * 1e3, 3.0 * double(mk) / (r.quant_ms * 1e-3) / 1e9);
        std::fflush(stdout);
        rows.push_back(r);
        for (void* p : {(void*)A, (void*)W, (void*)X, (void*)WB, (void*)BB, (void*)SX, (void*)SW, (void*)B, (void*)Y})
            CK(cudaFree(p));
    }

    const bool show_best = variants.size() > 1;
    std::printf("\n| M | K | N | int8 TOP/s (auto) |%s bf16 cuBLASLt TFLOP/s | int8 / bf16 | quantize µs | "
                "quantize / int8 GEMM | bf16 / (quantize + int8) |\n",
                show_best ? " best variant TOP/s (default scheduler) |" : "");
    std::printf("|---|---|---|---|%s---|---|---|---|---|\n", show_best ? "---|" : "");
    for (const Row& r : rows) {
        const double flop = 2.0 * double(r.s.m) * double(r.s.n) * double(r.s.k);
        std::string best;
        if (show_best) {
            char buf[128];
            std::snprintf(buf, sizeof buf, " %.0f (%s) |", flop / (r.int8_best_ms * 1e-3) / 1e12, r.best.c_str());
            best = buf;
        }
        std::printf("| %ld | %ld | %ld | %.0f |%s %.0f | %.2fx | %.1f | %.1f %% | %.2fx |\n", r.s.m, r.s.k, r.s.n,
                    flop / (r.int8_auto_ms * 1e-3) / 1e12, best.c_str(), flop / (r.bf16_ms * 1e-3) / 1e12,
                    r.bf16_ms / r.int8_auto_ms, r.quant_ms * 1e3, 100.0 * r.quant_ms / r.int8_auto_ms,
                    r.bf16_ms / (r.int8_auto_ms + r.quant_ms));
    }
    return 0;
}

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_gemm: %s\n", e.what());
        return 1;
    }
}
