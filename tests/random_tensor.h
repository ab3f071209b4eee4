// Test helper: a tensor of N(mean, stdv) values drawn from mt19937(seed) in f32, converted to dt.
#pragma once
#include <cstdint>
#include <random>
#include <utility>

#include "core/tensor.h"

namespace qdit::testutil {

inline Tensor randn(Shape s, uint32_t seed, float mean = 0.f, float stdv = 1.f, DType dt = DType::BF16) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> d(mean, stdv);
    Tensor t = Tensor::empty(std::move(s), DType::F32);
    for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = d(rng);
    return t.to(dt);
}

}  // namespace qdit::testutil
