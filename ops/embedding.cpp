#include "ops/embedding.h"

#include <cstring>

#include "ops/dispatch.h"
#ifdef QDIT_WITH_CUDA
#include "backend/cuda/elementwise.h"
#endif

namespace qdit::ops {

Tensor embedding(const Tensor& table, const std::vector<int32_t>& ids, const Context& ctx) {
    const char* op = "embedding";
    detail::check_device(table, ctx, op, "the table");
    if (table.dim() != 2) raise<ShapeError>("{}: the table must be [vocab, d], got {}", op, shape_str(table.shape()));
    const int64_t vocab = table.size(0), d = table.size(1), n = int64_t(ids.size());
    for (int64_t i = 0; i < n; ++i)
        if (ids[size_t(i)] < 0 || ids[size_t(i)] >= vocab)
            raise<ShapeError>("token id {} at position {} is outside the vocabulary [0, {})", ids[size_t(i)], i, vocab);
    if (!ctx.cuda()) {
        Tensor out = Tensor::empty({n, d}, table.dtype());
        const size_t row = size_t(d) * dtype_size(table.dtype());
        for (int64_t i = 0; i < n; ++i)
            std::memcpy(static_cast<uint8_t*>(out.raw()) + size_t(i) * row,
                        static_cast<const uint8_t*>(table.raw()) + size_t(ids[size_t(i)]) * row, row);
        return out;
    }
#ifdef QDIT_WITH_CUDA
    if (table.dtype() != DType::BF16) raise<ShapeError>("{}: CUDA tables are bf16, not {}", op, dtype_name(table.dtype()));
    Tensor hid = Tensor::empty({n}, DType::I32);
    if (n) std::memcpy(hid.raw(), ids.data(), size_t(n) * sizeof(int32_t));
    const Tensor did = to_device(hid, ctx);
    Tensor out = empty({n, d}, DType::BF16, ctx);
    cuda::embedding_rows(table.raw(), vocab, d, did.data<int32_t>(), n, out.raw(), d, detail::stream(ctx));
    return out;
#else
    detail::no_cuda(op);
#endif
}

}  // namespace qdit::ops
