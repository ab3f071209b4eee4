#include "backend/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/threads.h"
#include "backend/cpu/elementwise.h"

namespace qdit::cpu {

namespace {

constexpr int64_t kQueryBlock = 64;

template <typename T>
void attend(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, bool causal,
            Tensor& out) {
    const int64_t B = q.size(0), Lq = q.size(1), H = q.size(2), D = q.size(3), Lk = k.size(1);
    const int64_t Hkv = k.size(2), group = H / Hkv;
    const int64_t row = H * D, kv_row = Hkv * D;  // strides between tokens
    const float scale = float(1.0 / std::sqrt(double(D)));
    const int64_t qblocks = (Lq + kQueryBlock - 1) / kQueryBlock;
    const T *qp = q.data<T>(), *kp = k.data<T>(), *vp = v.data<T>();
    const uint8_t* mp = mask.defined() ? mask.data<uint8_t>() : nullptr;
    T* op = out.data<T>();

    // Tasks of at least ~1 MFLOP, so tiny problems stay on the calling thread.
    const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 20) / (4 * kQueryBlock * Lk * D));
    parallel_for(B * H * qblocks, grain, [&](int64_t begin, int64_t end) {
        std::vector<float> kt, vf, s, acc;
        std::vector<int64_t> keys;
        for (int64_t task = begin; task < end; ++task) {
            const int64_t b = task / (H * qblocks), h = (task / qblocks) % H,
                          q0 = (task % qblocks) * kQueryBlock, q1 = std::min(Lq, q0 + kQueryBlock);
            // Gather the unmasked keys of this (b, h): K transposed [D, n] so the
            // score loop runs over keys, and V as [n, D]. `keys` is ascending, so
            // under `causal` query i uses a prefix of them.
            keys.clear();
            for (int64_t j = 0; j < Lk; ++j)
                if (!mp || mp[b * Lk + j]) keys.push_back(j);
            const int64_t n_all = int64_t(keys.size());
            kt.resize(size_t(D * n_all));
            vf.resize(size_t(n_all * D));
            for (int64_t jj = 0; jj < n_all; ++jj) {
                const int64_t base = (b * Lk + keys[size_t(jj)]) * kv_row + (h / group) * D;
                for (int64_t d = 0; d < D; ++d) {
                    kt[size_t(d * n_all + jj)] = load(kp, base + d);
                    vf[size_t(jj * D + d)] = load(vp, base + d);
                }
            }
            s.resize(size_t(n_all));
            acc.resize(size_t(D));
            for (int64_t i = q0; i < q1; ++i) {
                const int64_t qbase = (b * Lq + i) * row + h * D;
                T* o = op + qbase;
                const int64_t n =
                    causal ? int64_t(std::upper_bound(keys.begin(), keys.end(), i) - keys.begin())
                           : n_all;
                if (n == 0) {
                    for (int64_t d = 0; d < D; ++d) store(o, d, 0.0f);
                    continue;
                }
                std::fill(s.begin(), s.end(), 0.0f);
                for (int64_t d = 0; d < D; ++d) {
                    const float qd = load(qp, qbase + d);
                    const float* kr = kt.data() + d * n_all;
                    for (int64_t j = 0; j < n; ++j) s[size_t(j)] += qd * kr[j];
                }
                float mx = -std::numeric_limits<float>::infinity();
                for (int64_t j = 0; j < n; ++j) {
                    s[size_t(j)] *= scale;
                    mx = std::max(mx, s[size_t(j)]);
                }
                double sum = 0;
                for (int64_t j = 0; j < n; ++j) {
                    const float p = std::exp(s[size_t(j)] - mx);
                    sum += p;
                    s[size_t(j)] = round_as<T>(p);
                }
                std::fill(acc.begin(), acc.end(), 0.0f);
                for (int64_t j = 0; j < n; ++j) {
                    const float p = s[size_t(j)];
                    const float* vr = vf.data() + j * D;
                    for (int64_t d = 0; d < D; ++d) acc[size_t(d)] += p * vr[d];
                }
                const float inv = 1.0f / float(sum);
                for (int64_t d = 0; d < D; ++d) store(o, d, acc[size_t(d)] * inv);
            }
        }
    });
}

}  // namespace

Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor& key_mask, bool causal) {
    check_activation(q, "attention");
    check_activation(k, "attention");
    check_activation(v, "attention");
    if (q.dim() != 4 || k.shape() != v.shape() || k.dim() != 4 || k.size(0) != q.size(0) ||
        k.size(2) == 0 || q.size(2) % k.size(2) != 0 || k.size(3) != q.size(3) ||
        k.dtype() != q.dtype() || v.dtype() != q.dtype())
        raise<ShapeError>("attention: q [B, Lq, H, D], k and v [B, Lk, Hkv, D] (H a multiple of "
                          "Hkv) of one dtype expected, got q {} {}, k {} {}, v {} {}",
                          dtype_name(q.dtype()), shape_str(q.shape()), dtype_name(k.dtype()),
                          shape_str(k.shape()), dtype_name(v.dtype()), shape_str(v.shape()));
    if (key_mask.defined() && (key_mask.dtype() != DType::U8 || key_mask.dim() != 2 ||
                               key_mask.size(0) != k.size(0) || key_mask.size(1) != k.size(1)))
        raise<ShapeError>("attention: key_mask must be U8 [{}, {}], got {} {}", k.size(0),
                          k.size(1), dtype_name(key_mask.dtype()), shape_str(key_mask.shape()));
    Tensor out = Tensor::empty(q.shape(), q.dtype());
    dispatch_float(q.dtype(),
                   [&](auto tag) { attend<decltype(tag)>(q, k, v, key_mask, causal, out); });
    return out;
}

}  // namespace qdit::cpu
