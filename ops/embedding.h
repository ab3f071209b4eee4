// Token embedding lookup.
#pragma once
#include <vector>

#include "ops/context.h"

namespace qdit::ops {

// Rows ids[i] of table [vocab, d] (on ctx's device) → [n, d] in the table's dtype. Every id must be
// in [0, vocab): ShapeError names the first that is not, and its position.
Tensor embedding(const Tensor& table, const std::vector<int32_t>& ids, const Context& ctx);

}  // namespace qdit::ops
