// Every op of ops/ (and nn::LinearGroup) over shapes × dtypes on each backend this build and
// machine have. The CPU implementation is checked against a plain double-precision computation of
// the op's definition within a bound stated per dtype (bf16: the op rounds where torch does, so a
// few bf16 ulps; f32: float error); every other backend is checked against the CPU implementation:
// bit for bit where the op promises the CPU's rounding points (row, rope, swiglu, embedding, int8
// Linear groups), within a bound where the arithmetic order differs (attention, bf16 GEMMs).
//
// QDIT_OPS_PERF=1 adds a perf mode: each case also prints the median time of 20 runs per backend.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "io/safetensors.h"
#include "nn/linear_group.h"
#include "ops/attention.h"
#include "ops/conv.h"
#include "ops/dense.h"
#include "ops/elementwise.h"
#include "ops/embedding.h"
#include "ops/glu.h"
#include "ops/image.h"
#include "ops/norm.h"
#include "ops/rope.h"
#include "ops/row.h"
#include "quant/int8.h"
#include "tests/error_stats.h"
#include "tests/random_tensor.h"

using namespace qdit;
using testutil::randn;

namespace {

std::vector<ops::Context> contexts() {
    std::vector<ops::Context> out = {ops::Context{}};
    if (ops::cuda_devices() > 0) out.push_back(ops::Context{{DeviceType::CUDA, 0}});
    return out;
}

// Host f64 copy of a host tensor.
std::vector<double> values(const Tensor& t) {
    const Tensor f = t.to(DType::F32);
    return std::vector<double>(f.data<float>(), f.data<float>() + f.numel());
}

double round_to(double v, DType dt) {
    Tensor t = Tensor::empty({1}, DType::F32);
    t.data<float>()[0] = float(v);
    return t.to(dt).item_f32(0);
}

// max |a − b| / max(max |b|, tiny)
double rel_max(const Tensor& a, const std::vector<double>& b) {
    const std::vector<double> av = values(a);
    EXPECT_EQ(av.size(), b.size());
    double e = 0, r = 1e-30;
    for (size_t i = 0; i < std::min(av.size(), b.size()); ++i) {
        e = std::max(e, std::fabs(av[i] - b[i]));
        r = std::max(r, std::fabs(b[i]));
    }
    return e / r;
}

// Where two tensors' bits differ: how many elements and the first one (for a failed bitwise check).
std::string bits_report(const Tensor& a, const Tensor& b) {
    if (a.shape() != b.shape() || a.dtype() != b.dtype())
        return fmt::format("{} {} vs {} {}", dtype_name(a.dtype()), shape_str(a.shape()), dtype_name(b.dtype()),
                           shape_str(b.shape()));
    const size_t es = dtype_size(a.dtype());
    int64_t n = 0, first = -1;
    for (int64_t i = 0; i < a.numel(); ++i)
        if (std::memcmp(static_cast<const uint8_t*>(a.raw()) + size_t(i) * es,
                        static_cast<const uint8_t*>(b.raw()) + size_t(i) * es, es)) {
            if (first < 0) first = i;
            ++n;
        }
    if (first < 0) return "identical";
    return fmt::format("{} of {} elements differ; the first, {}: {} vs {}", n, a.numel(), first, a.item_f32(first),
                       b.item_f32(first));
}

bool same_bits(const Tensor& a, const Tensor& b) {
    return a.shape() == b.shape() && a.dtype() == b.dtype() && std::equal(static_cast<const uint8_t*>(a.raw()),
                                                                          static_cast<const uint8_t*>(a.raw()) + a.nbytes(),
                                                                          static_cast<const uint8_t*>(b.raw()));
}

// The bound of the CPU implementation against the f64 definition, per dtype.
double cpu_bound(DType dt) { return dt == DType::BF16 ? 2e-2 : 1e-5; }

// One op case: runs on a context and returns its outputs on the host; `exact` when every backend
// must give the CPU's bits, else `bound` (relative max error against the CPU).
struct Case {
    std::string name;
    DType dt;
    std::function<std::vector<Tensor>(const ops::Context&)> run;
    bool exact = true;
    double bound = 0;
};

void perf(const Case& c, const ops::Context& ctx) {
    static const bool on = std::getenv("QDIT_OPS_PERF") && std::string(std::getenv("QDIT_OPS_PERF")) == "1";
    if (!on) return;
    std::vector<double> ms;
    for (int i = 0; i < 20; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        c.run(ctx);  // outputs come back to the host: the time includes the copy and the wait
        ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    std::printf("[ perf ] %-44s %-7s %8.3f ms\n", c.name.c_str(), ctx.device.str().c_str(), ms[ms.size() / 2]);
}

// Runs a case on the CPU and on every other backend, comparing with the CPU's outputs.
void check_backends(const Case& c) {
    SCOPED_TRACE(c.name);
    const std::vector<Tensor> ref = c.run(ops::Context{});
    perf(c, ops::Context{});
    for (const ops::Context& ctx : contexts()) {
        if (!ctx.cuda()) continue;
        if (c.dt != DType::BF16) continue;  // GPU ops run bf16 activations
        const std::vector<Tensor> got = c.run(ctx);
        ASSERT_EQ(got.size(), ref.size());
        for (size_t i = 0; i < ref.size(); ++i) {
            if (c.exact)
                EXPECT_TRUE(same_bits(got[i], ref[i]))
                    << ctx.device.str() << " output " << i << ": " << bits_report(got[i], ref[i]);
            else
                EXPECT_LE(rel_max(got[i], values(ref[i])), c.bound) << ctx.device.str() << " output " << i;
        }
        perf(c, ctx);
    }
}

const DType kDtypes[] = {DType::F32, DType::BF16};

}  // namespace

// x ← x + y; out = RMSNorm(x)·w.
TEST(Ops, AddRmsNorm) {
    for (DType dt : kDtypes)
        for (auto [m, k] : {std::pair<int64_t, int64_t>{1, 8}, {5, 64}, {33, 200}}) {
            const Tensor x0 = randn({m, k}, 1, 0.f, 1.f, dt), y = randn({m, k}, 2, 0.f, 1.f, dt),
                         w = randn({k}, 3, 1.f, 0.2f, dt);
            const float eps = 1e-6f;
            Case c{fmt::format("add_rms_norm {}x{} {}", m, k, dtype_name(dt)), dt, [&](const ops::Context& ctx) {
                       Tensor x = ops::to_device(x0.to(dt), ctx);
                       const ops::ActivationSpec spec{true, false, k, k};
                       Tensor out = ops::add_rms_norm(x, ops::to_device(y, ctx), ops::to_device(w, ctx), eps, spec, ctx).x;
                       return std::vector<Tensor>{ops::to_host(x, ctx), ops::to_host(out, ctx)};
                   }};
            const std::vector<Tensor> cpu = c.run(ops::Context{});
            // The definition in f64, with the residual sum rounded to the dtype first.
            std::vector<double> xs = values(x0), ys = values(y), ws = values(w), sum(xs.size()), ref(xs.size());
            for (size_t i = 0; i < xs.size(); ++i) sum[i] = round_to(xs[i] + ys[i], dt);
            for (int64_t r = 0; r < m; ++r) {
                double ss = 0;
                for (int64_t j = 0; j < k; ++j) ss += sum[size_t(r * k + j)] * sum[size_t(r * k + j)];
                const double inv = 1 / std::sqrt(ss / double(k) + eps);
                for (int64_t j = 0; j < k; ++j) ref[size_t(r * k + j)] = sum[size_t(r * k + j)] * inv * ws[size_t(j)];
            }
            EXPECT_EQ(rel_max(cpu[0], sum), 0.0) << c.name;
            EXPECT_LE(rel_max(cpu[1], ref), cpu_bound(dt)) << c.name;
            check_backends(c);
        }
}

// Per-head RMSNorm of q and k (or none), then RoPE in either layout; v untouched.
TEST(Ops, QkRmsNormRope) {
    for (DType dt : kDtypes)
        for (ops::RopeLayout layout : {ops::RopeLayout::Half, ops::RopeLayout::Interleaved})
            for (auto [n, H, Hkv, hd, norm] : {std::tuple<int64_t, int64_t, int64_t, int64_t, bool>{3, 2, 1, 8, true},
                                               {17, 4, 2, 16, true}, {9, 6, 6, 32, true}, {5, 3, 3, 16, false}}) {
                const bool half = layout == ops::RopeLayout::Half;
                const int64_t W = (H + 2 * Hkv) * hd;
                const Tensor qkv0 = randn({n, W}, 4, 0.f, 1.f, dt), wq = randn({hd}, 5, 1.f, 0.2f, dt),
                             wk = randn({hd}, 6, 1.f, 0.2f, dt);
                std::vector<int64_t> pos(static_cast<size_t>(n));
                for (int64_t i = 0; i < n; ++i) pos[size_t(i)] = 3 * i - 5;  // negative positions too
                const double theta = 10000.0;
                const float eps = 1e-6f;
                // The interleaved layout's table is the multi-axis one (two axes here).
                const Tensor table = half ? ops::rope_half_table(theta, hd, pos)
                                          : [&] {
                                                std::vector<int64_t> p2;
                                                for (int64_t p : pos) p2.insert(p2.end(), {p, p});
                                                return ops::rope_table(theta, {hd / 2, hd / 2}, p2);
                                            }();
                Case c{fmt::format("qk_rms_norm_rope {} n{} h{}/{} d{}{} {}", half ? "half" : "interleaved", n, H, Hkv,
                                   hd, norm ? "" : " no-norm", dtype_name(dt)),
                       dt, [&](const ops::Context& ctx) {
                           Tensor qkv = ops::to_device(qkv0.to(dt), ctx);
                           ops::qk_rms_norm_rope(qkv, H, Hkv, hd, norm ? ops::to_device(wq, ctx) : Tensor(),
                                                 norm ? ops::to_device(wk, ctx) : Tensor(), eps,
                                                 ops::to_device(table, ctx), layout, ctx);
                           return std::vector<Tensor>{ops::to_host(qkv, ctx)};
                       }};
                const std::vector<Tensor> cpu = c.run(ops::Context{});
                std::vector<double> in = values(qkv0), ref = in, wqs = values(wq), wks = values(wk);
                for (int64_t t = 0; t < n; ++t)
                    for (int64_t h = 0; h < H + Hkv; ++h) {
                        double* v = ref.data() + t * W + h * hd;
                        const std::vector<double>& w = h < H ? wqs : wks;
                        double ss = 0;
                        for (int64_t j = 0; j < hd; ++j) ss += v[j] * v[j];
                        const double inv = norm ? 1 / std::sqrt(ss / double(hd) + eps) : 1.0;
                        std::vector<double> u(static_cast<size_t>(hd));
                        for (int64_t j = 0; j < hd; ++j) u[size_t(j)] = v[j] * inv * (norm ? w[size_t(j)] : 1.0);
                        for (int64_t j = 0; j < hd / 2; ++j) {
                            // Half: pair (j, j + hd/2), ω over hd; interleaved: pair (2j, 2j + 1), two axes of hd/2.
                            const int64_t ia = half ? j : 2 * j, ib = half ? j + hd / 2 : 2 * j + 1;
                            const int64_t kk = half ? j : j % (hd / 4);
                            const double d = half ? double(hd) : double(hd / 2);
                            const double ang = double(pos[size_t(t)]) / std::pow(theta, 2.0 * double(kk) / d);
                            const double a = u[size_t(ia)], b = u[size_t(ib)];
                            v[ia] = a * std::cos(ang) - b * std::sin(ang);
                            v[ib] = b * std::cos(ang) + a * std::sin(ang);
                        }
                    }
                EXPECT_LE(rel_max(cpu[0], ref), dt == DType::BF16 ? 3e-2 : 1e-5) << c.name;
                check_backends(c);
            }
}

// x ← x + gate·y (or + gate·rms(y)), then LayerNorm(x)·scale + shift, modulation per item.
TEST(Ops, RowModulated) {
    for (DType dt : kDtypes)
        for (auto [items, rows, k, rms_res] : {std::tuple<int64_t, int64_t, int64_t, bool>{1, 3, 8, false},
                                               {2, 5, 64, false}, {3, 4, 40, true}}) {
            const int64_t m = items * rows;
            const Tensor x0 = randn({m, k}, 11, 0.f, 1.f, dt), y = randn({m, k}, 12, 0.f, 1.f, dt),
                         wr = randn({k}, 13, 1.f, 0.2f, dt);
            // Modulation values in the activations' precision, as ops::modulation writes them.
            const Tensor gate = randn({items, k}, 14, 0.f, 1.f, dt).to(DType::F32),
                         scale = randn({items, k}, 15, 1.f, 0.3f, dt).to(DType::F32),
                         shift = randn({items, k}, 16, 0.f, 0.5f, dt).to(DType::F32);
            const float eps = 1e-6f;
            Case c{fmt::format("row gated{} + layer_norm·scale+shift {}x{}x{} {}", rms_res ? "·rms" : "", items, rows,
                               k, dtype_name(dt)),
                   dt, [&](const ops::Context& ctx) {
                       Tensor x = ops::to_device(x0.to(dt), ctx);  // a copy: x is updated in place
                       ops::Residual res{ops::to_device(y, ctx), rms_res ? ops::to_device(wr, ctx) : Tensor(), eps,
                                         ops::to_device(gate, ctx)};
                       ops::Normalize nm{ops::Norm::LayerNorm, {}, eps, ops::to_device(scale, ctx),
                                         ops::to_device(shift, ctx)};
                       Tensor out = ops::row(x, res, nm, ops::ActivationSpec{true, false, k, k}, ctx).x;
                       return std::vector<Tensor>{ops::to_host(x, ctx), ops::to_host(out, ctx)};
                   }};
            const std::vector<Tensor> cpu = c.run(ops::Context{});
            // The definition in f64, rounded to the dtype where torch's ops store.
            const std::vector<double> xs = values(x0), ys = values(y), ws = values(wr), gs = values(gate),
                                      ss = values(scale), hs = values(shift);
            std::vector<double> sum(xs.size()), ref(xs.size());
            for (int64_t r = 0; r < m; ++r) {
                const int64_t b = r / rows;
                double yss = 0;
                for (int64_t j = 0; j < k; ++j) yss += ys[size_t(r * k + j)] * ys[size_t(r * k + j)];
                const double yinv = 1 / std::sqrt(yss / double(k) + eps);
                for (int64_t j = 0; j < k; ++j) {
                    const size_t i = size_t(r * k + j);
                    double v = ys[i];
                    if (rms_res) v = round_to(round_to(v * yinv, dt) * ws[size_t(j)], dt);
                    sum[i] = round_to(xs[i] + round_to(gs[size_t(b * k + j)] * v, dt), dt);
                }
                double mean = 0, var = 0;
                for (int64_t j = 0; j < k; ++j) mean += sum[size_t(r * k + j)] / double(k);
                for (int64_t j = 0; j < k; ++j) var += std::pow(sum[size_t(r * k + j)] - mean, 2) / double(k);
                for (int64_t j = 0; j < k; ++j) {
                    const size_t i = size_t(r * k + j);
                    const double nrm = round_to((sum[i] - mean) / std::sqrt(var + eps), dt);
                    ref[i] = round_to(nrm * ss[size_t(b * k + j)], dt) + hs[size_t(b * k + j)];
                }
            }
            EXPECT_LE(rel_max(cpu[0], sum), dt == DType::BF16 ? 0.0 : 1e-6) << c.name;  // bf16: the definition's rounding points
            EXPECT_LE(rel_max(cpu[1], ref), cpu_bound(dt)) << c.name;
            check_backends(c);
        }
}

// Items of different row counts (`groups`, an empty one included): each group's rows equal a row op
// over that group alone with its item's modulation row, on every backend, the int8 rows and their
// scales too where the backend writes them.
TEST(Ops, RowModulatedGroups) {
    const std::vector<int64_t> groups = {3, 0, 5};
    const int64_t items = 3, m = 8, k = 40;
    for (DType dt : kDtypes) {
        const Tensor x0 = randn({m, k}, 41, 0.f, 1.f, dt), y = randn({m, k}, 42, 0.f, 1.f, dt);
        const Tensor gate = randn({items, k}, 43, 0.f, 1.f, dt).to(DType::F32),
                     scale = randn({items, k}, 44, 1.f, 0.3f, dt).to(DType::F32),
                     shift = randn({items, k}, 45, 0.f, 0.5f, dt).to(DType::F32);
        for (const ops::Context& ctx : contexts()) {
            if (ctx.cuda() && dt != DType::BF16) continue;
            SCOPED_TRACE(fmt::format("{} {}", ctx.device.str(), dtype_name(dt)));
            auto dev = [&](const Tensor& t) { return ops::to_device(t, ctx); };
            const ops::ActivationSpec spec{true, ctx.cuda(), k, k};
            Tensor x = dev(x0.to(dt));  // copies: x is updated in place
            const ops::Activation a = ops::row(x, {dev(y), {}, 1e-6f, dev(gate)},
                                               {ops::Norm::LayerNorm, {}, 1e-6f, dev(scale), dev(shift)}, spec, ctx, groups);
            int64_t r0 = 0;
            for (int64_t b = 0; b < items; ++b) {
                const int64_t n = groups[size_t(b)];
                if (n == 0) continue;
                Tensor xb = dev(x0.slice_rows(r0, r0 + n).to(dt));
                const ops::Activation ab = ops::row(
                    xb, {dev(y.slice_rows(r0, r0 + n)), {}, 1e-6f, dev(gate.slice_rows(b, b + 1))},
                    {ops::Norm::LayerNorm, {}, 1e-6f, dev(scale.slice_rows(b, b + 1)), dev(shift.slice_rows(b, b + 1))},
                    spec, ctx);
                auto same = [&](const Tensor& all, const Tensor& one, const char* what) {
                    const Tensor h = ops::to_host(all, ctx).slice_rows(r0, r0 + n), g = ops::to_host(one, ctx);
                    EXPECT_EQ(std::memcmp(h.raw(), g.raw(), g.nbytes()), 0) << what << " of group " << b;
                };
                same(x, xb, "the residual stream");
                same(a.x, ab.x, "the rows");
                if (a.q.defined()) {
                    same(a.q, ab.q, "the int8 rows");
                    same(a.qs, ab.qs, "the int8 scales");
                }
                r0 += n;
            }
        }
    }
    Tensor x = randn({8, 16}, 46, 0.f, 1.f, DType::F32);
    const Tensor sc = randn({3, 16}, 47, 1.f, 0.1f, DType::F32);
    EXPECT_THROW(ops::row(x, {}, {ops::Norm::LayerNorm, {}, 1e-6f, sc, {}}, {true, false, 16, 16}, ops::Context{},
                          {3, 4}),
                 ShapeError);  // a group per item
    EXPECT_THROW(ops::row(x, {}, {ops::Norm::LayerNorm, {}, 1e-6f, sc, {}}, {true, false, 16, 16}, ops::Context{},
                          {3, 4, 2}),
                 ShapeError);  // summing to the rows
}

// GELU (tanh form) of the first columns of a (padded) projection.
TEST(Ops, GeluTanh) {
    for (DType dt : kDtypes)
        for (auto [m, k, n] : {std::tuple<int64_t, int64_t, int64_t>{1, 16, 16}, {9, 40, 48}, {20, 128, 128}}) {
            const Tensor h = randn({m, n}, 9, 0.f, 2.f, dt);
            Case c{fmt::format("gelu_tanh {}x{} of {} {}", m, k, n, dtype_name(dt)), dt, [&](const ops::Context& ctx) {
                       return std::vector<Tensor>{ops::to_host(
                           ops::gelu_tanh(ops::to_device(h, ctx), ops::ActivationSpec{true, false, k, k}, ctx).x, ctx)};
                   }};
            const std::vector<Tensor> cpu = c.run(ops::Context{});
            const std::vector<double> x = values(h);
            std::vector<double> ref(static_cast<size_t>(m * k));
            for (int64_t r = 0; r < m; ++r)
                for (int64_t j = 0; j < k; ++j) {
                    const double a = x[size_t(r * n + j)];
                    ref[size_t(r * k + j)] = 0.5 * a * (1 + std::tanh(std::sqrt(2 / M_PI) * (a + 0.044715 * a * a * a)));
                }
            EXPECT_LE(rel_max(cpu[0], ref), cpu_bound(dt)) << c.name;
            // The GPU's tanhf and the CPU's may differ in the last f32 bit, which moves a bf16
            // rounding now and then: one bf16 ulp of the largest value at most.
            c.exact = false;
            c.bound = 1.0 / 128;
            check_backends(c);
        }
}

// GELU (tanh form) of every finite bf16 value, each against the definition in f64, written as
// v / (1 + e^(−2u)) (0.5·v·(1 + tanh(u)) cancels in f64 too for v below about −5). The CPU's tanh
// form loses relative accuracy where 1 + tanh(u) cancels (v below about −3: an absolute error up to
// |v|·2^-23); the CUDA kernel's exp form does not: one bf16 ulp of the value itself. Both may
// give 0 for values under 2^-120 (the kernel's fast reciprocal returns 0 for e^(−2u) above 2^126).
TEST(Ops, GeluTanhEveryBf16Value) {
    std::vector<uint16_t> bits;
    for (uint32_t b = 0; b < 65536; ++b)
        if (((b >> 7) & 0xFFu) != 0xFFu) bits.push_back(uint16_t(b));  // not inf / NaN
    const int64_t k = 256;
    while (bits.size() % size_t(k)) bits.push_back(0);
    const int64_t m = int64_t(bits.size()) / k;
    Tensor h = Tensor::empty({m, k}, DType::BF16);
    std::memcpy(h.raw(), bits.data(), bits.size() * sizeof(uint16_t));
    for (const ops::Context& ctx : contexts()) {
        const Tensor y =
            ops::to_host(ops::gelu_tanh(ops::to_device(h, ctx), ops::ActivationSpec{true, false, k, k}, ctx).x, ctx);
        int64_t bad = 0, first = -1;
        for (int64_t i = 0; i < h.numel(); ++i) {
            const double v = h.item_f32(i), got = y.item_f32(i);
            const double exact = v / (1 + std::exp(-2 * std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)));
            const double ulp = exact == 0 ? std::ldexp(1.0, -120)
                                          : std::max(std::ldexp(1.0, std::ilogb(exact) - 7), std::ldexp(1.0, -120));
            const double bound = ctx.cuda() ? ulp : ulp + std::fabs(v) * std::ldexp(1.0, -23);
            if (!(std::fabs(got - exact) <= bound)) {
                if (first < 0) first = i;
                ++bad;
            }
        }
        EXPECT_EQ(bad, 0) << ctx.device.str() << ": the first, gelu(" << (first >= 0 ? h.item_f32(first) : 0.f)
                          << ") = " << (first >= 0 ? y.item_f32(first) : 0.f);
    }
}

