#include "quant/spec.h"

namespace qdit {

int64_t ModelSpec::parameter_count() const {
    int64_t n = 0;
    for (const ParamSpec& p : params) n += shape_numel(p.shape);
    return n;
}

void ModelSpec::add_linear(const std::string& name, int64_t out, int64_t in, bool bias) {
    linears.push_back({name, out, in, bias});
    params.push_back({name + ".weight", {out, in}});
    if (bias) params.push_back({name + ".bias", {out}});
}

}  // namespace qdit
