#include "quant/spec.h"

namespace qdit {

int64_t ModelSpec::parameter_count() const {
    int64_t n = 0;
    for (const ParamSpec& p : params) n += shape_numel(p.shape);
    return n;
}

}  // namespace qdit