// Causal grouped-query attention over a fused q|k|v (batch of items, with and without a key mask).
TEST(Ops, Attention) {
    for (DType dt : kDtypes)
        for (auto [B, L, H, Hkv, hd, masked] :
             {std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, bool>{1, 5, 2, 1, 8, false},
              {2, 7, 4, 2, 16, false},
              {2, 6, 2, 2, 8, true}}) {
            const int64_t W = (H + 2 * Hkv) * hd;
            const Tensor qkv = randn({B * L, W}, 7, 0.f, 1.f, dt);
            Tensor mask;
            if (masked) {
                mask = Tensor::empty({B, L}, DType::U8);
                for (int64_t i = 0; i < B * L; ++i) mask.data<uint8_t>()[i] = (i % L) >= (i / L);  // item b: b pads on the left
            }
            Case c{fmt::format("attention B{} L{} h{}/{} d{}{} {}", B, L, H, Hkv, hd, masked ? " masked" : "", dtype_name(dt)),
                   dt,
                   [&](const ops::Context& ctx) {
                       return std::vector<Tensor>{ops::to_host(
                           ops::attention(ops::to_device(qkv, ctx), B, H, Hkv, hd, true, mask, ctx), ctx)};
                   },
                   false, 2e-2};
            const std::vector<Tensor> cpu = c.run(ops::Context{});
            const std::vector<double> x = values(qkv);
            std::vector<double> ref(size_t(B * L * H * hd), 0.0);
            for (int64_t b = 0; b < B; ++b)
                for (int64_t h = 0; h < H; ++h)
                    for (int64_t i = 0; i < L; ++i) {
                        const int64_t g = h / (H / Hkv);
                        std::vector<double> s;
                        std::vector<int64_t> keys;
                        for (int64_t j = 0; j <= i; ++j) {
                            if (masked && !mask.data<uint8_t>()[b * L + j]) continue;
                            double d = 0;
                            for (int64_t e = 0; e < hd; ++e)
                                d += x[size_t((b * L + i) * W + h * hd + e)] * x[size_t((b * L + j) * W + (H + g) * hd + e)];
                            s.push_back(d / std::sqrt(double(hd)));
                            keys.push_back(j);
                        }
                        if (s.empty()) continue;
                        const double mx = *std::max_element(s.begin(), s.end());
                        double z = 0;
                        for (double& v : s) z += (v = std::exp(v - mx));
                        for (size_t q = 0; q < s.size(); ++q)
                            for (int64_t e = 0; e < hd; ++e)
                                ref[size_t((b * L + i) * H * hd + h * hd + e)] +=
                                    s[q] / z * x[size_t((b * L + keys[q]) * W + (H + Hkv + g) * hd + e)];
                    }
            EXPECT_LE(rel_max(cpu[0], ref), cpu_bound(dt)) << c.name;
            if (masked) {
                // A GPU refuses a key mask (not implemented there): the CPU's answer is the only one.
                for (const ops::Context& ctx : contexts())
                    if (ctx.cuda()) EXPECT_THROW(c.run(ctx), UsageError);
                continue;
            }
            check_backends(c);
        }
}

