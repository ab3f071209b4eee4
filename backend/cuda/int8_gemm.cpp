// Host side of the CUDA int8 GEMM: argument checks, device query and kernel choice.
#include "backend/cuda/int8_gemm.h"

#include <array>
#include <mutex>

#include "core/error.h"

namespace qdit::cuda {

namespace {

struct DeviceInfo {
    int cc_major = 0, cc_minor = 0, sm_count = 0;
};

DeviceInfo device_info(int device) {
    static std::mutex mu;
    static std::array<DeviceInfo, 64> cache{};
    if (device < 0 || device >= int(cache.size())) throw Error(fmt::format("CUDA device {} out of range", device));
    std::lock_guard<std::mutex> lock(mu);
    DeviceInfo& d = cache[size_t(device)];
    if (d.sm_count == 0) {
        if (cudaDeviceGetAttribute(&d.cc_major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
            cudaDeviceGetAttribute(&d.cc_minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess ||
            cudaDeviceGetAttribute(&d.sm_count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess)
            throw Error(fmt::format("int8 GEMM: cannot query CUDA device {}", device));
    }
    return d;
}

constexpr bool built_sm90() {
#if defined(QDIT_CUDA_INT8_SM90)
    return true;
#else
    return false;
#endif
}

constexpr bool built_sm80() {
#if defined(QDIT_CUDA_INT8_SM80)
    return true;
#else
    return false;
#endif
}

bool is_sm90_kernel(Int8GemmKernel k) { return k != Int8GemmKernel::Auto && k != Int8GemmKernel::Sm80_128x128; }

// The sm80 kernel was built as PTX too (QDIT_INT8_SM80_ARCHS with a virtual architecture), which the
// driver compiles for any later GPU. Decided from the build rather than by asking the driver, whose
// answer for a missing image is an API error that compute-sanitizer reports.
constexpr bool built_sm80_ptx() {
#if defined(QDIT_CUDA_INT8_SM80_PTX)
    return true;
#else
    return false;
#endif
}

bool runs_sm90(const DeviceInfo& d) { return built_sm90() && d.cc_major == 9 && d.cc_minor == 0; }
bool runs_sm80(const DeviceInfo& d) {
    return built_sm80() && (d.cc_major == 8 || (built_sm80_ptx() && d.cc_major > 8));
}

bool available_on(Int8GemmKernel k, const DeviceInfo& d) {
    // The sm_90a kernels run on compute capability 9.0 only; the sm_80 kernel on 8.x devices (the
    // default SASS) and, when built as PTX, on any later one.
    if (k == Int8GemmKernel::Auto) return runs_sm90(d) || runs_sm80(d);
    if (is_sm90_kernel(k)) return runs_sm90(d);
    return runs_sm80(d);
}

// Hopper tile choice, from a sweep of 5 tile configs x swizzle {1,2,4,8} x raster {M,N} over the 8
// DiT shapes on an H100 (bench/cuda/NOTES.md, run 2): 128x128 ping-pong with a 1x2 cluster (the
// A tile multicast to two CTAs along N), swizzle 1, raster along M was within 4 % of the best
// everywhere except the large square 8192^3, where 128x256 cooperative, swizzle 8 along N won by 14 %.
// The down projections (K >= 8192, N <= 4096: few output tiles, each a long K loop) run 6-14 %
// faster with 128x256 cooperative under the stream-K scheduler (NOTES, "Stream-K"), but not with
// few rows. Up to a few hundred rows (Qwen-Image's text stream) the weights dominate and 64-row
// tiles with one consumer warpgroup and K steps of 256 win (NOTES, "Few rows"): 64x64 with a 1x8
// cluster for the down projections up to M = 128 (21.2 against 34.6 us at M = 19, K = 12288,
// N = 3072), 64x128 with a 1x4 cluster otherwise (the q|k|v projection at M = 19: 15.7 against
// 19.1 us; the down projection at M = 296: 36.2 against 42.4 us).
struct Sm90Choice {
    Int8GemmKernel kernel;
    Int8GemmTuning tuning;
};
Sm90Choice pick_sm90(int64_t m, int64_t n, int64_t k) {
    if (m >= 6144 && n >= 6144) return {Int8GemmKernel::Sm90_128x256_Cooperative, {8, 2}};
    if (k >= 8192 && n <= 4096) {
        if (m <= 128) return {Int8GemmKernel::Sm90_64x64x256_C1x8, {}};
        if (m <= 384) return {Int8GemmKernel::Sm90_64x128x256_C1x4, {}};
        return {Int8GemmKernel::Sm90_128x256_StreamK, {}};
    }
    if (m <= 64 || (m <= 384 && n <= 4096)) return {Int8GemmKernel::Sm90_64x128x256_C1x4, {}};
    return {Int8GemmKernel::Sm90_128x128_Pingpong_C1x2, {1, 1}};
}

}  // namespace

const std::vector<Int8GemmKernel>& int8_gemm_kernels() {
    static const std::vector<Int8GemmKernel> all = {
        Int8GemmKernel::Sm90_128x128_Pingpong,      Int8GemmKernel::Sm90_128x256_Cooperative,
        Int8GemmKernel::Sm90_256x128_Cooperative,   Int8GemmKernel::Sm90_128x128_Pingpong_C1x2,
        Int8GemmKernel::Sm90_128x128x256_Pingpong,  Int8GemmKernel::Sm90_128x256_StreamK,
        Int8GemmKernel::Sm90_64x64x256_C1x8,        Int8GemmKernel::Sm90_64x128x256_C1x4,
        Int8GemmKernel::Sm80_128x128};
    return all;
}

const char* int8_gemm_kernel_name(Int8GemmKernel k) {
    switch (k) {
        case Int8GemmKernel::Auto: return "auto";
        case Int8GemmKernel::Sm90_128x128_Pingpong: return "sm90 128x128x128 pingpong c2x1";
        case Int8GemmKernel::Sm90_128x256_Cooperative: return "sm90 128x256x128 coop c2x1";
        case Int8GemmKernel::Sm90_256x128_Cooperative: return "sm90 256x128x128 coop c1x2";
        case Int8GemmKernel::Sm90_128x128_Pingpong_C1x2: return "sm90 128x128x128 pingpong c1x2";
        case Int8GemmKernel::Sm90_128x128x256_Pingpong: return "sm90 128x128x256 pingpong c2x1";
        case Int8GemmKernel::Sm90_128x256_StreamK: return "sm90 128x256x128 coop c2x1 stream-k";
        case Int8GemmKernel::Sm90_64x64x256_C1x8: return "sm90 64x64x256 ws c1x8";
        case Int8GemmKernel::Sm90_64x128x256_C1x4: return "sm90 64x128x256 ws c1x4";
        case Int8GemmKernel::Sm80_128x128: return "sm80 128x128x64 mma.sync";
    }
    return "?";
}

bool int8_gemm_kernel_available(Int8GemmKernel k) {
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) return false;
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) return false;
    return available_on(k, device_info(dev));
}

void int8_gemm_bf16(const int8_t* a, int64_t lda, const float* a_scale, const int8_t* w, int64_t ldw,
                    const float* w_scale, const float* bias, void* y, int64_t ldy, int64_t m, int64_t n, int64_t k,
                    cudaStream_t stream, Int8GemmKernel kernel, Int8GemmTuning tuning) {
    auto shape = [&] { return fmt::format("M={} N={} K={} lda={} ldw={} ldy={}", m, n, k, lda, ldw, ldy); };
    if (m < 0 || n <= 0 || k <= 0)
        throw ShapeError(fmt::format("int8 GEMM: empty or negative shape ({})", shape()));
    if (m > INT32_MAX || n > INT32_MAX || k > INT32_MAX)
        throw ShapeError(fmt::format("int8 GEMM: dimension over 2^31-1 ({})", shape()));
    if (k % 16 != 0 || n % 8 != 0)
        throw ShapeError(fmt::format(
            "int8 GEMM: K must be a multiple of 16 and N a multiple of 8 (16-byte rows for TMA / cp.async), "
            "got {}; pad the weight or keep this layer in bf16 (ignored_layers)",
            shape()));
    if (lda < k || ldw < k || ldy < n || lda % 16 != 0 || ldw % 16 != 0 || ldy % 8 != 0)
        throw ShapeError(fmt::format(
            "int8 GEMM: row strides must cover the rows and be multiples of 16 bytes (lda, ldw % 16, ldy % 8), "
            "got {}",
            shape()));
    auto misaligned = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) != 0; };
    if (!a || !w || !y || !a_scale || !w_scale)
        throw ShapeError(fmt::format("int8 GEMM: null operand pointer ({})", shape()));
    if (misaligned(a) || misaligned(w) || misaligned(y) || misaligned(a_scale) || misaligned(w_scale) ||
        (bias && misaligned(bias)))
        throw ShapeError(fmt::format("int8 GEMM: operands must be 16-byte aligned ({})", shape()));
    if (m == 0) return;

    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) throw Error("int8 GEMM: no current CUDA device");
    const DeviceInfo d = device_info(dev);
    if (kernel == Int8GemmKernel::Auto) {
        if (runs_sm90(d)) {
            const Sm90Choice c = pick_sm90(m, n, k);
            kernel = c.kernel;
            if (tuning.swizzle == 0 && tuning.raster == 0) tuning = c.tuning;
        }
        else if (runs_sm80(d))
            kernel = Int8GemmKernel::Sm80_128x128;
        else
            throw Error(fmt::format(
                "int8 GEMM: no int8 kernel for compute capability {}.{} in this build (built: sm90a {}, sm80 {}); "
                "rebuild with that architecture in CMAKE_CUDA_ARCHITECTURES or keep the model in bf16",
                d.cc_major, d.cc_minor, built_sm90() ? "yes" : "no", built_sm80() ? "yes" : "no"));
    } else if (!available_on(kernel, d)) {
        throw Error(fmt::format("int8 GEMM: kernel '{}' is not built for compute capability {}.{}",
                                int8_gemm_kernel_name(kernel), d.cc_major, d.cc_minor));
    }

    const detail::Int8GemmArgs p{a,  lda, a_scale,  w,     ldw,   w_scale, bias, y, ldy, int(m), int(n), int(k),
                                 dev, d.sm_count, stream, tuning};
    const char* err = nullptr;
    switch (kernel) {
#if defined(QDIT_CUDA_INT8_SM90)
        case Int8GemmKernel::Sm90_128x128_Pingpong: err = detail::run_int8_gemm_sm90_128x128(p); break;
        case Int8GemmKernel::Sm90_128x256_Cooperative: err = detail::run_int8_gemm_sm90_128x256(p); break;
        case Int8GemmKernel::Sm90_256x128_Cooperative: err = detail::run_int8_gemm_sm90_256x128(p); break;
        case Int8GemmKernel::Sm90_128x128_Pingpong_C1x2: err = detail::run_int8_gemm_sm90_128x128_c1x2(p); break;
        case Int8GemmKernel::Sm90_128x128x256_Pingpong: err = detail::run_int8_gemm_sm90_128x128x256(p); break;
        case Int8GemmKernel::Sm90_128x256_StreamK: err = detail::run_int8_gemm_sm90_128x256_streamk(p); break;
        case Int8GemmKernel::Sm90_64x64x256_C1x8: err = detail::run_int8_gemm_sm90_64x64x256_c1x8(p); break;
        case Int8GemmKernel::Sm90_64x128x256_C1x4: err = detail::run_int8_gemm_sm90_64x128x256_c1x4(p); break;
#endif
#if defined(QDIT_CUDA_INT8_SM80)
        case Int8GemmKernel::Sm80_128x128: err = detail::run_int8_gemm_sm80_128x128(p); break;
#endif
        default: err = "kernel not built";
    }
    if (err) {
        const cudaError_t ce = cudaGetLastError();
        throw Error(fmt::format("int8 GEMM ({}, {}): {}{}{}", int8_gemm_kernel_name(kernel), shape(), err,
                                ce != cudaSuccess ? ": " : "", ce != cudaSuccess ? cudaGetErrorString(ce) : ""));
    }
}

}  // namespace qdit::cuda
