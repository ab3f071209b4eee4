#include "backend/cpu/int8_gemm.h"

#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <string>
#include <vector>

#include "backend/cpu/int8_gemm_internal.h"
#include "core/threads.h"
#include "quant/int8.h"

namespace qdit::cpu {

using namespace detail;

namespace {

constexpr Isa kAllIsas[] = {Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni, Isa::Amx};

// Linux hands out the 8 KiB AMX tile state only to a process that asks for it
// (arch_prctl ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA); the permission
// covers every thread of the process. Asked once.
bool amx_permitted() {
#if defined(__linux__)
    static const bool ok = [] {
        constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
        return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
    }();
    return ok;
#else
    return false;
#endif
}

}  // namespace

bool isa_supported(Isa isa) {
    switch (isa) {
        case Isa::Scalar: return true;
        case Isa::Avx2:
            return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                   __builtin_cpu_supports("f16c");
        case Isa::Avx512Vnni:
            return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                   __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                   __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("fma");
        case Isa::Amx:
            // The epilogue and the quantization are the AVX-512 ones.
            return isa_supported(Isa::Avx512Vnni) && __builtin_cpu_supports("amx-tile") &&
                   __builtin_cpu_supports("amx-int8") && amx_permitted();
    }
    return false;
}

Isa best_isa() {
    static const Isa best = [] {
        if (const char* env = std::getenv("QDIT_CPU_ISA"); env && *env) {
            Isa isa = Isa::Scalar;
            try {
                isa = isa_from_name(env);
            } catch (const ConfigError& e) {
                raise<ConfigError>("QDIT_CPU_ISA: {}", e.what());
            }
            if (!isa_supported(isa))
                raise<ConfigError>("QDIT_CPU_ISA={}: this CPU does not support that path", env);
            return isa;
        }
        for (auto it = std::rbegin(kAllIsas); it != std::rend(kAllIsas); ++it)
            if (isa_supported(*it)) return *it;
        return Isa::Scalar;
    }();
    return best;
}

const char* isa_name(Isa isa) {
    switch (isa) {
        case Isa::Scalar: return "scalar";
        case Isa::Avx2: return "avx2";
        case Isa::Avx512Vnni: return "avx512-vnni";
        case Isa::Amx: return "amx-int8";
    }
    return "?";
}

Isa isa_from_name(const std::string& name) {
    std::string names;
    for (Isa isa : kAllIsas) {
        if (name == isa_name(isa)) return isa;
        names += (names.empty() ? "" : ", ") + std::string(isa_name(isa));
    }
    raise<ConfigError>("unknown CPU kernel path '{}' (one of: {})", name, names);
}

static void check_isa(Isa isa) {
    QDIT_CHECK(isa_supported(isa), "the {} int8 kernels are not supported by this CPU",
               isa_name(isa));
}

PackedInt8Weight pack_int8_weight(const Tensor& q, const Tensor& scale) {
    QDIT_CHECK(q.dtype() == DType::I8 && q.dim() == 2, "int8 weight must be I8 [N, K], got {} {}",
               dtype_name(q.dtype()), shape_str(q.shape()));
    const int64_t n = q.size(0), k = q.size(1);
    QDIT_CHECK(n >= 1 && k >= 1, "int8 weight {} is empty", shape_str(q.shape()));
    QDIT_CHECK(scale.dtype() == DType::F32 && scale.numel() == n,
               "weight scale must be F32 [{}], got {} {}", n, dtype_name(scale.dtype()),
               shape_str(scale.shape()));
    best_isa();  // a bad QDIT_CPU_ISA fails here, at load time, not at the first forward
    const int64_t nb = round_up(n, kBlockN) / kBlockN, kg = kg_of(k);
    PackedInt8Weight p;
    p.n = n;
    p.k = k;
    p.packed = Tensor::zeros({nb * kg * 64}, DType::I8);
    p.colsum = Tensor::empty({n}, DType::I32);
    p.scale = scale.to(DType::F32);
    const int8_t* src = q.data<int8_t>();
    int8_t* dst = p.packed.data<int8_t>();
    int32_t* colsum = p.colsum.data<int32_t>();
    parallel_for(n, 64, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
            const int8_t* row = src + r * k;
            int8_t* blk = dst + (r / kBlockN) * kg * 64 + (r % kBlockN) * 4;
            int32_t s = 0;
            for (int64_t c = 0; c < k; ++c) {
                QDIT_CHECK(row[c] != -128, "int8 weight value -128 at [{}, {}] (must be in ±127)", r,
                           c);
                blk[(c / 4) * 64 + c % 4] = row[c];
                s += row[c];
            }
            colsum[r] = s;
        }
    });
    return p;
}