// A padded batch in one call: each item's tokens alone (its prefix of rows), the padding rows zero.
TEST(Ops, AttentionPadded) {
    for (auto [L, H, Hkv, hd, lengths] :
         {std::tuple<int64_t, int64_t, int64_t, int64_t, std::vector<int64_t>>{12, 2, 2, 16, {12, 5}},
          {9, 4, 2, 64, {1, 9, 4}},
          {40, 3, 3, 128, {33, 40}}}) {
        const int64_t B = int64_t(lengths.size()), W = (H + 2 * Hkv) * hd;
        const Tensor qkv = randn({B * L, W}, 9, 0.f, 1.f, DType::BF16);
        Case c{fmt::format("attention_padded B{} L{} h{}/{} d{}", B, L, H, Hkv, hd), DType::BF16,
               [&](const ops::Context& ctx) {
                   return std::vector<Tensor>{ops::to_host(
                       ops::attention_padded(ops::to_device(qkv, ctx), lengths, H, Hkv, hd, ctx), ctx)};
               },
               false, 2e-2};
        for (const ops::Context& ctx : contexts()) {
            SCOPED_TRACE(ctx.device.str());
            const Tensor o = c.run(ctx)[0];
            for (int64_t b = 0; b < B; ++b) {
                const int64_t n = lengths[size_t(b)];
                // The item's rows equal attention over its tokens alone (bitwise on the CPU, which
                // runs exactly that; within the bound on a GPU's one padded call).
                const Tensor alone = ops::to_host(
                    ops::attention(ops::to_device(qkv.slice_rows(b * L, b * L + n), ctx), 1, H, Hkv, hd, false, Tensor(), ctx),
                    ctx);
                if (!ctx.cuda())
                    EXPECT_TRUE(same_bits(o.slice_rows(b * L, b * L + n).to(DType::BF16), alone)) << c.name << " item " << b;
                else
                    EXPECT_LE(rel_max(o.slice_rows(b * L, b * L + n), values(alone)), 2e-2) << c.name << " item " << b;
                const std::vector<double> pad = values(o.slice_rows(b * L + n, (b + 1) * L));
                EXPECT_TRUE(std::all_of(pad.begin(), pad.end(), [](double v) { return v == 0.0; }))
                    << c.name << " item " << b << ": padding rows not zero";
            }
        }
        check_backends(c);
    }
    // Lengths outside [1, L] are refused before any work.
    const Tensor qkv = randn({8, 3 * 16}, 3, 0.f, 1.f, DType::BF16);
    EXPECT_THROW(ops::attention_padded(qkv, {4, 0}, 1, 1, 16, ops::Context{}), ShapeError);
    EXPECT_THROW(ops::attention_padded(qkv, {5, 1}, 1, 1, 16, ops::Context{}), ShapeError);
    EXPECT_THROW(ops::attention_padded(qkv, {2, 2, 2}, 1, 1, 16, ops::Context{}), ShapeError);
}

// attention_padded written as an int8 Linear reads it: on CUDA an item of at least kZeroKeysFrom
// tokens whose length is not a multiple of 128 runs against zero keys up to that multiple (where its
// padding has room) and their weight is taken back out by the softmax statistics. Each item's dense
// rows must be within 3 dB of the plain bf16 call's SQNR against the exact attention (f32 on the
// CPU): they are rounded to bf16 twice (cuDNN's output, then the corrected value), which at most
// doubles the rounding noise (an H100 measured 1.9 to 2.1 dB less, 51.1 to 51.4 dB), also where
// every score of a row is well below zero (the case that strains the statistics: mean score about
// −6). Without the correction the zero keys' weight, z / (Σ e^score + z), would leave them below
// about 25 dB. The int8 rows are exactly the per-token quantization of those dense rows.
// Items: 1030 tokens (122 zero keys), a multiple of 128, 1100 (52 zero keys); then items with no
// room (length L, or its next multiple of 128 past L).
TEST(Ops, AttentionPaddedZeroKeys) {
    for (const ops::Context& ctx : contexts()) {
        if (!ctx.cuda()) continue;
        for (auto [L, H, hd, lengths, shift] :
             {std::tuple<int64_t, int64_t, int64_t, std::vector<int64_t>, float>{1280, 3, 128, {1030, 1280, 1100}, 0.f},
              {1280, 2, 64, {1030, 1100}, 0.f},
              {1152, 2, 128, {1030, 1100}, 0.73f},
              {1100, 2, 128, {1100, 1050}, 0.f}}) {
            const int64_t B = int64_t(lengths.size()), D = H * hd, W = 3 * D;
            // shift: q = −shift + noise, k = shift + noise per element, so q·k/√hd ≈ −shift²·√hd.
            Tensor x = randn({B * L, W}, 31, 0.f, 1.f, DType::F32);
            for (int64_t r = 0; r < B * L; ++r)
                for (int64_t c = 0; c < 2 * D; ++c) x.data<float>()[r * W + c] += c < D ? -shift : shift;
            const Tensor qkv = x.to(DType::BF16);
            const std::string name = fmt::format("L{} h{} d{} shift {}", L, H, hd, shift);
            SCOPED_TRACE(name);
            const ops::ActivationSpec spec{true, true, D, D};
            const ops::Activation a = ops::attention_padded(ops::to_device(qkv, ctx), lengths, H, H, hd, spec, ctx);
            const Tensor plain = ops::to_host(ops::attention_padded(ops::to_device(qkv, ctx), lengths, H, H, hd, ctx), ctx);
            ASSERT_TRUE(a.x.defined() && a.q.defined() && a.qs.defined());
            const Tensor dense = ops::to_host(a.x, ctx), q = ops::to_host(a.q, ctx), qs = ops::to_host(a.qs, ctx);
            for (int64_t b = 0; b < B; ++b) {
                const int64_t n = lengths[size_t(b)], r0 = b * L;
                const bool zero_keys = n % 128 && (n + 127) / 128 * 128 <= L;
                const Tensor ref = ops::attention(qkv.slice_rows(r0, r0 + n).to(DType::F32), 1, H, H, hd, false, Tensor(),
                                                  ops::Context{});
                const double got = testutil::compare(dense.slice_rows(r0, r0 + n), ref).sqnr_db(),
                             base = testutil::compare(plain.slice_rows(r0, r0 + n), ref).sqnr_db();
                std::printf("%s item %lld (%s): SQNR %.2f dB, plain call %.2f dB\n", name.c_str(), (long long)b,
                            zero_keys ? "zero keys" : "no zero keys", got, base);
                EXPECT_GE(got, base - 3.0) << "item " << b;
                EXPECT_GE(got, 40.0) << "item " << b;
                // The int8 rows: the per-token rule applied to the dense rows.
                std::vector<int8_t> want(static_cast<size_t>(n * D));
                std::vector<float> want_s(static_cast<size_t>(n));
                quantize_rows_int8_ref(dense.slice_rows(r0, r0 + n).raw(), DType::BF16, n, D, D, want.data(), want_s.data());
                EXPECT_EQ(std::memcmp(want.data(), q.slice_rows(r0, r0 + n).raw(), want.size()), 0) << "item " << b;
                EXPECT_EQ(std::memcmp(want_s.data(), qs.slice_rows(r0, r0 + n).raw(), want_s.size() * 4), 0)
                    << "item " << b;
                const std::vector<double> pad = values(dense.slice_rows(r0 + n, r0 + L));
                EXPECT_TRUE(std::all_of(pad.begin(), pad.end(), [](double v) { return v == 0.0; })) << "item " << b;
            }
        }
    }
}

