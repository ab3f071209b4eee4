#include "ops/attention.h"

#include <algorithm>

#include "backend/cpu/attention.h"
#include "backend/cpu/layout.h"
#include "ops/dispatch.h"
#ifdef QDIT_WITH_CUDA
#include "backend/cuda/attention.h"
#include "backend/cuda/row.h"
#include "parallel/communicator.h"
#include "parallel/tensor_parallel.h"
#endif

namespace qdit::ops {

namespace {

// Checks a fused q|k|v of `batch` items on ctx's device; returns the rows of an item.
int64_t item_rows(const char* op, const Tensor& qkv, int64_t batch, int64_t heads, int64_t kv_heads, int64_t hd,
                  const Context& ctx) {
    detail::check_device(qkv, ctx, op, "qkv");
    const int64_t rows = qkv.dim() == 2 ? qkv.size(0) : -1;
    if (rows < 0 || batch < 1 || rows % batch || heads < 1 || kv_heads < 1 || heads % kv_heads || hd < 1 ||
        qkv.size(1) != (heads + 2 * kv_heads) * hd)
        raise<ShapeError>("{}: qkv {} for a batch of {} with {} heads, {} kv heads of {} dims (need [batch·L, "
                          "(heads + 2·kv_heads)·head_dim], heads a multiple of kv heads)",
                          op, qkv.defined() ? shape_str(qkv.shape()) : "none", batch, heads, kv_heads, hd);
    return rows / batch;
}

#ifdef QDIT_WITH_CUDA
// A bf16 fused q|k|v of `batch` items of L rows each: one cuda::attention call per item, into the
// same rows of o [rows, heads·hd].
void attention_per_item(const Tensor& qkv, Tensor& o, int64_t batch, int64_t L, int64_t heads, int64_t kv_heads,
                        int64_t hd, cuda::AttentionImpl impl, bool causal, const Context& ctx) {
    const int64_t ld = qkv.size(1), width = heads * hd, es = 2;
    for (int64_t b = 0; b < batch; ++b) {
        const uint8_t* q = static_cast<const uint8_t*>(qkv.raw()) + size_t(b * L * ld * es);
        cuda::attention(q, ld, q + heads * hd * es, ld, q + (heads + kv_heads) * hd * es, ld,
                        static_cast<uint8_t*>(o.raw()) + size_t(b * L * width * es), width, L, heads, hd,
                        detail::stream(ctx), impl, kv_heads, causal);
    }
}
#endif

[[noreturn]] void no_fp8_on_cpu(const char* op) {
    raise<UsageError>("{}: FP8 attention runs on a GPU (Hopper or Blackwell), not on the CPU", op);
}

#ifdef QDIT_WITH_CUDA
// Sequence parallelism (Ulysses): qkv [Lr, 3·H·hd] holds this rank's block of the sequence's tokens
// (rank j holds tokens [j·Lr, (j + 1)·Lr)). Every rank sends each rank j the q|k|v of its tokens for
// j's heads split(H, j) and receives every token for its own heads; attention runs on those; the
// second all-to-all returns each rank its tokens with every head. Blocks are padded to the largest
// head count (heads need not divide evenly): the padding is zeros and never read. The received
// rows are in global token order, so attention sees the keys in the one-device order.
Tensor ulysses_attention(const Tensor& qkv, int64_t H, int64_t hd, const Context& ctx) {
    const cudaStream_t s = detail::stream(ctx);
    const int world = ctx.world(), rank = ctx.rank();
    const int64_t Lr = qkv.size(0), D = H * hd, L = Lr * world, es = 2;
    const int64_t Hm = parallel::split(H, 0, world).size(), wq = 3 * Hm * hd;  // a received row: q|k|v, Hm heads each
    auto base = [](const Tensor& t) { return static_cast<uint8_t*>(const_cast<void*>(t.raw())); };
    Tensor send = empty({world * Lr, wq}, DType::BF16, ctx), recv = empty({L, wq}, DType::BF16, ctx);
    if (Hm * world != H) cuda::check(cudaMemsetAsync(send.raw(), 0, send.nbytes(), s), "sequence parallel: padding");
    for (int j = 0; j < world; ++j) {
        const parallel::Range h = parallel::split(H, j, world);
        for (int part = 0; part < 3; ++part)
            cuda::check(cudaMemcpy2DAsync(base(send) + size_t((j * Lr * wq + part * Hm * hd) * es), size_t(wq * es),
                                          base(qkv) + size_t((part * D + h.begin * hd) * es), size_t(3 * D * es),
                                          size_t(h.size() * hd * es), size_t(Lr), cudaMemcpyDeviceToDevice, s),
                        "sequence parallel: packing q|k|v");
    }
    ctx.comm->all_to_all(send.raw(), recv.raw(), Lr * wq, DType::BF16, s);
    send = Tensor();
    const int64_t Hr = parallel::split(H, rank, world).size();
    Tensor o = empty({L, Hm * hd}, DType::BF16, ctx), back = empty({world * Lr, Hm * hd}, DType::BF16, ctx);
    if (Hr < Hm) cuda::check(cudaMemsetAsync(o.raw(), 0, o.nbytes(), s), "sequence parallel: padding");
    const uint8_t* q = base(recv);
    cuda::attention(q, wq, q + Hm * hd * es, wq, q + 2 * Hm * hd * es, wq, o.raw(), Hm * hd, L, Hr, hd, s,
                    ctx.attention == AttentionImpl::Simple ? cuda::AttentionImpl::Simple : cuda::AttentionImpl::Auto);
    recv = Tensor();
    ctx.comm->all_to_all(o.raw(), back.raw(), Lr * Hm * hd, DType::BF16, s);  // o's rows are the ranks' blocks
    Tensor out = empty({Lr, D}, DType::BF16, ctx);
    for (int j = 0; j < world; ++j) {
        const parallel::Range h = parallel::split(H, j, world);
        cuda::check(cudaMemcpy2DAsync(base(out) + size_t(h.begin * hd * es), size_t(D * es),
                                      base(back) + size_t(j * Lr * Hm * hd * es), size_t(Hm * hd * es),
                                      size_t(h.size() * hd * es), size_t(Lr), cudaMemcpyDeviceToDevice, s),
                    "sequence parallel: unpacking the attention output");
    }
    return out;
}
#endif

}  // namespace

Tensor attention(const Tensor& qkv, int64_t batch, int64_t heads, int64_t kv_heads, int64_t head_dim, bool causal,
                 const Tensor& key_mask, const Context& ctx) {
    const char* op = "attention";
    const int64_t hd = head_dim, L = item_rows(op, qkv, batch, heads, kv_heads, hd, ctx), rows = batch * L;
    if (key_mask.defined() && (key_mask.device().type != DeviceType::CPU || key_mask.dtype() != DType::U8 ||
                               key_mask.shape() != Shape{batch, L}))
        raise<ShapeError>("{}: key_mask must be a host U8 [{}, {}], got {} {}", op, batch, L,
                          dtype_name(key_mask.dtype()), shape_str(key_mask.shape()));
    if (!ctx.cuda()) {
        if (ctx.attention == AttentionImpl::Fp8) no_fp8_on_cpu(op);
        auto part = [&](int64_t col, int64_t h) {
            return cpu::take_columns(qkv, col * hd, h * hd).view({batch, L, h, hd});
        };
        const Tensor o = cpu::scaled_dot_product_attention(part(0, heads), part(heads, kv_heads),
                                                           part(heads + kv_heads, kv_heads), key_mask, causal);
        return o.view({rows, heads * hd});
    }
#ifdef QDIT_WITH_CUDA
    if (key_mask.defined())
        raise<UsageError>("{}: a key mask (a padded batch) is not implemented on CUDA; run the items unpadded", op);
    if (qkv.dtype() != DType::BF16) raise<ShapeError>("{}: CUDA runs bf16 activations, not {}", op, dtype_name(qkv.dtype()));
    if (ctx.sequence_parallel()) {
        if (batch != 1 || causal || kv_heads != heads)
            raise<UsageError>("{}: sequence parallelism runs one item, not causal, with as many kv heads as heads "
                              "(got a batch of {}, {}, {} heads, {} kv heads)",
                              op, batch, causal ? "causal" : "not causal", heads, kv_heads);
        return ulysses_attention(qkv, heads, hd, ctx);
    }
    const int64_t ld = qkv.size(1), es = 2;
    Tensor o = empty({rows, heads * hd}, DType::BF16, ctx);
    if (ctx.attention == AttentionImpl::Fp8 && !causal) {
        for (int64_t b = 0; b < batch; ++b)
            cuda::attention_fp8(static_cast<const uint8_t*>(qkv.raw()) + size_t(b * L * ld * es), ld,
                                static_cast<uint8_t*>(o.raw()) + size_t(b * L * heads * hd * es), heads * hd, 1, L,
                                nullptr, heads, kv_heads, hd, detail::stream(ctx));
        return o;
    }
    const auto impl = ctx.attention == AttentionImpl::Simple ? cuda::AttentionImpl::Simple : cuda::AttentionImpl::Auto;
    attention_per_item(qkv, o, batch, L, heads, kv_heads, hd, impl, causal, ctx);
    return o;
#else
    detail::no_cuda(op);
#endif
}

Fp8Qk Fp8Qk::like(int64_t rows, const Context& ctx) const {
    return {empty({rows, y.size(1)}, DType::F8_E4M3, ctx), scalars};
}

Fp8Qk fp8_qk(int64_t rows, int64_t width, const std::vector<Tensor>& wq, const std::vector<Tensor>& wk,
             int64_t head_dim, const Context& ctx) {
    const char* op = "fp8_qk";
    if (!ctx.cuda()) no_fp8_on_cpu(op);
    if (ctx.attention != AttentionImpl::Fp8) raise<UsageError>("{}: the context does not run FP8 attention", op);
#ifdef QDIT_WITH_CUDA
    cuda::Fp8QkWeights w;
    for (auto [list, is_k] : {std::pair{&wq, 0}, std::pair{&wk, 1}})
        for (const Tensor& t : *list) {
            detail::check_device(t, ctx, op, "a norm weight");
            if (t.dtype() != DType::BF16 || t.numel() != head_dim || w.count == cuda::Fp8QkWeights::kMax)
                raise<ShapeError>("{}: norm weights must be bf16 [{}] (at most {}), got {} {}", op, head_dim,
                                  int(cuda::Fp8QkWeights::kMax), dtype_name(t.dtype()), shape_str(t.shape()));
            w.w[w.count] = t.raw();
            w.is_k[w.count++] = is_k;
        }
    Fp8Qk r{empty({rows, width}, DType::F8_E4M3, ctx), empty({cuda::kFp8ScalarFloats}, DType::F32, ctx)};
    w.scalars = static_cast<float*>(r.scalars.raw());
    cuda::fp8_qk_descales(w, head_dim, detail::stream(ctx));
    return r;
#else
    (void)rows, (void)width, (void)wq, (void)wk, (void)head_dim;
    detail::no_cuda(op);
#endif
}

Tensor attention_padded(const Tensor& qkv, const std::vector<int64_t>& lengths, int64_t heads, int64_t kv_heads,
                        int64_t head_dim, const Context& ctx, const Fp8Qk* qk) {
    return attention_padded(qkv, lengths, heads, kv_heads, head_dim, ActivationSpec{}, ctx, qk).x;
}

Activation attention_padded(const Tensor& qkv, const std::vector<int64_t>& lengths, int64_t heads, int64_t kv_heads,
                            int64_t head_dim, const ActivationSpec& out, const Context& ctx, const Fp8Qk* qk) {
    const char* op = "attention_padded";
    const int64_t batch = int64_t(lengths.size()), hd = head_dim, L = item_rows(op, qkv, batch, heads, kv_heads, hd, ctx),
                  rows = batch * L;
    for (int64_t b = 0; b < batch; ++b)
        if (lengths[size_t(b)] < 1 || lengths[size_t(b)] > L)
            raise<ShapeError>("{}: item {} has length {} (need 1 to the {} rows an item holds)", op, b,
                              lengths[size_t(b)], L);
    const int64_t width = heads * hd;
    if (!ctx.cuda() && ctx.attention == AttentionImpl::Fp8) no_fp8_on_cpu(op);
    if (qk && (ctx.attention != AttentionImpl::Fp8 || qk->y.shape() != qkv.shape() ||
               qk->y.dtype() != DType::F8_E4M3))
        raise<ShapeError>("{}: E4M3 q and k {} {} for a q|k|v {} (FP8 attention only, the q|k|v's shape)", op,
                          dtype_name(qk->y.dtype()), shape_str(qk->y.shape()), shape_str(qkv.shape()));
    if (!ctx.cuda() || ctx.attention == AttentionImpl::Simple) {
        // Each item's tokens alone, then zero rows for the padding.
        Tensor o = zeros({rows, width}, qkv.dtype(), ctx);
        for (int64_t b = 0; b < batch; ++b) {
            const int64_t n = lengths[size_t(b)];
            copy_rows(o, b * L, attention(qkv.slice_rows(b * L, b * L + n), 1, heads, kv_heads, hd, false, Tensor(), ctx),
                      0, n, ctx);
        }
        return {o, {}, {}};
    }
#ifdef QDIT_WITH_CUDA
    if (qkv.dtype() != DType::BF16) raise<ShapeError>("{}: CUDA runs bf16 activations, not {}", op, dtype_name(qkv.dtype()));
    if (out.int8 && (out.k != width || out.kp < width))
        raise<ShapeError>("{}: int8 rows of {} columns, stride {}, for an output of {} columns", op, out.k, out.kp, width);
    const cudaStream_t s = detail::stream(ctx);
    Tensor o = empty({rows, width}, DType::BF16, ctx);
    const int64_t ld = qkv.size(1), es = 2;
    const uint8_t* q = static_cast<const uint8_t*>(qkv.raw());
    uint8_t* dst = static_cast<uint8_t*>(o.raw());
    // Zero keys past each item's length where they pay (see the header), else 0.
    std::vector<int64_t> zero_keys(size_t(batch), 0);
    Tensor lse;  // their softmax statistics, [batch, heads, L] (item b's [heads, lengths[b]] at its start)
    if (ctx.attention == AttentionImpl::Fp8) {
        std::vector<int32_t> len(lengths.begin(), lengths.end());
        Tensor dlen = empty({batch}, DType::I32, ctx);
        cuda::set_i32(static_cast<int32_t*>(dlen.raw()), len.data(), batch, s);
        cuda::attention_fp8(q, ld, dst, width, batch, L, static_cast<const int32_t*>(dlen.raw()), heads, kv_heads, hd, s,
                            qk ? static_cast<uint8_t*>(const_cast<void*>(qk->y.raw())) : nullptr,
                            qk ? static_cast<float*>(const_cast<void*>(qk->scalars.raw())) : nullptr);
    } else {
        // One call per item over its own tokens: faster than one call with cuDNN's padding mask
        // (bench/cuda/NOTES.md, "The joint attention and the image MLP per CFG item"), and the
        // padding rows are not read.
        for (int64_t b = 0; b < batch; ++b) {
            const int64_t n = lengths[size_t(b)], keys = (n + 127) / 128 * 128;
            if (out.int8 && hd % 8 == 0 && n >= kZeroKeysFrom && keys != n && keys <= L) zero_keys[size_t(b)] = keys - n;
        }
        if (std::any_of(zero_keys.begin(), zero_keys.end(), [](int64_t z) { return z > 0; }))
            lse = empty({batch, heads, L}, DType::F32, ctx);
        for (int64_t b = 0; b < batch; ++b) {
            const int64_t n = lengths[size_t(b)], z = zero_keys[size_t(b)];
            const uint8_t *qb = q + size_t(b * L * ld * es), *kb = qb + heads * hd * es,
                          *vb = qb + (heads + kv_heads) * hd * es;
            uint8_t* ob = dst + size_t(b * L * width * es);
            if (z > 0) {
                uint8_t* pad = const_cast<uint8_t*>(qb) + size_t(n * ld * es);
                cuda::check(cudaMemsetAsync(pad, 0, size_t(z * ld * es), s), "attention_padded: zero keys");
                if (cuda::attention_with_stats(qb, ld, kb, ld, vb, ld, ob, width, n, n + z, heads, kv_heads, hd,
                                               lse.data<float>() + b * heads * L, s))
                    continue;
                zero_keys[size_t(b)] = 0;  // cuDNN cannot plan it with statistics: without zero keys
            }
            cuda::attention(qb, ld, kb, ld, vb, ld, ob, width, n, heads, hd, s, cuda::AttentionImpl::Auto, kv_heads);
        }
    }
    const bool dropped = std::any_of(zero_keys.begin(), zero_keys.end(), [](int64_t z) { return z > 0; });
    Activation a;
    if (out.dense || !dropped) a.x = o;
    if (a.x.defined())
        for (int64_t b = 0; b < batch; ++b)
            if (lengths[size_t(b)] < L)
                cuda::check(cudaMemsetAsync(dst + size_t((b * L + lengths[size_t(b)]) * width * es), 0,
                                            size_t((L - lengths[size_t(b)]) * width * es), s),
                            "attention_padded: zero the padding rows");
    if (out.int8) {
        // The per-token quantization the Linear would do, with the zero keys' weight taken out
        // (and, for the dense rows, written back in place).
        const Activation qa = detail::allocate(rows, {false, true, width, out.kp}, ctx);
        a.q = qa.q;
        a.qs = qa.qs;
        for (int64_t b = 0; b < batch; ++b) {
            const int64_t n = lengths[size_t(b)];
            void* ob = dst + size_t(b * L * width * es);
            int8_t* qb = a.q.data<int8_t>() + b * L * out.kp;
            float* sb = a.qs.data<float>() + b * L;
            if (zero_keys[size_t(b)] > 0) {
                cuda::drop_zero_keys(ob, width, n, width, hd, lse.data<float>() + b * heads * L, n, zero_keys[size_t(b)],
                                     out.dense ? ob : nullptr, width, qb, sb, out.kp, s);
            } else {
                cuda::quantize_rows(ob, width, n, width, qb, out.kp, sb, s);
            }
        }
    }
    return a;
#else
    detail::no_cuda(op);
#endif
}

bool fp8_attention_available(const Context& ctx) {
#ifdef QDIT_WITH_CUDA
    return ctx.cuda() && cuda::fp8_attention_supported(ctx.device.index);
#else
    (void)ctx;
    return false;
#endif
}

Tensor spatial_attention(const Tensor& qkv, int64_t batch, const Context& ctx) {
    const char* op = "spatial_attention";
    detail::check_device(qkv, ctx, op, "qkv");
    const int64_t rows = qkv.defined() && qkv.dim() == 2 ? qkv.size(0) : -1;
    if (rows < 1 || batch < 1 || rows % batch || qkv.size(1) < 3 || qkv.size(1) % 3 ||
        (qkv.dtype() != DType::F32 && qkv.dtype() != DType::BF16))
        raise<ShapeError>("{}: qkv {} {} for a batch of {} (need F32 or BF16 [batch·L, 3·C])", op,
                          qkv.defined() ? dtype_name(qkv.dtype()) : "none", qkv.defined() ? shape_str(qkv.shape()) : "",
                          batch);
    const int64_t L = rows / batch, C = qkv.size(1) / 3;
    if (!ctx.cuda()) {
        auto part = [&](int64_t i) { return cpu::take_columns(qkv, i * C, C).view({batch, L, 1, C}); };
        return cpu::scaled_dot_product_attention(part(0), part(1), part(2)).view({rows, C});
    }
#ifdef QDIT_WITH_CUDA
    Tensor o = empty({rows, C}, qkv.dtype(), ctx);
    const size_t es = dtype_size(qkv.dtype());
    for (int64_t b = 0; b < batch; ++b) {
        const uint8_t* q = static_cast<const uint8_t*>(qkv.raw()) + size_t(b * L * 3 * C) * es;
        cuda::attention_one_head(q, q + size_t(C) * es, q + size_t(2 * C) * es, 3 * C,
                                 static_cast<uint8_t*>(o.raw()) + size_t(b * L * C) * es, C, L, C, qkv.dtype(),
                                 detail::stream(ctx));
    }
    return o;
#else
    detail::no_cuda(op);
#endif
}

}  // namespace qdit::ops