namespace detail {

void store_tile_scalar(const GemmArgs& g, const int32_t* acc, int64_t ld_acc, int64_t m0,
                       int64_t rows, int64_t n0, int64_t cols) {
    const float* sw = g.w->scale.data<float>();
    for (int64_t r = 0; r < rows; ++r) {
        const int32_t* a = acc + r * ld_acc;
        const int64_t m = m0 + r;
        switch (g.out) {
            case Out::S32: {
                int32_t* y = static_cast<int32_t*>(g.y) + m * g.ldy + n0;
                std::memcpy(y, a, size_t(cols) * 4);
            } break;
            case Out::F32: {
                float* y = static_cast<float*>(g.y) + m * g.ldy + n0;
                for (int64_t j = 0; j < cols; ++j)
                    y[j] = dequant(a[j], g.a_scale[m], sw[n0 + j], g.bias ? g.bias[n0 + j] : 0.f);
            } break;
            case Out::BF16: {
                uint16_t* y = static_cast<uint16_t*>(g.y) + m * g.ldy + n0;
                for (int64_t j = 0; j < cols; ++j)
                    y[j] = f32_to_bf16(
                        dequant(a[j], g.a_scale[m], sw[n0 + j], g.bias ? g.bias[n0 + j] : 0.f));
            } break;
        }
    }
}

// Parameters by value: read through the lambda's captures, k and flip might
// alias the byte stores, and GCC copied byte by byte.
static void flip_row(const int8_t* src, int8_t* d, int64_t k, int64_t ld, uint8_t flip) {
    for (int64_t c = 0; c < k; ++c) d[c] = int8_t(uint8_t(src[c]) ^ flip);
    for (int64_t c = k; c < ld; ++c) d[c] = 0;
}

GemmArgs padded_copy(const GemmArgs& g, uint8_t flip, int64_t k_multiple, int64_t m_multiple) {
    const int64_t k = g.w->k, ld = round_up(k, k_multiple), rows = round_up(g.m, m_multiple);
    // Kept per thread: a fresh allocation per call cost more than the copy
    // itself (page faults and zero-filling). A Tensor is 64-byte aligned: an
    // AMX tile row that straddles two cache lines loads at half the speed.
    thread_local Tensor buf;
    if (buf.numel() < rows * ld) buf = Tensor::empty({rows * ld}, DType::I8);
    int8_t* dst = buf.data<int8_t>();
    parallel_for(g.m, std::max<int64_t>(1, (int64_t(1) << 16) / k), [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) flip_row(g.a + r * g.lda, dst + r * ld, k, ld, flip);
    });
    std::memset(dst + g.m * ld, 0, size_t((rows - g.m) * ld));
    GemmArgs out = g;
    out.a = dst;
    out.lda = ld;
    return out;
}

void run_tasks(int64_t m, int64_t n_panels, int64_t rows_per_step, int64_t k,
               const std::function<void(int64_t, int64_t, int64_t)>& tile_fn) {
    // The work is the list of (column panel, row step) units, panel-major, cut
    // into equal ranges: a thread then mostly walks whole panels, keeping the
    // panel's weights in its own L2 while it walks the rows, and every thread
    // gets the same number of micro-tiles (whole-panel chunks left one thread
    // with 32 of 60 panels).
    const int64_t m_steps = (m + rows_per_step - 1) / rows_per_step;
    // Skip the pool for small problems where waking threads costs more than the work.
    const int64_t work = m * n_panels * k;
    const int64_t units = n_panels * m_steps;
    parallel_for(units, work < (1 << 18) ? units : 1, [&](int64_t b, int64_t e) {
        while (b < e) {
            const int64_t panel = b / m_steps, s0 = b % m_steps;
            const int64_t s1 = std::min(m_steps, s0 + (e - b));
            tile_fn(panel, s0 * rows_per_step, std::min(m, s1 * rows_per_step));
            b += s1 - s0;
        }
    });
}

}  // namespace detail