// FP8 attention (AttentionImpl::Fp8) against the exact attention of the CPU: q, k, v and the
// probabilities carry E4M3's 3 mantissa bits (a relative rounding error of at most 2^-4, about 3.6 %
// rms). With q, k of rms at most 1 (as after the models' q/k RMS norms scaled by their weights) the
// H100 measured 24.5 to 28.2 dB; 20 dB is the bound, while a wrong scale or a misread part gives
// less than 10. v's magnitude (30, 0.01) must not matter: each part has its own scale. Logits far
// larger than the models' are out of scope: with q, k of rms 30 (logits of rms ~900, a one-hot
// softmax) E4M3's error on q and k reorders the top keys (9.7 dB measured), a limit of the format.
// The bf16 attention on the same inputs must be closer (so the FP8 path is what ran). A padded batch
// keeps its padding rows zero. The CPU refuses Fp8.
TEST(Ops, AttentionFp8) {
    ops::Context cpu_fp8{};
    cpu_fp8.attention = ops::AttentionImpl::Fp8;
    EXPECT_FALSE(ops::fp8_attention_available(cpu_fp8));
    const Tensor small = randn({8, 3 * 16}, 3, 0.f, 1.f, DType::BF16);
    EXPECT_THROW(ops::attention(small, 1, 1, 1, 16, false, Tensor(), cpu_fp8), UsageError);
    EXPECT_THROW(ops::attention_padded(small, {8}, 1, 1, 16, cpu_fp8), UsageError);
    for (ops::Context ctx : contexts()) {
        if (!ops::fp8_attention_available(ctx)) continue;  // a GPU before Hopper, or the CPU
        for (auto [L, H, hd, lengths, qk_scale, v_scale] :
             {std::tuple<int64_t, int64_t, int64_t, std::vector<int64_t>, float, float>{200, 4, 128, {200, 77}, 1.f, 1.f},
              {64, 2, 64, {64}, 1.f, 30.f},
              {96, 3, 128, {96}, 0.01f, 0.01f}}) {
            const int64_t B = int64_t(lengths.size()), W = 3 * H * hd;
            Tensor qkv = randn({B * L, W}, 21, 0.f, 1.f, DType::F32);
            for (int64_t r = 0; r < B * L; ++r)
                for (int64_t c = 0; c < W; ++c) qkv.data<float>()[r * W + c] *= c < 2 * H * hd ? qk_scale : v_scale;
            qkv = qkv.to(DType::BF16);
            const std::string name =
                fmt::format("fp8 attention B{} L{} h{} d{} q/k scale {} v scale {}", B, L, H, hd, qk_scale, v_scale);
            ops::Context f = ctx;
            f.attention = ops::AttentionImpl::Fp8;
            const Tensor dq = ops::to_device(qkv, ctx);
            const Tensor o8 = ops::to_host(B > 1 ? ops::attention_padded(dq, lengths, H, H, hd, f)
                                                 : ops::attention(dq, 1, H, H, hd, false, Tensor(), f),
                                           ctx);
            const Tensor o16 = ops::to_host(ops::attention_padded(dq, lengths, H, H, hd, ctx), ctx);
            for (int64_t b = 0; b < B; ++b) {
                const int64_t n = lengths[size_t(b)];
                const Tensor ref = ops::attention(qkv.slice_rows(b * L, b * L + n).to(DType::F32), 1, H, H, hd, false,
                                                  Tensor(), ops::Context{});
                const testutil::Err e8 = testutil::compare(o8.slice_rows(b * L, b * L + n), ref),
                                    e16 = testutil::compare(o16.slice_rows(b * L, b * L + n), ref);
                std::printf("%s item %lld: SQNR fp8 %.2f dB, bf16 %.2f dB\n", name.c_str(), (long long)b, e8.sqnr_db(),
                            e16.sqnr_db());
                EXPECT_GE(e8.sqnr_db(), 20.0) << name << " item " << b;
                EXPECT_LT(e8.sqnr_db(), e16.sqnr_db()) << name << " item " << b;
                const std::vector<double> pad = values(o8.slice_rows(b * L + n, (b + 1) * L));
                EXPECT_TRUE(std::all_of(pad.begin(), pad.end(), [](double v) { return v == 0.0; })) << name;
            }
        }
    }
}

// E4M3 byte → value (bias 7, 3 mantissa bits, no infinities; 0x7f / 0xff are NaN).
double e4m3_value(uint8_t b) {
    const int e = (b >> 3) & 15, m = b & 7;
    if (e == 15 && m == 7) return NAN;
    const double mag = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1.0 + m / 8.0, e - 7);
    return b & 0x80 ? -mag : mag;
}

