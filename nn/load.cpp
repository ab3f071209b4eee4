#include "nn/load.h"

#include <algorithm>
#include <cstdlib>
#include <mutex>

#include "backend/cpu/quantize.h"

namespace qdit::nn {

HostWeights host_weights(const Checkpoint& ck, const LayerPlan& layer, DType dense) {
    const std::string& name = layer.spec.name;
    const bool int8 = int8_weights(layer.precision);
    HostWeights h;
    if (layer.spec.bias) h.bias = ck.get_as(name + ".bias", int8 ? DType::F32 : dense);
    if (layer.prequantized) {
        h.weight = ck.get(name + ".weight");
        h.scale = ck.get_as(name + ".weight_scale", DType::F32).view({layer.spec.out_features});
    } else if (int8) {
        quantize_weight_int8(ck.get(name + ".weight"), &h.weight, &h.scale);
    } else {
        h.weight = ck.get_as(name + ".weight", dense);
    }
    if (h.weight.dim() != 2 || h.weight.size(0) != layer.spec.out_features ||
        h.weight.size(1) != layer.spec.in_features)
        raise<ShapeError>("{}: weight is {}, expected [{}, {}]", name, shape_str(h.weight.shape()),
                          layer.spec.out_features, layer.spec.in_features);
    return h;
}

void quantize_weight_int8(const Tensor& w, Tensor* q, Tensor* scale) {
    cpu::quantize_weight_int8(w, q, scale);
}

Linear load_linear(const Checkpoint& ck, const LayerPlan& layer, DType compute) {
    HostWeights h = host_weights(ck, layer, compute);
    if (layer.precision == Precision::Int8WeightOnly)
        return Linear::int8_weight_only(layer.spec.name, h.weight, h.scale, h.bias);
    if (h.scale.defined()) return Linear::int8(layer.spec.name, h.weight, h.scale, h.bias);
    return Linear::dense(layer.spec.name, h.weight, h.bias);
}

namespace {
std::mutex stats_mutex;
LoadStats stats_total;
}  // namespace

int load_threads() {
    const char* v = std::getenv("QDIT_LOAD_THREADS");
    if (!v || !*v) return 4;
    char* end = nullptr;
    const long n = std::strtol(v, &end, 10);
    if (*end != '\0' || n < 1 || n > 64)
        raise<UsageError>("QDIT_LOAD_THREADS={}: the number of threads reading weight files must be 1 to 64", v);
    return int(n);
}

LoadStats load_stats() {
    std::lock_guard<std::mutex> lock(stats_mutex);
    return stats_total;
}

void add_load_stats(const LoadStats& s) {
    std::lock_guard<std::mutex> lock(stats_mutex);
    stats_total.read_s += s.read_s;
    stats_total.wait_s += s.wait_s;
    stats_total.convert_s += s.convert_s;
    stats_total.wall_s += s.wall_s;
    stats_total.bytes += s.bytes;
    stats_total.staging_bytes = std::max(stats_total.staging_bytes, s.staging_bytes);
}

}  // namespace qdit::nn
