// Fuzz target: a model folder's config.json as arbitrary text, read by each
// config parser of the Z-Image pipeline: the model registry (Z-Image
// transformer, Qwen3 text encoder) down to the parameter spec, the VAE
// decoder's config and parameter list, the scheduler's config and schedule,
// and a quantization config. Each must give a result or throw a qdit::Error.
#include <cmath>
#include <cstdlib>

#include "fuzz_util.h"
#include "io/files.h"
#include "models/model_spec.h"
#include "models/vae/autoencoder_kl.h"
#include "pipeline/scheduler.h"
#include "quant/config.h"

using namespace qdit;

namespace {

// Config fields have no upper bounds yet (docs/testing.md, "Open"): a layer count of
// 10^18 runs the spec builders out of time and memory, and sizes near 2^63 overflow
// their products. Until the range checks land, the model spec and VAE parsers only
// see configs whose numbers are at most 2^31 and whose layer counts are at most 1000,
// so the fuzzer explores the rest instead of rediscovering those.
// QDIT_FUZZ_ALL_SIZES=1 in the environment lets every config through (to reproduce them).
bool plausible_sizes(const nlohmann::json& j, const std::string& key = "") {
    static const bool all_sizes = std::getenv("QDIT_FUZZ_ALL_SIZES") != nullptr;
    if (all_sizes) return true;
    if (j.is_number())
        return std::fabs(j.get<double>()) <=
               (key.find("layers") != std::string::npos ? 1000.0 : 2147483648.0);
    if (j.is_object()) {
        for (const auto& [k, v] : j.items())
            if (!plausible_sizes(v, k)) return false;
    } else if (j.is_array()) {
        for (const auto& v : j)
            if (!plausible_sizes(v, key)) return false;
    }
    return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static fuzz::MemFile file;
    file.write(data, size);
    nlohmann::json j;
    bool parsed = false;
    fuzz::only_qdit_errors([&] {
        j = read_json_file(file.path());
        parsed = true;
    });
    if (!parsed) return 0;
    const std::string& where = file.path();
    if (plausible_sizes(j)) {
        fuzz::only_qdit_errors([&] {
            const ModelSpec spec = model_spec_from_config(j, where);
            (void)spec.parameter_count();
        });
        fuzz::only_qdit_errors(
            [&] { (void)vae::decoder_params(vae::Config::from_json(j, where)); });
    }
    fuzz::only_qdit_errors([&] {
        const FlowMatchConfig c = FlowMatchConfig::from_json(j, where);
        const FlowMatchEulerScheduler s(c, zimage_default_sigmas(8), calculate_shift(4096, c));
        (void)s.sigmas();
    });
    fuzz::only_qdit_errors([&] { (void)parse_quant_config(j, where); });
    return 0;
}