// FP8 attention with q and k written by the norm + RoPE kernel (ops::Fp8Qk): two streams of rows
// with their own norm weights (Qwen-Image's image and text; the second written into a buffer of
// its own and copied in, as the model does), a padded batch. The E4M3 q and k are the bf16 path's
// values at the fixed scale (within E4M3's rounding), no |value| exceeds the bound the scale comes
// from, the bf16 q|k|v keeps its q and k, and the attention is as accurate as the FP8 attention
// that converts q and k itself.
TEST(Ops, AttentionFp8FromNormedQk) {
    for (ops::Context ctx : contexts()) {
        if (!ops::fp8_attention_available(ctx)) continue;
        ops::Context f = ctx;
        f.attention = ops::AttentionImpl::Fp8;
        const int64_t L = 160, H = 3, hd = 128, W = 3 * H * hd, L1 = 120;  // rows [0, L1) stream 1, the rest 2
        const std::vector<int64_t> lengths = {L, L - 23};
        const int64_t B = int64_t(lengths.size()), rows = B * L;
        Tensor qkv0 = randn({rows, W}, 31, 0.f, 1.f, DType::F32);
        // One token whose first q head is one value and zeros: after the norm it reaches sqrt(hd)·w.
        for (int64_t c = 0; c < hd; ++c) qkv0.data<float>()[5 * W + c] = c == 0 ? 7.f : 0.f;
        qkv0 = qkv0.to(DType::BF16);
        // Norm weights of different sizes per stream (the second's k weights up to about 3).
        // The first stream's q weight 0 is the largest q weight (the spike above meets it).
        Tensor wq1 = randn({hd}, 32, 1.f, 0.2f, DType::F32), wk1 = randn({hd}, 33, 1.f, 0.2f, DType::BF16),
               wq2 = randn({hd}, 34, 0.5f, 0.1f, DType::BF16), wk2 = randn({hd}, 35, 2.f, 0.4f, DType::BF16);
        wq1.data<float>()[0] = 2.5f;
        wq1 = wq1.to(DType::BF16);
        std::vector<int64_t> pos;
        for (int64_t r = 0; r < rows; ++r) pos.insert(pos.end(), {0, r % 17 - 8, r % L});
        const Tensor table = ops::to_device(ops::rope_table(10000.0, {32, 48, 48}, pos), ctx);
        auto dev = [&](const Tensor& t) { return ops::to_device(t, ctx); };
        const Tensor dwq1 = dev(wq1), dwk1 = dev(wk1), dwq2 = dev(wq2), dwk2 = dev(wk2);
        // Stream s's rows of item b: [b·L, b·L + L1) or [b·L + L1, (b + 1)·L).
        auto stream_rows = [&](int64_t b, int s) { return std::pair{b * L + (s == 1 ? 0 : L1), s == 1 ? L1 : L - L1}; };
        auto norm_rope = [&](Tensor& x, int s, int64_t r0, int64_t n, const ops::Context& c, const ops::Fp8Qk* e) {
            Tensor part = x.slice_rows(r0, r0 + n);
            ops::qk_rms_norm_rope(part, H, H, hd, s == 1 ? dwq1 : dwq2, s == 1 ? dwk1 : dwk2, 1e-6f,
                                  table.slice_rows(r0, r0 + n), ops::RopeLayout::Interleaved, c, e);
        };
        // The bf16 path: every row normalized in place.
        Tensor normed = dev(qkv0);
        for (int64_t b = 0; b < B; ++b)
            for (int s : {1, 2}) {
                auto [r0, n] = stream_rows(b, s);
                norm_rope(normed, s, r0, n, ctx, nullptr);
            }
        // The fused path: stream 1 straight into y, stream 2 into its own rows, then copied.
        Tensor fused = dev(qkv0);
        ops::Fp8Qk f8 = ops::fp8_qk(rows, W, {dwq1, dwq2}, {dwk1, dwk2}, hd, f);
        for (int64_t b = 0; b < B; ++b) {
            auto [r0, n] = stream_rows(b, 1);
            const ops::Fp8Qk part = f8.slice_rows(r0, r0 + n);
            norm_rope(fused, 1, r0, n, f, &part);
            auto [t0, m] = stream_rows(b, 2);
            const ops::Fp8Qk other = f8.like(m, f);
            Tensor src = fused.slice_rows(t0, t0 + m);
            ops::qk_rms_norm_rope(src, H, H, hd, dwq2, dwk2, 1e-6f, table.slice_rows(t0, t0 + m),
                                  ops::RopeLayout::Interleaved, f, &other);
            ops::copy_rows(f8.y, t0, other.y, 0, m, f);
        }
        const Tensor y = ops::to_host(f8.y, ctx), sc = ops::to_host(f8.scalars, ctx), nh = ops::to_host(normed, ctx);
        EXPECT_EQ(std::memcmp(ops::to_host(fused, ctx).raw(), qkv0.raw(), qkv0.nbytes()), 0) << "q|k|v changed";
        const std::vector<double> ref = values(nh);
        double bound[2] = {0, 0};
        for (int p = 0; p < 2; ++p)
            for (const Tensor* w : p == 0 ? std::vector<const Tensor*>{&wq1, &wq2} : std::vector<const Tensor*>{&wk1, &wk2})
                for (double v : values(*w)) bound[p] = std::max(bound[p], 1.02 * std::sqrt(double(hd)) * std::fabs(v));
        double worst = 0, biggest[2] = {0, 0};
        for (int64_t b = 0; b < B; ++b)
            for (int64_t r = b * L; r < b * L + lengths[size_t(b)]; ++r)
                for (int64_t c = 0; c < 2 * H * hd; ++c) {
                    const int p = c < H * hd ? 0 : 1;
                    const float descale = sc.data<float>()[p];
                    const double got = e4m3_value(static_cast<const uint8_t*>(y.raw())[r * W + c]) * descale,
                                 want = ref[size_t(r * W + c)];
                    // Half an E4M3 step: 2^-4 relative for normals, 2^-10 · descale below 2^-6.
                    worst = std::max(worst, std::fabs(got - want) / (std::fabs(want) / 16 + std::ldexp(descale, -10)));
                    biggest[p] = std::max(biggest[p], std::fabs(want));
                }
        EXPECT_LE(worst, 1.0) << "E4M3 q/k off by more than half a step";
        for (int p = 0; p < 2; ++p) {
            EXPECT_NEAR(sc.data<float>()[p], bound[p] / 448, 1e-5 * bound[p] / 448) << (p ? "k" : "q") << " scale";
            EXPECT_LE(biggest[p], bound[p]) << (p ? "k" : "q") << " past its bound";
        }
        EXPECT_GT(biggest[0], 0.95 * bound[0]) << "the test's spike should come near the q bound";
        // Attention against exact attention on the normalized bf16 q|k|v.
        const Tensor o_fused = ops::to_host(ops::attention_padded(fused, lengths, H, H, hd, f, &f8), ctx),
                     o_conv = ops::to_host(ops::attention_padded(normed, lengths, H, H, hd, f), ctx);
        for (int64_t b = 0; b < B; ++b) {
            const int64_t n = lengths[size_t(b)];
            const Tensor exact = ops::attention(nh.slice_rows(b * L, b * L + n).to(DType::F32), 1, H, H, hd, false,
                                                Tensor(), ops::Context{});
            const double e_fused = testutil::compare(o_fused.slice_rows(b * L, b * L + n), exact).sqnr_db(),
                         e_conv = testutil::compare(o_conv.slice_rows(b * L, b * L + n), exact).sqnr_db();
            std::printf("fp8 attention, q/k from the norm kernel, item %lld: SQNR %.2f dB (q/k converted by the "
                        "attention: %.2f dB)\n",
                        (long long)b, e_fused, e_conv);
            EXPECT_GE(e_fused, 20.0) << "item " << b;
            EXPECT_GE(e_fused, e_conv - 2.0) << "item " << b;
            const std::vector<double> pad = values(o_fused.slice_rows(b * L + n, (b + 1) * L));
            EXPECT_TRUE(std::all_of(pad.begin(), pad.end(), [](double v) { return v == 0.0; })) << "item " << b;
        }
        // Misuse: an E4M3 output without the norms, or of another shape.
        Tensor x = dev(qkv0);
        EXPECT_THROW(ops::qk_rms_norm_rope(x, H, H, hd, Tensor(), Tensor(), 1e-6f, table, ops::RopeLayout::Interleaved,
                                           f, &f8),
                     ShapeError);
        const ops::Fp8Qk short8 = f8.slice_rows(0, 10);
        EXPECT_THROW(ops::attention_padded(x, lengths, H, H, hd, f, &short8), ShapeError);
        EXPECT_THROW(ops::attention_padded(x, lengths, H, H, hd, ctx, &f8), ShapeError);  // not FP8 attention
    }
    ops::Context cpu_fp8{};
    cpu_fp8.attention = ops::AttentionImpl::Fp8;
    EXPECT_THROW(ops::fp8_qk(8, 48, {}, {}, 16, cpu_fp8), UsageError);
}

// silu(gate) · up over column blocks of a fused projection.
TEST(Ops, Swiglu) {
    for (DType dt : kDtypes)
        for (auto [m, k] : {std::pair<int64_t, int64_t>{1, 16}, {9, 48}, {20, 128}}) {
            const Tensor h = randn({m, 2 * k}, 8, 0.f, 2.f, dt);
            Case c{fmt::format("swiglu {}x{} {}", m, k, dtype_name(dt)), dt, [&](const ops::Context& ctx) {
                       return std::vector<Tensor>{ops::to_host(
                           ops::swiglu(ops::to_device(h, ctx), k, ops::ActivationSpec{true, false, k, k}, ctx).x, ctx)};
                   }};
            const std::vector<Tensor> cpu = c.run(ops::Context{});
            const std::vector<double> x = values(h);
            std::vector<double> ref(static_cast<size_t>(m * k));
            for (int64_t r = 0; r < m; ++r)
                for (int64_t j = 0; j < k; ++j) {
                    const double a = x[size_t(r * 2 * k + j)], b = x[size_t(r * 2 * k + k + j)];
                    ref[size_t(r * k + j)] = a / (1 + std::exp(-a)) * b;
                }
            EXPECT_LE(rel_max(cpu[0], ref), cpu_bound(dt)) << c.name;
            check_backends(c);
        }
}

// Rows of a table; an id outside the vocabulary is named.
TEST(Ops, Embedding) {
    const Tensor table = randn({50, 24}, 9, 0.f, 1.f, DType::BF16);
    const std::vector<int32_t> ids = {3, 0, 49, 3, 17};
    Case c{"embedding 5 of 50x24 bf16", DType::BF16, [&](const ops::Context& ctx) {
               return std::vector<Tensor>{ops::to_host(ops::embedding(ops::to_device(table, ctx), ids, ctx), ctx)};
           }};
    const std::vector<Tensor> cpu = c.run(ops::Context{});
    for (size_t i = 0; i < ids.size(); ++i)
        EXPECT_EQ(std::memcmp(static_cast<const uint8_t*>(cpu[0].raw()) + i * 48,
                              static_cast<const uint8_t*>(table.raw()) + size_t(ids[i]) * 48, 48),
                  0);
    check_backends(c);
    for (const ops::Context& ctx : contexts()) {
        try {
            ops::embedding(ops::to_device(table, ctx), {1, 50}, ctx);
            ADD_FAILURE() << "id 50 of 50 accepted on " << ctx.device.str();
        } catch (const ShapeError& e) {
            EXPECT_NE(std::string(e.what()).find("token id 50 at position 1"), std::string::npos) << e.what();
        }
    }
}

// copy_rows with a source step: rows src_row, src_row + step, ... land one after another; the rows
// around the destination range keep their values; a step past the source is refused.
TEST(Ops, CopyRowsStrided) {
    const Tensor src = randn({11, 6}, 10, 0.f, 1.f, DType::BF16), dst0 = randn({5, 6}, 11, 0.f, 1.f, DType::BF16);
    for (const ops::Context& ctx : contexts()) {
        SCOPED_TRACE(ctx.device.str());
        Tensor dst = ops::to_device(dst0, ctx);
        ops::copy_rows(dst, 1, ops::to_device(src, ctx), 2, 3, ctx, /*src_step=*/4);  // rows 2, 6, 10
        const Tensor h = ops::to_host(dst, ctx);
        const size_t row = 6 * sizeof(uint16_t);
        auto at = [&](const Tensor& t, int64_t r) { return static_cast<const uint8_t*>(t.raw()) + size_t(r) * row; };
        for (int64_t r : {0, 4}) EXPECT_EQ(std::memcmp(at(h, r), at(dst0, r), row), 0) << "row " << r;
        for (int64_t i = 0; i < 3; ++i) EXPECT_EQ(std::memcmp(at(h, 1 + i), at(src, 2 + 4 * i), row), 0) << "row " << 1 + i;
        EXPECT_THROW(ops::copy_rows(dst, 0, ops::to_device(src, ctx), 3, 3, ctx, 4), ShapeError);  // row 11 of 11
    }
}

