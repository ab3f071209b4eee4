// What the CUDA step benchmarks print about an output: an FNV-1a hash of its bf16 bits (equal hashes:
// bit-identical outputs, how kernel changes that claim to keep the arithmetic are checked against the
// previous build), its rms and whether every value is finite; the SQNR of one output against another.
#pragma once
#include <cmath>
#include <cstdint>

#include "core/tensor.h"

namespace qdit::bench {

struct OutputStats {
    uint64_t hash = 1469598103934665603ull;
    double rms = 0;
    bool finite = true;
};

// t: a host BF16 tensor.
inline OutputStats output_stats(const Tensor& t) {
    OutputStats s;
    for (int64_t i = 0; i < t.numel(); ++i) s.hash = (s.hash ^ t.data<uint16_t>()[i]) * 1099511628211ull;
    const Tensor f = t.to(DType::F32);
    double ss = 0;
    for (int64_t i = 0; i < f.numel(); ++i) {
        s.finite = s.finite && std::isfinite(f.data<float>()[i]);
        ss += double(f.data<float>()[i]) * f.data<float>()[i];
    }
    s.rms = std::sqrt(ss / double(f.numel()));
    return s;
}

// 10·log10(Σ ref² / Σ (x − ref)²) over host tensors of one shape (any float dtype); inf when equal.
inline double sqnr_db(const Tensor& ref, const Tensor& x) {
    const Tensor a = ref.to(DType::F32), b = x.to(DType::F32);
    double s = 0, n = 0;
    for (int64_t i = 0; i < a.numel(); ++i) {
        const double r = a.data<float>()[i], d = double(b.data<float>()[i]) - r;
        s += r * r;
        n += d * d;
    }
    return n > 0 ? 10 * std::log10(s / n) : INFINITY;
}

}  // namespace qdit::bench
