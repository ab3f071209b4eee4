// Error statistics of a test output against a reference (any float dtypes, same shape), shared by
// the model tests.
#pragma once
#include <algorithm>
#include <cmath>

#include <gtest/gtest.h>

#include "core/tensor.h"

namespace qdit::testutil {

struct Err {
    double max_abs = 0, max_ref = 0, sum_ref2 = 0, sum_err2 = 0;
    double rel_l2() const { return std::sqrt(sum_err2 / sum_ref2); }
    double sqnr_db() const { return 10.0 * std::log10(sum_ref2 / sum_err2); }
    // Pools another comparison's statistics into this one.
    void add(const Err& o) {
        max_abs = std::max(max_abs, o.max_abs);
        max_ref = std::max(max_ref, o.max_ref);
        sum_ref2 += o.sum_ref2;
        sum_err2 += o.sum_err2;
    }
};

// Element-wise error of `test` against `ref` (same shape; every value of test finite).
inline Err compare(const Tensor& test, const Tensor& ref) {
    Err e;
    EXPECT_EQ(test.shape(), ref.shape());
    if (test.shape() != ref.shape()) return e;
    const Tensor a32 = test.to(DType::F32), r32 = ref.to(DType::F32);
    const float *a = a32.data<float>(), *r = r32.data<float>();
    for (int64_t i = 0; i < r32.numel(); ++i) {
        const double d = double(a[i]) - double(r[i]);
        EXPECT_TRUE(std::isfinite(a[i])) << "element " << i;
        e.max_abs = std::max(e.max_abs, std::abs(d));
        e.max_ref = std::max(e.max_ref, std::abs(double(r[i])));
        e.sum_ref2 += double(r[i]) * r[i];
        e.sum_err2 += d * d;
    }
    return e;
}

// The largest |value| of t, and the largest element-wise difference of a from b (same shape).
inline double max_abs(const Tensor& t) {
    const Tensor f = t.to(DType::F32);
    double m = 0;
    for (int64_t i = 0; i < f.numel(); ++i) m = std::max(m, double(std::fabs(f.data<float>()[i])));
    return m;
}
inline double max_diff(const Tensor& a, const Tensor& b) { return compare(a, b).max_abs; }

}  // namespace qdit::testutil
