#ifdef QDIT_WITH_CUDA  // a CUDA build: this file is empty without the CUDA backend
#include "nn/linear_cuda.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <functional>

#include <cuda_bf16.h>

#include "backend/cuda/lt_gemm.h"
#include "backend/cuda/pinned.h"
#include "backend/cuda/int8_gemm.h"
#include "backend/cuda/int8_weight_only.h"
#include "backend/cuda/random.h"
#include "backend/cuda/row.h"
#include "backend/cuda/weight_load.h"
#include "nn/load.h"
#include "nn/load_cuda.h"

namespace qdit::nn::gpu {

using cuda::DTensor;
using cuda::MemKind;

namespace {

// Rows [r0, r0 + n) and columns [0, kc) of dst [*, kdst] ← the window of src [N, K] at rows
// [sr0, sr0 + n), columns [sc0, sc0 + kc), clipped to src (the rest of dst stays as it is: zeros).
void copy_block(const Tensor& src, Tensor& dst, int64_t r0, int64_t kdst, int64_t sr0, int64_t sc0, int64_t n,
                int64_t kc) {
    const int64_t N = src.size(0), K = src.size(1);
    const int64_t rows = std::max<int64_t>(0, std::min(n, N - sr0)), cols = std::max<int64_t>(0, std::min(kc, K - sc0));
    const size_t es = dtype_size(src.dtype());
    for (int64_t r = 0; r < rows; ++r)
        std::memcpy(static_cast<uint8_t*>(dst.raw()) + size_t((r0 + r) * kdst) * es,
                    static_cast<const uint8_t*>(src.raw()) + size_t((sr0 + r) * K + sc0) * es, size_t(cols) * es);
}

// make_part from the checkpoint through the reader: the members' stored tensors go to the device
// and are cut (window), converted and quantized there into the part's zero-padded buffers, exactly
// as the host path below does it (scales of padded rows 1, biases of padded rows 0).
void read_part(Part& p, const std::vector<Member>& ms, int64_t k, int64_t kp, bool any_bias, CheckpointReader& rd) {
    const cudaStream_t s = rd.stream();
    const int64_t kw = p.int8 ? kp : k;
    DTensor w = DTensor::zeros({p.n, kw}, p.int8 ? DType::I8 : DType::BF16, MemKind::Weight, s);
    DTensor scale, bias;
    if (p.int8) {
        scale = DTensor::empty({p.n}, DType::F32, MemKind::Weight);
        cuda::check(cuda::fill_f32(scale.data<float>(), p.n, 1.f, s), "weight load");
    }
    if (any_bias) bias = DTensor::zeros({p.n}, p.int8 ? DType::F32 : DType::BF16, MemKind::Weight, s);
    const size_t wes = dtype_size(w.dtype()), bes = any_bias ? dtype_size(bias.dtype()) : 0;
    int64_t r0 = 0;
    for (const Member& m : ms) {
        const LinearSpec& spec = m.plan->spec;
        const std::string& name = spec.name;
        const TensorInfo& wi = rd.checkpoint().info(name + ".weight");
        if (wi.shape != Shape{spec.out_features, spec.in_features})
            raise<ShapeError>("{}: weight is {}, expected [{}, {}]", name, shape_str(wi.shape), spec.out_features,
                              spec.in_features);
        if (m.plan->prequantized && !p.int8)
            raise<ShapeError>("{}: stored as int8, but planned in high precision", name);
        const int64_t N = spec.out_features, K = spec.in_features;
        const int64_t rows = std::max<int64_t>(0, std::min(m.n_pad, N - m.r0)),
                      cols = std::max<int64_t>(0, std::min(k, K - m.c0));
        char* wdst = static_cast<char*>(w.raw()) + size_t(r0 * kw) * wes;
        if (rows > 0 && cols > 0 && !p.int8 && wi.dtype == DType::BF16 && m.r0 == 0 && m.c0 == 0 && K == kw) {
            // Stored as used: the rows go straight into place.
            const TensorBytes b = rd.checkpoint().bytes_of(name + ".weight");
            rd.copy_bytes(b, size_t(rows * K) * wes, wdst);
        } else if (rows > 0) {
            const DTensor raw = rd.stored(name + ".weight");
            rd.begin_convert();
            if (m.plan->prequantized) {
                if (cols > 0)
                    cuda::check(cudaMemcpy2DAsync(wdst, size_t(kw), raw.data<int8_t>() + m.r0 * K + m.c0, size_t(K),
                                                  size_t(cols), size_t(rows), cudaMemcpyDeviceToDevice, s),
                                "weight load");
            } else if (p.int8) {
                cuda::check(cuda::quantize_window_int8(raw.raw(), raw.dtype(), K, m.r0, m.c0, rows, cols,
                                                       reinterpret_cast<int8_t*>(wdst), kw, scale.data<float>() + r0, s),
                            "weight quantization");
            } else {
                cuda::check(cuda::convert_window(raw.raw(), raw.dtype(), K, m.r0, m.c0, rows, cols, wdst, DType::BF16,
                                                 kw, s),
                            "weight conversion");
            }
            rd.end_convert();
        }
        // Per-row vectors: the stored scale of a pre-quantized weight, the bias.
        auto vector = [&](const std::string& key, void* dst, DType dt) {
            if (rows == 0) return;
            const DTensor raw = rd.stored(key);
            if (raw.numel() != N)
                raise<ShapeError>("{}: '{}' has {} values, expected {}", name, key, raw.numel(), N);
            rd.begin_convert();
            cuda::check(cuda::convert_window(raw.raw(), raw.dtype(), 1, m.r0, 0, rows, 1, dst, dt, 1, s),
                        "weight conversion");
            rd.end_convert();
        };
        if (m.plan->prequantized) vector(name + ".weight_scale", scale.data<float>() + r0, DType::F32);
        if (spec.bias) vector(name + ".bias", static_cast<char*>(bias.raw()) + size_t(r0) * bes, bias.dtype());
        r0 += m.n_pad;
    }
    (p.int8 ? p.q : p.w) = w;
    p.wscale = scale;
    p.bias = bias;
}

Part make_part(const std::vector<Member>& ms, bool int8, int64_t k, int64_t kp, int64_t col, const WeightSource& src) {
    Part p;
    p.int8 = int8;
    p.col = col;
    for (const Member& m : ms) p.n += m.n_pad;
    const bool any_bias = std::any_of(ms.begin(), ms.end(), [](const Member& m) { return m.plan->spec.bias; });
    cudaStream_t s = src.stream;
    if (src.checkpoint && src.reader) {
        read_part(p, ms, k, kp, any_bias, *src.reader);
        return p;
    }
    if (src.checkpoint) {
        // Concatenate on the host, zero-padded; scales of padded rows are 1.
        Tensor wcat = Tensor::zeros({p.n, int8 ? kp : k}, int8 ? DType::I8 : DType::BF16);
        Tensor scat = Tensor::empty({p.n}, DType::F32), bcat = Tensor::zeros({p.n}, DType::F32);
        for (int64_t i = 0; i < p.n; ++i) scat.data<float>()[i] = 1.f;
        int64_t r0 = 0;
        for (const Member& m : ms) {
            const auto [w, scale, bias] = host_weights(*src.checkpoint, *m.plan, DType::BF16);
            copy_block(w, wcat, r0, int8 ? kp : k, m.r0, m.c0, m.n_pad, k);
            const int64_t rows = std::max<int64_t>(0, std::min(m.n_pad, w.size(0) - m.r0));
            if (int8) std::memcpy(scat.data<float>() + r0, scale.data<float>() + m.r0, size_t(rows) * 4);
            if (bias.defined())
                std::memcpy(bcat.data<float>() + r0, bias.to(DType::F32).data<float>() + m.r0, size_t(rows) * 4);
            r0 += m.n_pad;
        }
        if (int8) {
            p.q = DTensor::upload(wcat, MemKind::Weight, s);
            p.wscale = DTensor::upload(scat, MemKind::Weight, s);
        } else {
            p.w = DTensor::upload(wcat, MemKind::Weight, s);
        }
        if (any_bias) p.bias = DTensor::upload(int8 ? bcat : bcat.to(DType::BF16), MemKind::Weight, s);
        return p;
    }
    // Random: bf16 N(0, 0.02) on the device, padding zeroed, quantized there when int8.
    DTensor w = DTensor::empty({p.n, k}, DType::BF16, int8 ? MemKind::Activation : MemKind::Weight);
    const uint64_t seed = src.seed ^ std::hash<std::string>()(ms[0].plan->spec.name);
    cuda::fill_normal_bf16(w.raw(), w.numel(), seed, 0.f, 0.02f, s);
    int64_t r0 = 0;
    for (const Member& m : ms) {
        // Real rows and input columns inside the member's window; the rest is zero padding.
        const int64_t real = std::clamp<int64_t>(m.plan->spec.out_features - m.r0, 0, m.n_pad),
                      kin = std::clamp<int64_t>(m.plan->spec.in_features - m.c0, 0, k);
        if (m.n_pad > real)
            cuda::check(cudaMemsetAsync(w.rows(r0 + real, r0 + m.n_pad).raw(), 0, size_t((m.n_pad - real) * k) * 2, s),
                        "random weights");
        if (k > kin && real > 0)
            cuda::check(cudaMemset2DAsync(static_cast<__nv_bfloat16*>(w.rows(r0, r0 + real).raw()) + kin, size_t(k) * 2,
                                          0, size_t(k - kin) * 2, size_t(real), s),
                        "random weights");
        r0 += m.n_pad;
    }
    if (any_bias) {
        p.bias = DTensor::empty({p.n}, DType::BF16, MemKind::Weight);
        cuda::fill_normal_bf16(p.bias.raw(), p.bias.numel(), src.seed + 7, 0.f, 0.02f, s);
        if (int8) {
            // The int8 epilogue takes an F32 bias: widen on the host (small).
            Tensor b = p.bias.download(s).to(DType::F32);
            p.bias = DTensor::upload(b, MemKind::Weight, s);
        }
    }
    if (!int8) {
        p.w = w;
        return p;
    }
    p.q = DTensor::empty({p.n, kp}, DType::I8, MemKind::Weight);
    p.wscale = DTensor::empty({p.n}, DType::F32, MemKind::Weight);
    cuda::quantize_rows(w.raw(), k, p.n, k, p.q.data<int8_t>(), kp, p.wscale.data<float>(), s);
    cuda::check(cudaStreamSynchronize(s), "random weights");  // w goes back to the cache next
    return p;
}

}  // namespace

bool Group::needs_bf16() const {
    return std::any_of(parts.begin(), parts.end(), [](const Part& p) { return !p.int8 || p.weight_only; });
}
bool Group::needs_int8() const {
    return std::any_of(parts.begin(), parts.end(), [](const Part& p) { return p.int8 && !p.weight_only; });
}
size_t Group::bytes() const {
    size_t b = 0;
    for (const Part& p : parts)
        for (const DTensor* t : {&p.w, &p.q, &p.wscale, &p.bias})
            if (t->defined()) b += t->nbytes();
    return b;
}

// The tensors of a group's parts, each in its own page-locked host tensor.
struct Group::HostCopy {
    struct Slot {
        size_t part;
        int field;    // index into fields()
        Tensor data;  // page-locked, the tensor's shape and dtype
    };
    std::vector<Slot> slots;
};

namespace {
std::array<DTensor*, 4> fields(Part& p) { return {&p.w, &p.q, &p.wscale, &p.bias}; }
}  // namespace

size_t Group::host_bytes() const {
    size_t b = 0;
    if (host)
        for (const auto& sl : host->slots) b += sl.data.nbytes();
    return b;
}

void move_to_host(Group& g, cudaStream_t s) {
    if (g.host) return;
    auto h = std::make_shared<Group::HostCopy>();
    for (size_t i = 0; i < g.parts.size(); ++i) {
        const auto f = fields(g.parts[i]);
        for (int j = 0; j < int(f.size()); ++j) {
            const DTensor& t = *f[size_t(j)];
            if (!t.defined()) continue;
            h->slots.push_back({i, j, cuda::pinned_host_tensor(t.shape(), t.dtype())});
            cuda::check(cudaMemcpyAsync(h->slots.back().data.raw(), t.raw(), t.nbytes(), cudaMemcpyDeviceToHost, s),
                        "copying a Linear group's weights to the host");
        }
    }
    cuda::check(cudaStreamSynchronize(s), "copying a Linear group's weights to the host");
    for (Part& p : g.parts)
        for (DTensor* t : fields(p)) *t = DTensor();
    g.host = std::move(h);
}

namespace {

// g's weights on the device again, in activation memory for the work queued on s.
Group upload(const Group& g, cudaStream_t s) {
    Group d = g;
    d.host = nullptr;
    for (const auto& sl : g.host->slots) {
        DTensor& t = *fields(d.parts[sl.part])[size_t(sl.field)];
        t = DTensor::empty(sl.data.shape(), sl.data.dtype(), MemKind::Activation, s);
        cuda::check(cudaMemcpyAsync(t.raw(), sl.data.raw(), t.nbytes(), cudaMemcpyHostToDevice, s),
                    "uploading a Linear group's weights");
    }
    return d;
}

}  // namespace

void run_group(const Group& g, const Input& in, int64_t m, void* y, int64_t ldy, cudaStream_t s) {
    if (g.host) {
        run_group(upload(g, s), in, m, y, ldy, s);
        return;
    }
    if (g.needs_int8() && !in.q.defined()) {
        // A producer that does not quantize (an embedder's input, the timestep or modulation vector,
        // an attention output): the rows are quantized per token here, as the CPU's Linear does.
        Input q = in;
        q.q = DTensor::empty({m, g.kp}, DType::I8);
        q.qs = DTensor::empty({m}, DType::F32);
        cuda::quantize_rows(in.x.raw(), in.ldx, m, g.k, q.q.data<int8_t>(), g.kp, q.qs.data<float>(), s);
        run_group(g, q, m, y, ldy, s);
        return;
    }
    for (const Part& p : g.parts) {
        void* yp = static_cast<__nv_bfloat16*>(y) + p.col;
        if (p.weight_only)
            cuda::int8_weight_only_gemm(in.x.raw(), in.ldx, p.q.data<int8_t>(), g.kp, p.wscale.data<float>(),
                                        p.bias.defined() ? p.bias.data<float>() : nullptr, yp, ldy, m, p.n, g.k, s);
        else if (p.int8)
            cuda::int8_gemm_bf16(in.q.data<int8_t>(), g.kp, in.qs.data<float>(), p.q.data<int8_t>(), g.kp,
                                 p.wscale.data<float>(), p.bias.defined() ? p.bias.data<float>() : nullptr, yp, ldy,
                                 m, p.n, g.kp, s);
        else
            cuda::bf16_gemm(in.x.raw(), in.ldx, p.w.raw(), g.k, p.bias.defined() ? p.bias.raw() : nullptr, yp, ldy,
                            m, p.n, g.k, s);
    }
}

Group make_group(const std::vector<Member>& ms, int64_t k, const WeightSource& src) {
    // The plan is checked against the device here, at load time: an int8 layer on a GPU that no
    // int8 GEMM kernel of this build runs on is refused now rather than at the first step.
    for (const Member& m : ms)
        if (m.plan->precision == Precision::Int8 &&
            std::none_of(cuda::int8_gemm_kernels().begin(), cuda::int8_gemm_kernels().end(),
                         cuda::int8_gemm_kernel_available)) {
            int dev = 0, major = 0, minor = 0;
            cudaGetDevice(&dev);
            cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
            cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
            raise<ConfigError>("{}: int8 is planned, but no int8 GEMM kernel of this build runs on CUDA device {} "
                               "(compute capability {}.{}); build with QDIT_INT8_SM80_ARCHS=80-virtual (PTX for "
                               "later GPUs) or keep the layer in high precision (--quantization none, or "
                               "ignored_layers)",
                               m.plan->spec.name, dev, major, minor);
        }
    Group g;
    g.k = k;
    g.kp = round_up(k, 16);
    for (const Member& m : ms) {
        if (m.k_pad != k ||
            (!m.shard && (m.r0 || m.c0 || m.plan->spec.in_features > k || m.n_pad < m.plan->spec.out_features)) ||
            (m.shard && (m.r0 < 0 || m.c0 < 0 || m.n_pad < 1)))
            raise<ShapeError>("{}: [{}, {}] read with {} inputs (padded to {}) in a group of {} inputs{}",
                              m.plan->spec.name, m.plan->spec.out_features, m.plan->spec.in_features,
                              m.plan->spec.in_features, m.k_pad, k,
                              m.shard ? fmt::format(" (shard: rows from {}, columns from {}, {} rows)", m.r0, m.c0, m.n_pad)
                                      : std::string());
        g.n += m.n_pad;
    }
    size_t i = 0;
    int64_t col = 0;
    while (i < ms.size()) {
        const Precision prec = ms[i].plan->precision;
        std::vector<Member> run;
        while (i < ms.size() && ms[i].plan->precision == prec) run.push_back(ms[i++]);
        g.parts.push_back(make_part(run, int8_weights(prec), g.k, g.kp, col, src));
        g.parts.back().weight_only = prec == Precision::Int8WeightOnly;
        col += g.parts.back().n;
    }
    return g;
}

}  // namespace qdit::nn::gpu

#endif  // QDIT_WITH_CUDA
