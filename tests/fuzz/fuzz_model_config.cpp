// Fuzz target: a model folder's config.json as arbitrary text, read by each
// config parser of the pipelines: the model registry (Z-Image and Qwen-Image
// transformers, Qwen3 and Qwen2.5-VL text encoders) down to the parameter spec, the VAE
// decoder's config and parameter list, the scheduler's config and schedule,
// and a quantization config. Each must give a result or throw a qdit::Error.
#include "fuzz_util.h"
#include "io/files.h"
#include "models/model_spec.h"
#include "models/vae/autoencoder_kl.h"
#include "pipeline/scheduler.h"
#include "quant/config.h"

using namespace qdit;

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
    fuzz::only_qdit_errors([&] {
        const ModelSpec spec = model_spec_from_config(j, where);
        (void)spec.parameter_count();
    });
    fuzz::only_qdit_errors([&] { (void)vae::decoder_params(vae::Config::from_json(j, where)); });
    fuzz::only_qdit_errors([&] {
        const FlowMatchConfig c = FlowMatchConfig::from_json(j, where);
        const FlowMatchEulerScheduler s(c, zimage_default_sigmas(8), calculate_shift(4096, c));
        (void)s.sigmas();
    });
    fuzz::only_qdit_errors([&] { (void)parse_quant_config(j, where); });
    return 0;
}