// A group of Linear layers reading one input: each member's block equals x·Wᵀ + b (dense) or the
// W8A8 rule (int8), on the CPU against f64; a GPU's int8 parts give the CPU's bits.
TEST(Ops, LinearGroup) {
    const int64_t m = 7, k = 40;
    const std::vector<int64_t> outs = {24, 8, 16};
    std::map<std::string, Tensor> weights;
    std::vector<LayerPlan> plans;
    for (size_t i = 0; i < outs.size(); ++i) {
        LayerPlan p;
        p.spec = {fmt::format("g.{}", i), outs[i], k, i == 1};
        plans.push_back(p);
        weights[p.spec.name + ".weight"] = randn({outs[i], k}, 20 + uint32_t(i), 0.f, 0.1f, DType::BF16);
        if (p.spec.bias) weights[p.spec.name + ".bias"] = randn({outs[i]}, 30, 0.f, 0.1f, DType::BF16);
    }
    const std::string file = ::testing::TempDir() + "/ops_linear_group.safetensors";
    write_safetensors(file, std::vector<std::pair<std::string, Tensor>>(weights.begin(), weights.end()));
    const Checkpoint ck(file);
    const Tensor x = randn({m, k}, 40, 0.f, 1.f, DType::BF16);
    // The last mix: a weight-only int8 member between W8A8 ones (three parts on a GPU).
    const std::vector<std::vector<Precision>> mixes = {
        {Precision::High, Precision::High, Precision::High},
        {Precision::Int8, Precision::Int8, Precision::Int8},
        {Precision::Int8WeightOnly, Precision::Int8WeightOnly, Precision::Int8WeightOnly},
        {Precision::Int8, Precision::Int8WeightOnly, Precision::Int8}};
    for (const std::vector<Precision>& mix : mixes) {
        for (size_t i = 0; i < plans.size(); ++i) plans[i].precision = mix[i];
        std::vector<nn::LinearGroup::Member> ms;
        for (const LayerPlan& p : plans) ms.push_back({&p, round_up(p.spec.out_features, 16), 48});
        // W8A8 alone is bit-exact across backends; the bf16 GEMMs and weight-only sums are ordered differently.
        const bool exact = std::all_of(mix.begin(), mix.end(), [](Precision p) { return p == Precision::Int8; });
        std::string kinds;
        for (Precision p : mix) kinds += p == Precision::High ? " bf16" : p == Precision::Int8 ? " int8" : " int8-w";
        Case c{fmt::format("linear group {}x{} -> 24|8|16{}", m, k, kinds), DType::BF16,
               [&](const ops::Context& ctx) {
                   const nn::LinearGroup g(&ck, 0, ms, DType::BF16, ctx);
                   // The input as wide as the group reads it: a GPU pads K with zero columns.
                   Tensor xin = Tensor::zeros({m, g.input_spec().k}, DType::BF16);
                   for (int64_t r = 0; r < m; ++r)
                       std::memcpy(xin.data<uint16_t>() + r * xin.size(1), x.data<uint16_t>() + r * k, size_t(k) * 2);
                   const Tensor y = ops::to_host(g.forward({ops::to_device(xin, ctx), {}, {}}), ctx);
                   // Each member's block, whatever padding the device added.
                   std::vector<Tensor> blocks;
                   for (size_t i = 0; i < outs.size(); ++i) {
                       Tensor b = Tensor::empty({m, outs[i]}, DType::BF16);
                       for (int64_t r = 0; r < m; ++r)
                           std::memcpy(b.data<uint16_t>() + r * outs[i], y.data<uint16_t>() + r * g.width() + g.column(i),
                                       size_t(outs[i]) * 2);
                       blocks.push_back(b);
                   }
                   return blocks;
               },
               exact, 2e-2};
        const std::vector<Tensor> cpu = c.run(ops::Context{});
        // f64 reference: dense x·Wᵀ + b, or the W8A8 rule on the same bf16 inputs.
        const std::vector<double> xs = values(x);
        std::vector<int8_t> qx(static_cast<size_t>(m * k));
        std::vector<float> sx(static_cast<size_t>(m));
        quantize_rows_int8_ref(x.raw(), DType::BF16, m, k, k, qx.data(), sx.data());
        for (size_t i = 0; i < outs.size(); ++i) {
            // W8A8: both quantized; weight-only: the bf16 activations times the quantized weight.
            const bool int8 = mix[i] == Precision::Int8, wo = mix[i] == Precision::Int8WeightOnly;
            const Tensor& w = weights[plans[i].spec.name + ".weight"];
            const std::vector<double> ws = values(w);
            std::vector<int8_t> qw(static_cast<size_t>(outs[i] * k));
            std::vector<float> sw(static_cast<size_t>(outs[i]));
            quantize_rows_int8_ref(w.raw(), DType::BF16, outs[i], k, k, qw.data(), sw.data());
            const std::vector<double> bias =
                plans[i].spec.bias ? values(weights[plans[i].spec.name + ".bias"]) : std::vector<double>(size_t(outs[i]), 0.0);
            std::vector<double> ref(static_cast<size_t>(m * outs[i]));
            for (int64_t r = 0; r < m; ++r)
                for (int64_t o = 0; o < outs[i]; ++o) {
                    double acc = 0;
                    for (int64_t j = 0; j < k; ++j)
                        acc += int8 ? double(qx[size_t(r * k + j)]) * qw[size_t(o * k + j)]
                               : wo     ? xs[size_t(r * k + j)] * qw[size_t(o * k + j)]
                                        : xs[size_t(r * k + j)] * ws[size_t(o * k + j)];
                    ref[size_t(r * outs[i] + o)] =
                        (int8 ? acc * sx[size_t(r)] * sw[size_t(o)] : wo ? acc * sw[size_t(o)] : acc) + bias[size_t(o)];
                }
            EXPECT_LE(rel_max(cpu[i], ref), 1e-2) << c.name << " member " << i;
        }
        check_backends(c);
    }
}

// ---- the image ops of the VAE decoders (channels-last [B, H, W, C]) ---------------------------

// The Qwen-Image VAE's channel RMS norm (+ SiLU): v / ‖v‖ · sqrt(C) · gamma per position. No CUDA
// kernel yet: a GPU refuses it, naming the op.
TEST(Ops, ChannelRmsNorm) {
    for (DType dt : kDtypes)
        for (auto [m, C] : {std::pair<int64_t, int64_t>{1, 8}, {30, 32}, {7, 96}})
            for (bool silu : {false, true}) {
                const Tensor x = randn({m, C}, 50, 0.f, 2.f, dt);
                const Tensor g = randn({C}, 51, 1.f, 0.1f, dt).to(DType::F32);
                Case c{fmt::format("channel_rms_norm {}x{}{} {}", m, C, silu ? " silu" : "", dtype_name(dt)), dt,
                       [&](const ops::Context& ctx) {
                           return std::vector<Tensor>{ops::to_host(
                               ops::channel_rms_norm(ops::to_device(x, ctx), ops::to_device(g, ctx), 1e-12f, silu, ctx),
                               ctx)};
                       }};
                const std::vector<Tensor> cpu = c.run(ops::Context{});
                const std::vector<double> xs = values(x), gs = values(g);
                std::vector<double> ref(xs.size());
                for (int64_t r = 0; r < m; ++r) {
                    double ss = 0;
                    for (int64_t j = 0; j < C; ++j) ss += xs[size_t(r * C + j)] * xs[size_t(r * C + j)];
                    for (int64_t j = 0; j < C; ++j) {
                        const double y = xs[size_t(r * C + j)] / std::sqrt(ss) * std::sqrt(double(C)) * gs[size_t(j)];
                        ref[size_t(r * C + j)] = silu ? y / (1 + std::exp(-y)) : y;
                    }
                }
                EXPECT_LE(rel_max(cpu[0], ref), cpu_bound(dt)) << c.name;
                // The GPU sums the squares in another order: a rare last-bit change of the norm can
                // move a bf16 rounding, one ulp of the largest value at most.
                c.exact = false;
                c.bound = 1.0 / 128;
                check_backends(c);
            }
    // A zero vector stays zero (the norm is clamped to eps, not divided by zero).
    const Tensor z = Tensor::zeros({2, 16}, DType::F32), g = randn({16}, 52, 1.f, 0.1f, DType::F32);
    const Tensor y = ops::channel_rms_norm(z, g, 1e-12f, false, ops::Context{});
    for (int64_t i = 0; i < y.numel(); ++i) EXPECT_EQ(y.item_f32(i), 0.0f);
    try {
        ops::channel_rms_norm(z, randn({15}, 53, 1.f, 0.1f, DType::F32), 1e-12f, false, ops::Context{});
        ADD_FAILURE() << "gamma [15] accepted for 16 channels";
    } catch (const ShapeError& e) {
        EXPECT_NE(std::string(e.what()).find("channel_rms_norm"), std::string::npos) << e.what();
    }
}

// GroupNorm (+ SiLU) over channels-last rows: the statistics of each item's channel group over all
// its positions, in double.
TEST(Ops, GroupNorm) {
    for (DType dt : kDtypes)
        for (auto [B, L, C, G] : {std::tuple<int64_t, int64_t, int64_t, int64_t>{2, 13, 12, 3}, {1, 70, 64, 32},
                                  {3, 5, 40, 4}})
            for (bool silu : {false, true}) {
                const Tensor x = randn({B, L, C}, 54, 3.f, 2.f, dt);  // a non-zero mean
                const Tensor w = randn({C}, 55, 1.f, 0.5f, dt).to(DType::F32), b = randn({C}, 56, 0.f, 1.f, dt).to(DType::F32);
                Case c{fmt::format("group_norm [{}, {}, {}] G{}{} {}", B, L, C, G, silu ? " silu" : "", dtype_name(dt)),
                       dt, [&](const ops::Context& ctx) {
                           return std::vector<Tensor>{ops::to_host(
                               ops::group_norm(ops::to_device(x, ctx), ops::to_device(w, ctx), ops::to_device(b, ctx),
                                               G, 1e-6f, silu, ctx),
                               ctx)};
                       }};
                const std::vector<Tensor> cpu = c.run(ops::Context{});
                const std::vector<double> xs = values(x), ws = values(w), bs = values(b);
                std::vector<double> ref(xs.size());
                const int64_t cg = C / G;
                for (int64_t n = 0; n < B; ++n)
                    for (int64_t g = 0; g < G; ++g) {
                        double sum = 0, ss = 0;
                        for (int64_t l = 0; l < L; ++l)
                            for (int64_t ch = g * cg; ch < (g + 1) * cg; ++ch) sum += xs[size_t((n * L + l) * C + ch)];
                        const double mean = sum / double(L * cg);
                        for (int64_t l = 0; l < L; ++l)
                            for (int64_t ch = g * cg; ch < (g + 1) * cg; ++ch) {
                                const double d = xs[size_t((n * L + l) * C + ch)] - mean;
                                ss += d * d;
                            }
                        const double rstd = 1.0 / std::sqrt(ss / double(L * cg) + 1e-6);
                        for (int64_t l = 0; l < L; ++l)
                            for (int64_t ch = g * cg; ch < (g + 1) * cg; ++ch) {
                                const size_t at = size_t((n * L + l) * C + ch);
                                const double y = (xs[at] - mean) * rstd * ws[size_t(ch)] + bs[size_t(ch)];
                                ref[at] = silu ? y / (1 + std::exp(-y)) : y;
                            }
                    }
                EXPECT_LE(rel_max(cpu[0], ref), cpu_bound(dt)) << c.name;
                // The GPU sums in double in another order and uses CUDA's expf: a last-bit change can
                // move a bf16 rounding, one ulp of the largest value at most.
                c.exact = false;
                c.bound = 1.0 / 128;
                check_backends(c);
            }
    try {
        ops::group_norm(randn({1, 4, 12}, 57, 0.f, 1.f, DType::F32), Tensor::zeros({12}, DType::F32),
                        Tensor::zeros({12}, DType::F32), 5, 1e-6f, false, ops::Context{});
        ADD_FAILURE() << "12 channels accepted in 5 groups";
    } catch (const ShapeError& e) {
        EXPECT_NE(std::string(e.what()).find("group_norm"), std::string::npos) << e.what();
    }
}