// The scalar reference: reads the packed layout element by element.
static void gemm_scalar(const GemmArgs& g) {
    const PackedInt8Weight& w = *g.w;
    const int64_t kg = kg_of(w.k);
    const int8_t* p = w.packed.data<int8_t>();
    std::vector<int32_t> row(size_t(w.n));
    for (int64_t m = 0; m < g.m; ++m) {
        const int8_t* a = g.a + m * g.lda;
        for (int64_t n = 0; n < w.n; ++n) {
            const int8_t* blk = p + (n / kBlockN) * kg * 64 + (n % kBlockN) * 4;
            int32_t acc = 0;
            for (int64_t c = 0; c < w.k; ++c) acc += int32_t(a[c]) * int32_t(blk[(c / 4) * 64 + c % 4]);
            row[size_t(n)] = acc;
        }
        store_tile_scalar(g, row.data(), 0, m, 1, 0, w.n);
    }
}

static void run_gemm(const GemmArgs& g, Isa isa) {
    check_isa(isa);
    if (g.m <= 0) return;
    switch (isa) {
        case Isa::Scalar: gemm_scalar(g); break;
        case Isa::Avx2: gemm_avx2(g); break;
        case Isa::Avx512Vnni: gemm_avx512(g); break;
        case Isa::Amx: gemm_amx(g); break;
    }
}

void int8_gemm_s32(const int8_t* a, int64_t m, const PackedInt8Weight& w, int32_t* c, Isa isa) {
    GemmArgs g{a, m, w.k, &w, nullptr, nullptr, c, Out::S32, w.n};
    run_gemm(g, isa);
}

void int8_gemm(const int8_t* a, const float* a_scale, int64_t m, const PackedInt8Weight& w,
               const float* bias, void* y, DType yt, int64_t ldy, Isa isa) {
    QDIT_CHECK(yt == DType::F32 || yt == DType::BF16, "int8_gemm writes F32 or BF16, not {}",
               dtype_name(yt));
    QDIT_CHECK(ldy >= w.n, "int8_gemm: output row stride {} < N = {}", ldy, w.n);
    GemmArgs g{a, m, w.k, &w, a_scale, bias, y, yt == DType::F32 ? Out::F32 : Out::BF16, ldy};
    run_gemm(g, isa);
}

void quantize_rows_int8(const void* x, DType xt, int64_t m, int64_t k, int64_t ldx, int8_t* q,
                        float* scale, Isa isa) {
    QDIT_CHECK(xt == DType::F32 || xt == DType::BF16,
               "activation quantization takes F32 or BF16, not {}", dtype_name(xt));
    QDIT_CHECK(k >= 1 && ldx >= k, "quantize_rows_int8: bad k = {} / ldx = {}", k, ldx);
    check_isa(isa);
    if (m <= 0) return;
    const size_t es = dtype_size(xt);
    // About 64K elements per chunk: below that, threading costs more than it saves.
    const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / k);
    parallel_for(m, grain, [&](int64_t b, int64_t e) {
        const void* xb = static_cast<const uint8_t*>(x) + size_t(b * ldx) * es;
        switch (isa) {
            case Isa::Scalar: quantize_rows_int8_ref(xb, xt, e - b, k, ldx, q + b * k, scale + b); break;
            case Isa::Avx2: quantize_rows_avx2(xb, xt, e - b, k, ldx, q + b * k, scale + b); break;
            case Isa::Avx512Vnni:
            case Isa::Amx:
                quantize_rows_avx512(xb, xt, e - b, k, ldx, q + b * k, scale + b);
                break;
        }
    });
}

}  // namespace qdit::cpu
