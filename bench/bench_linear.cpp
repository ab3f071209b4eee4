// Linear layer on the CPU at Z-Image widths: our int8 W8A8 path against
// oneDNN (int8, f32, bf16) and OpenBLAS sgemm. Counter GOPS = 2*M*N*K / s / 1e9.
// The label names the engine that ran: our kernel path (QDIT_CPU_ISA picks
// another) or oneDNN's implementation (ONEDNN_MAX_CPU_ISA limits it).
//   bench_linear --benchmark_min_time=0.5
#include <benchmark/benchmark.h>

#include <random>
#include <string>
#include <vector>

#include <oneapi/dnnl/dnnl.hpp>
#ifdef QDIT_HAVE_CBLAS
#include <cblas.h>
#endif

#include "backend/cpu/int8_gemm.h"
#include "nn/linear.h"
#include "backend/cpu/quantize.h"
#include "quant/int8.h"

using namespace qdit;

namespace {

Tensor random_f32(Shape s, unsigned seed, float sd) {
    Tensor t = Tensor::empty(std::move(s), DType::F32);
    std::mt19937 rng(seed);
    std::normal_distribution<float> d(0.f, sd);
    for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = d(rng);
    return t;
}

struct Shapes {
    int64_t m, k, n;
    explicit Shapes(const benchmark::State& st) : m(st.range(0)), k(st.range(1)), n(st.range(2)) {}
};

void set_ops(benchmark::State& st, const Shapes& s) {
    st.counters["GOPS"] = benchmark::Counter(2e-9 * double(s.m) * double(s.n) * double(s.k),
                                             benchmark::Counter::kIsIterationInvariantRate);
}

void int8_gemm(benchmark::State& st, cpu::Isa isa) {
    if (!cpu::isa_supported(isa)) {
        st.SkipWithError((std::string(cpu::isa_name(isa)) + " is not supported by this CPU").c_str());
        return;
    }
    Shapes s(st);
    Tensor q, sw;
    cpu::quantize_weight_int8(random_f32({s.n, s.k}, 1, 0.02f), &q, &sw);
    auto packed = cpu::pack_int8_weight(q, sw);
    Tensor x = random_f32({s.m, s.k}, 2, 1.f);
    Tensor qx = Tensor::empty({s.m, s.k}, DType::I8);  // 64-byte aligned, as nn::Linear's
    std::vector<float> sx(static_cast<size_t>(s.m)), bias(static_cast<size_t>(s.n), 0.5f);
    cpu::quantize_rows_int8(x.raw(), DType::F32, s.m, s.k, s.k, qx.data<int8_t>(), sx.data());
    Tensor y = Tensor::empty({s.m, s.n}, DType::BF16);
    for (auto _ : st)
        cpu::int8_gemm(qx.data<int8_t>(), sx.data(), s.m, packed, bias.data(), y.raw(), DType::BF16, s.n, isa);
    set_ops(st, s);
    st.SetLabel(cpu::isa_name(isa));
}

void BM_Int8Gemm(benchmark::State& st) { int8_gemm(st, cpu::best_isa()); }
// The AVX-512 VNNI path, beside AMX in the same run on CPUs that have both.
void BM_Int8GemmVnni(benchmark::State& st) { int8_gemm(st, cpu::Isa::Avx512Vnni); }

void BM_QuantizeActivations(benchmark::State& st, DType dt) {
    Shapes s(st);
    Tensor x = random_f32({s.m, s.k}, 3, 1.f).to(dt);
    std::vector<int8_t> q(size_t(s.m * s.k));
    std::vector<float> sx(static_cast<size_t>(s.m));
    for (auto _ : st) cpu::quantize_rows_int8(x.raw(), dt, s.m, s.k, s.k, q.data(), sx.data());
    st.SetBytesProcessed(int64_t(st.iterations()) * int64_t(x.nbytes()));
}

void BM_Int8Linear(benchmark::State& st) {
    Shapes s(st);
    Tensor q, sw;
    cpu::quantize_weight_int8(random_f32({s.n, s.k}, 1, 0.02f), &q, &sw);
    nn::Linear lin = nn::Linear::int8("bench", q, sw, random_f32({s.n}, 4, 1.f));
    Tensor x = random_f32({s.m, s.k}, 2, 1.f).to(DType::BF16);
    for (auto _ : st) benchmark::DoNotOptimize(lin.forward(x));
    set_ops(st, s);
    st.SetLabel(cpu::isa_name(cpu::best_isa()));
}

// oneDNN matmul with weights in oneDNN's preferred layout (reordered once),
// which is its best case.
void onednn_matmul(benchmark::State& st, dnnl::memory::data_type src_t, dnnl::memory::data_type wei_t,
                   dnnl::memory::data_type dst_t, bool int8_scales) {
    using dt = dnnl::memory::data_type;
    using tag = dnnl::memory::format_tag;
    Shapes s(st);
    dnnl::engine eng(dnnl::engine::kind::cpu, 0);
    dnnl::stream strm(eng);
    dnnl::memory::desc src_md({s.m, s.k}, src_t, tag::ab), wei_any({s.k, s.n}, wei_t, tag::any),
        wei_user({s.k, s.n}, wei_t, tag::ba), bias_md({1, s.n}, dt::f32, tag::ab),
        dst_md({s.m, s.n}, dst_t, tag::ab);
    dnnl::primitive_attr attr;
    if (int8_scales) attr.set_output_scales(1 << 1, std::vector<float>(size_t(s.n), 1e-4f));
    dnnl::matmul::primitive_desc pd;
    try {
        pd = dnnl::matmul::primitive_desc(dnnl::matmul::desc(src_md, wei_any, bias_md, dst_md), attr, eng);
    } catch (const dnnl::error& e) {
        st.SkipWithError(e.what());
        return;
    }
    // The reference kernels take minutes at these sizes and say nothing.
    const std::string impl = pd.impl_info_str();
    if (impl.rfind("ref", 0) == 0) {
        st.SkipWithError(("only oneDNN's reference kernel: " + impl).c_str());
        return;
    }
    dnnl::memory src(src_md, eng), wei_u(wei_user, eng), wei(pd.weights_desc(), eng), bias(bias_md, eng),
        dst(dst_md, eng);
    // Fill with bytes that are valid for every dtype used here (small values).
    std::mt19937 rng(5);
    for (auto* m : {&src, &wei_u}) {
        auto* p = static_cast<uint8_t*>(m->get_data_handle());
        const size_t bytes = m->get_desc().get_size();
        const bool f32 = m->get_desc().data_type() == dt::f32, bf16 = m->get_desc().data_type() == dt::bf16;
        std::uniform_int_distribution<int> d(-100, 100);
        for (size_t i = 0; i < bytes;) {
            if (f32) { float v = d(rng) * 0.01f; std::memcpy(p + i, &v, 4); i += 4; }
            else if (bf16) { uint16_t v = f32_to_bf16(d(rng) * 0.01f); std::memcpy(p + i, &v, 2); i += 2; }
            else p[i++] = uint8_t(d(rng));
        }
    }
    std::memset(bias.get_data_handle(), 0, bias_md.get_size());
    dnnl::reorder(wei_u, wei).execute(strm, wei_u, wei);
    std::unordered_map<int, dnnl::memory> args{
        {DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_BIAS, bias}, {DNNL_ARG_DST, dst}};
    for (auto _ : st) {
        dnnl::matmul(pd).execute(strm, args);
        strm.wait();
    }
    set_ops(st, s);
    st.SetLabel(pd.impl_info_str());
}

void BM_OnednnInt8(benchmark::State& st) {
    using dt = dnnl::memory::data_type;
    onednn_matmul(st, dt::u8, dt::s8, dt::f32, true);
}
// Signed activations, as the W8A8 contract has them (AMX multiplies s8 x s8 directly).
void BM_OnednnInt8S8(benchmark::State& st) {
    using dt = dnnl::memory::data_type;
    onednn_matmul(st, dt::s8, dt::s8, dt::f32, true);
}
void BM_OnednnF32(benchmark::State& st) {
    using dt = dnnl::memory::data_type;
    onednn_matmul(st, dt::f32, dt::f32, dt::f32, false);
}
void BM_OnednnBf16(benchmark::State& st) {
    using dt = dnnl::memory::data_type;
    onednn_matmul(st, dt::bf16, dt::bf16, dt::bf16, false);
}

#ifdef QDIT_HAVE_CBLAS
void BM_OpenblasSgemm(benchmark::State& st) {
    Shapes s(st);
    Tensor x = random_f32({s.m, s.k}, 2, 1.f), w = random_f32({s.n, s.k}, 1, 0.02f);
    Tensor y = Tensor::empty({s.m, s.n}, DType::F32);
    for (auto _ : st)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(s.m), int(s.n), int(s.k), 1.f,
                    x.data<float>(), int(s.k), w.data<float>(), int(s.k), 0.f, y.data<float>(), int(s.n));
    set_ops(st, s);
}
#endif

void shapes(benchmark::internal::Benchmark* b) {
    b->ArgNames({"M", "K", "N"});
    b->Args({256, 3840, 3840})->Args({256, 3840, 10240})->Args({256, 10240, 3840});
    b->Unit(benchmark::kMillisecond)->UseRealTime();
}

}  // namespace

BENCHMARK(BM_Int8Gemm)->Apply(shapes);
BENCHMARK(BM_Int8GemmVnni)->Apply(shapes);
BENCHMARK_CAPTURE(BM_QuantizeActivations, bf16, DType::BF16)->Apply(shapes);
BENCHMARK_CAPTURE(BM_QuantizeActivations, f32, DType::F32)->Apply(shapes);
BENCHMARK(BM_Int8Linear)->Apply(shapes);
BENCHMARK(BM_OnednnInt8)->Apply(shapes);
BENCHMARK(BM_OnednnInt8S8)->Apply(shapes);
#ifdef QDIT_HAVE_CBLAS
BENCHMARK(BM_OpenblasSgemm)->Apply(shapes);
#endif
BENCHMARK(BM_OnednnF32)->Apply(shapes);
BENCHMARK(BM_OnednnBf16)->Apply(shapes);

BENCHMARK_MAIN();