// A dense Linear (x · Wᵀ + b) with and without a bias, against the f64 sums.
TEST(Ops, Dense) {
    for (DType dt : kDtypes)
        for (auto [m, k, n, bias] : {std::tuple<int64_t, int64_t, int64_t, bool>{5, 16, 24, true}, {33, 64, 8, false},
                                     {64, 96, 288, true}}) {
            const Tensor x = randn({m, k}, 58, 0.f, 1.f, dt), w = randn({n, k}, 59, 0.f, 1.f / std::sqrt(float(k)), dt);
            const Tensor b = bias ? randn({n}, 66, 0.f, 0.1f, dt) : Tensor();
            Case c{fmt::format("dense {}x{} -> {}{} {}", m, k, n, bias ? " +bias" : "", dtype_name(dt)), dt,
                   [&](const ops::Context& ctx) {
                       const ops::Dense d("d", w, b, dt, ctx);
                       return std::vector<Tensor>{ops::to_host(d.forward(ops::to_device(x, ctx), ctx), ctx)};
                   },
                   false, 1.0 / 128};  // bf16 GEMMs in another order: one output rounding apart
            const std::vector<Tensor> cpu = c.run(ops::Context{});
            const std::vector<double> xs = values(x), ws = values(w), bs = bias ? values(b) : std::vector<double>();
            std::vector<double> ref(size_t(m * n));
            for (int64_t i = 0; i < m; ++i)
                for (int64_t j = 0; j < n; ++j) {
                    double acc = bias ? bs[size_t(j)] : 0.0;
                    for (int64_t e = 0; e < k; ++e) acc += xs[size_t(i * k + e)] * ws[size_t(j * k + e)];
                    ref[size_t(i * n + j)] = acc;
                }
            EXPECT_LE(rel_max(cpu[0], ref), cpu_bound(dt)) << c.name;
            check_backends(c);
        }
    const ops::Dense d("layer.d", randn({4, 8}, 67, 0.f, 1.f, DType::F32), Tensor(), DType::F32, ops::Context{});
    try {
        d.forward(randn({2, 6}, 68, 0.f, 1.f, DType::F32), ops::Context{});
        ADD_FAILURE() << "6 features accepted by an 8-feature layer";
    } catch (const ShapeError& e) {
        EXPECT_NE(std::string(e.what()).find("dense layer.d"), std::string::npos) << e.what();
    }
}

// Exact elementwise ops of the VAE's ends: latents / scale + shift (each step rounded to the output
// dtype) and the uint8 image (values on rounding boundaries, out of range and NaN included).
TEST(Ops, DivAddAndImageToU8) {
    for (DType dt : kDtypes) {
        const Tensor lat = randn({2, 4, 3, 5}, 69, 0.f, 2.f, DType::F32);
        Tensor img = randn({2, 3, 7, 13}, 72, 0.f, 0.8f, DType::F32);
        float* p = img.data<float>();
        p[0] = -1.0f;
        p[1] = 1.0f;
        p[2] = 3.5f;
        p[3] = -2.0f;
        p[4] = std::nanf("");
        for (int i = 0; i < 20; ++i) p[5 + i] = 2.0f * (float(i) + 0.5f) / 255.0f - 1.0f;  // x·127.5 + 127.5 = i + .5
        const Tensor image = img.to(dt);
        const float scale = 0.3611f, shift = float(round_to(0.1159, dt));
        Case c{fmt::format("div_add, image_to_u8 {}", dtype_name(dt)), dt, [&](const ops::Context& ctx) {
                   return std::vector<Tensor>{
                       ops::to_host(ops::div_add(ops::to_device(lat, ctx), scale, shift, dt, ctx), ctx),
                       ops::to_host(ops::image_to_u8(ops::to_device(image, ctx), ctx), ctx)};
               }};
        const std::vector<Tensor> cpu = c.run(ops::Context{});
        const std::vector<double> ls = values(lat), is = values(image);
        std::vector<double> ref(ls.size()), u8(is.size());
        for (size_t i = 0; i < ls.size(); ++i)
            ref[i] = round_to(round_to(float(round_to(ls[i], dt)) / scale, dt) + shift, dt);
        const int64_t B = 2, C = 3, H = 7, W = 13;
        for (int64_t n = 0; n < B; ++n)
            for (int64_t ch = 0; ch < C; ++ch)
                for (int64_t i = 0; i < H * W; ++i) {
                    const double v = round_to(float(is[size_t((n * C + ch) * H * W + i)]) * 0.5f + 0.5f, dt);
                    const float u = std::isnan(v) ? 0.0f : float(std::min(1.0, std::max(0.0, v)));
                    u8[size_t(((n * H * W) + i) * C + ch)] = std::nearbyint(u * 255.0f);
                }
        EXPECT_EQ(rel_max(cpu[0], ref), 0.0);
        ASSERT_EQ(cpu[1].dtype(), DType::U8);
        for (size_t i = 0; i < u8.size(); ++i) ASSERT_EQ(double(cpu[1].data<uint8_t>()[i]), u8[i]) << "value " << i;
        check_backends(c);
    }
}

// The denoising loops' Euler step, with and without guidance, the velocity F32 or BF16, the next
// input F32 or BF16: on the CPU exactly the f32 expression the Z-Image pipeline evaluated on the
// host (v = pos + g·(pos − neg), v = −v, x + dt·v, each operation rounded once); on a GPU the
// CPU's bits (a fused multiply-add would change many of them).
TEST(Ops, EulerStep) {
    const float guidance = 2.5f, dt = -0.1364f;
    const Shape shape{37, 64};
    const Tensor x0 = randn(shape, 81, 0.f, 1.f, DType::F32);
    for (DType vdt : kDtypes)
        for (bool guided : {false, true})
            for (DType in_dt : kDtypes) {
                const Tensor pos = randn(shape, 82, 0.f, 1.5f, vdt);
                const Tensor neg = guided ? randn(shape, 83, 0.f, 1.5f, vdt) : Tensor();
                Case c{fmt::format("euler_step v {} {} x_in {}", dtype_name(vdt), guided ? "guided" : "plain",
                                   dtype_name(in_dt)),
                       DType::BF16, [&](const ops::Context& ctx) {
                           Tensor x = ops::to_device(x0.to(DType::F32), ctx);  // a copy: the step writes it
                           Tensor x_in = ops::empty(shape, in_dt, ctx);
                           ops::euler_step(x, ops::to_device(pos, ctx),
                                           guided ? ops::to_device(neg, ctx) : Tensor(), guidance, dt, &x_in, ctx);
                           return std::vector<Tensor>{ops::to_host(x, ctx), ops::to_host(x_in, ctx)};
                       }};
                SCOPED_TRACE(c.name);
                const std::vector<Tensor> cpu = c.run(ops::Context{});
                const Tensor p = pos.to(DType::F32), n = guided ? neg.to(DType::F32) : Tensor();
                Tensor want = x0.to(DType::F32);
                for (int64_t i = 0; i < want.numel(); ++i) {
                    float v = p.data<float>()[i];
                    if (guided) v = v + guidance * (v - n.data<float>()[i]);
                    v = -v;
                    want.data<float>()[i] = want.data<float>()[i] + dt * v;
                }
                EXPECT_TRUE(same_bits(cpu[0], want)) << bits_report(cpu[0], want);
                EXPECT_TRUE(same_bits(cpu[1], want.to(in_dt))) << bits_report(cpu[1], want.to(in_dt));
                check_backends(c);
            }
    // Without x_in, and the shape and dtype checks.
    Tensor x = x0.to(DType::F32);
    ops::euler_step(x, x0, Tensor(), 0.f, 0.5f, nullptr, ops::Context{});
    EXPECT_EQ(x.data<float>()[3], x0.data<float>()[3] + 0.5f * -x0.data<float>()[3]);
    Tensor bf = x0.to(DType::BF16);
    EXPECT_THROW(ops::euler_step(bf, x0, Tensor(), 0.f, 0.5f, nullptr, ops::Context{}), ShapeError);  // x not F32
    EXPECT_THROW(ops::euler_step(x, randn({37, 32}, 84), Tensor(), 0.f, 0.5f, nullptr, ops::Context{}), ShapeError);
    EXPECT_THROW(ops::euler_step(x, x0, bf, 1.f, 0.5f, nullptr, ops::Context{}), ShapeError);  // neg's dtype
}

// Qwen-Image's true CFG with the norm rescale and its rounded Euler step, with and without CFG, the
// pipeline's dtype F32 or BF16: on the CPU exactly the host expression QwenImagePipeline evaluated
// (every operation rounded to that dtype, the norms in f64 in column order); on a GPU the CPU's bits.
TEST(Ops, TrueCfgEulerStep) {
    const float scale = 4.0f, delta = -0.0713f;
    const Shape shape{45, 64};
    for (DType dt : kDtypes)
        for (bool guided : {false, true}) {
            const Tensor x0 = randn(shape, 91, 0.f, 1.f, dt).to(DType::F32);  // values of dt, as the pipeline keeps them
            const Tensor pos = randn(shape, 92, 0.f, 1.5f, dt), neg = guided ? randn(shape, 93, 0.f, 1.5f, dt) : Tensor();
            Case c{fmt::format("true_cfg_euler_step {} {}", dtype_name(dt), guided ? "guided" : "plain"), DType::BF16,
                   [&](const ops::Context& ctx) {
                       Tensor x = ops::to_device(x0.to(DType::F32), ctx);  // a copy: the step writes it
                       Tensor x_in = ops::empty(shape, dt, ctx);
                       ops::true_cfg_euler_step(x, ops::to_device(pos, ctx), guided ? ops::to_device(neg, ctx) : Tensor(),
                                                scale, delta, dt, &x_in, ctx);
                       return std::vector<Tensor>{ops::to_host(x, ctx), ops::to_host(x_in, ctx)};
                   }};
            SCOPED_TRACE(c.name);
            const std::vector<Tensor> cpu = c.run(ops::Context{});
            Tensor v = pos.to(DType::F32), want = x0.to(DType::F32);
            float* vp = v.data<float>();
            auto r = [&](float a) { return round_to_dtype(a, dt); };
            const int64_t L = shape[0], F = shape[1];
            if (guided) {
                const Tensor n = neg.to(DType::F32);
                for (int64_t tok = 0; tok < L; ++tok) {
                    float* cv = vp + tok * F;
                    const float* u = n.data<float>() + tok * F;
                    std::vector<float> comb(static_cast<size_t>(F));
                    double cond_sq = 0, comb_sq = 0;
                    for (int64_t f = 0; f < F; ++f) {
                        comb[size_t(f)] = r(u[f] + r(scale * r(cv[f] - u[f])));
                        cond_sq += double(cv[f]) * double(cv[f]);
                        comb_sq += double(comb[size_t(f)]) * double(comb[size_t(f)]);
                    }
                    const float ratio = r(r(float(std::sqrt(cond_sq))) / r(float(std::sqrt(comb_sq))));
                    for (int64_t f = 0; f < F; ++f) cv[f] = r(comb[size_t(f)] * ratio);
                }
            }
            for (int64_t k = 0; k < want.numel(); ++k)
                want.data<float>()[k] = r(want.data<float>()[k] + r(delta * vp[k]));
            EXPECT_TRUE(same_bits(cpu[0], want)) << bits_report(cpu[0], want);
            EXPECT_TRUE(same_bits(cpu[1], want.to(dt))) << bits_report(cpu[1], want.to(dt));
            check_backends(c);
        }
    Tensor x = randn({4, 8}, 94, 0.f, 1.f, DType::F32);
    EXPECT_THROW(ops::true_cfg_euler_step(x, x, Tensor(), 4.f, 0.1f, DType::F16, nullptr, ops::Context{}), ShapeError);
    Tensor flat = x.view({32});
    EXPECT_THROW(ops::true_cfg_euler_step(flat, flat, Tensor(), 4.f, 0.1f, DType::F32, nullptr, ops::Context{}),
                 ShapeError);
}

// A 2-D convolution, and a causal 3-D one on a single frame (the frame behind kt − 1 zero frames),
// against the f64 sums; forward_add adds to an accumulator.
TEST(Ops, Conv2d) {
    for (DType dt : kDtypes)
        for (auto [B, H, W, I, O, k, kt] : {std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t>{
                                                1, 5, 7, 8, 16, 3, 0},
                                            {2, 4, 6, 16, 8, 1, 0}, {1, 6, 5, 8, 8, 3, 3}, {2, 3, 4, 16, 24, 1, 1}}) {
            const bool causal = kt > 0;
            const Shape ws = causal ? Shape{O, I, kt, k, k} : Shape{O, I, k, k};
            const Tensor w = randn(ws, 60, 0.f, 1.f / std::sqrt(float(I * k * k)), dt), b = randn({O}, 61, 0.f, 0.1f, dt);
            const Tensor x = randn({B, H, W, I}, 62, 0.f, 1.f, dt), acc0 = randn({B, H, W, O}, 63, 0.f, 1.f, dt);
            Case c{fmt::format("conv2d{} B{} {}x{} {}->{} k{} {}", causal ? " causal3d" : "", B, H, W, I, O, k,
                               dtype_name(dt)),
                   dt,
                   [&](const ops::Context& ctx) {
                       const ops::Conv2d conv = causal ? ops::Conv2d::causal3d_single_frame("c", w, b, dt, ctx)
                                                       : ops::Conv2d("c", w, b, k / 2, dt, ctx);
                       const Tensor xd = ops::to_device(x, ctx);
                       Tensor acc = ops::to_device(acc0.to(dt), ctx);  // a copy: on the CPU to_device is the tensor itself
                       conv.forward_add(xd, acc, ctx);
                       return std::vector<Tensor>{ops::to_host(conv.forward(xd, ctx), ctx), ops::to_host(acc, ctx)};
                   },
                   false, 2e-2};
            const std::vector<Tensor> cpu = c.run(ops::Context{});
            const std::vector<double> xs = values(x), wv = values(w), bs = values(b), as = values(acc0);
            std::vector<double> ref(size_t(B * H * W * O)), ref_add(ref.size());
            const int64_t p = k / 2, T = causal ? kt : 1;
            for (int64_t n = 0; n < B; ++n)
                for (int64_t i = 0; i < H; ++i)
                    for (int64_t j = 0; j < W; ++j)
                        for (int64_t o = 0; o < O; ++o) {
                            double s = bs[size_t(o)];
                            // Temporal taps t < T − 1 read the zero frames: only t = T − 1 meets the input.
                            for (int64_t t = 0; t < T; ++t)
                                for (int64_t u = 0; u < k; ++u)
                                    for (int64_t v = 0; v < k; ++v) {
                                        const int64_t yi = i + u - p, xj = j + v - p;
                                        if (t != T - 1 || yi < 0 || yi >= H || xj < 0 || xj >= W) continue;
                                        for (int64_t q = 0; q < I; ++q)
                                            s += xs[size_t(((n * H + yi) * W + xj) * I + q)] *
                                                 wv[size_t((((o * I + q) * T + t) * k + u) * k + v)];
                                    }
                            const size_t at = size_t(((n * H + i) * W + j) * O + o);
                            ref[at] = s;
                            ref_add[at] = as[at] + round_to(s, dt);
                        }
            EXPECT_LE(rel_max(cpu[0], ref), cpu_bound(dt)) << c.name;
            EXPECT_LE(rel_max(cpu[1], ref_add), cpu_bound(dt)) << c.name;
            check_backends(c);
        }
    const ops::Conv2d conv("layer.x", randn({4, 8, 3, 3}, 64), Tensor(), 1, DType::F32, ops::Context{});
    try {
        conv.forward(randn({1, 4, 4, 6}, 65, 0.f, 1.f, DType::F32), ops::Context{});
        ADD_FAILURE() << "6 channels accepted by an 8-channel convolution";
    } catch (const ShapeError& e) {
        EXPECT_NE(std::string(e.what()).find("conv2d layer.x"), std::string::npos) << e.what();
    }
}

// Exact moves: NCHW <-> channels-last, nearest 2x upsampling, and the residual add (one rounding).
TEST(Ops, ImageLayoutUpsampleAdd) {
    for (DType dt : kDtypes) {
        const int64_t B = 2, C = 5, H = 3, W = 4;
        const Tensor x = randn({B, C, H, W}, 70, 0.f, 1.f, dt), y = randn({B, H, W, C}, 71, 0.f, 1.f, dt);
        Case c{fmt::format("channels-last, upsample 2x, add {}", dtype_name(dt)), dt, [&](const ops::Context& ctx) {
                   const Tensor nhwc = ops::to_channels_last(ops::to_device(x, ctx), dt, ctx);
                   const Tensor back = ops::to_channels_first(nhwc, ctx);
                   const Tensor up = ops::upsample_nearest_2x(nhwc, ctx);
                   Tensor sum = ops::to_device(y.to(dt), ctx);  // a copy: the add writes into it
                   ops::add_inplace(sum, nhwc, ctx);
                   return std::vector<Tensor>{ops::to_host(nhwc, ctx), ops::to_host(back, ctx), ops::to_host(up, ctx),
                                              ops::to_host(sum, ctx)};
               }};
        const std::vector<Tensor> cpu = c.run(ops::Context{});
        const std::vector<double> xs = values(x), ys = values(y);
        std::vector<double> nhwc(xs.size()), up(xs.size() * 4), sum(xs.size());
        for (int64_t n = 0; n < B; ++n)
            for (int64_t ch = 0; ch < C; ++ch)
                for (int64_t i = 0; i < H; ++i)
                    for (int64_t j = 0; j < W; ++j) {
                        const double v = xs[size_t(((n * C + ch) * H + i) * W + j)];
                        const size_t at = size_t(((n * H + i) * W + j) * C + ch);
                        nhwc[at] = v;
                        sum[at] = round_to(ys[at] + v, dt);
                        for (int64_t di = 0; di < 2; ++di)
                            for (int64_t dj = 0; dj < 2; ++dj)
                                up[size_t(((n * 2 * H + 2 * i + di) * 2 * W + 2 * j + dj) * C + ch)] = v;
                    }
        EXPECT_EQ(rel_max(cpu[0], nhwc), 0.0);
        EXPECT_EQ(rel_max(cpu[1], xs), 0.0);
        EXPECT_EQ(rel_max(cpu[2], up), 0.0);
        EXPECT_EQ(rel_max(cpu[3], sum), 0.0);
        check_backends(c);
    }
}

// Single-head attention over image positions, head dim = the channel count (here past 256, as the
// real Qwen-Image VAE's 384).
TEST(Ops, SpatialAttention) {
    for (DType dt : kDtypes)
        for (auto [B, L, C] : {std::tuple<int64_t, int64_t, int64_t>{1, 6, 8}, {2, 20, 32}, {1, 12, 384}}) {
            const Tensor qkv = randn({B * L, 3 * C}, 80, 0.f, 0.5f, dt);
            Case c{fmt::format("spatial_attention B{} L{} C{} {}", B, L, C, dtype_name(dt)), dt,
                   [&](const ops::Context& ctx) {
                       return std::vector<Tensor>{
                           ops::to_host(ops::spatial_attention(ops::to_device(qkv, ctx), B, ctx), ctx)};
                   },
                   false, 2e-2};
            const std::vector<Tensor> cpu = c.run(ops::Context{});
            const std::vector<double> x = values(qkv);
            std::vector<double> ref(size_t(B * L * C), 0.0);
            for (int64_t b = 0; b < B; ++b)
                for (int64_t i = 0; i < L; ++i) {
                    std::vector<double> s(static_cast<size_t>(L));
                    for (int64_t j = 0; j < L; ++j) {
                        double d = 0;
                        for (int64_t e = 0; e < C; ++e)
                            d += x[size_t((b * L + i) * 3 * C + e)] * x[size_t((b * L + j) * 3 * C + C + e)];
                        s[size_t(j)] = d / std::sqrt(double(C));
                    }
                    const double mx = *std::max_element(s.begin(), s.end());
                    double z = 0;
                    for (double& v : s) z += (v = std::exp(v - mx));
                    for (int64_t j = 0; j < L; ++j)
                        for (int64_t e = 0; e < C; ++e)
                            ref[size_t((b * L + i) * C + e)] += s[size_t(j)] / z * x[size_t((b * L + j) * 3 * C + 2 * C + e)];
                }
            EXPECT_LE(rel_max(cpu[0], ref), cpu_bound(dt)) << c.name;
            check_backends(c);
        }
}
