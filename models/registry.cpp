#include <filesystem>

#include <fmt/ranges.h>

#include "core/error.h"
#include "io/files.h"
#include "models/model_spec.h"
#include "models/qwen_image/transformer.h"
#include "models/text/qwen25vl.h"
#include "models/text/qwen3.h"
#include "models/vae/autoencoder_kl_qwenimage.h"
#include "models/zimage/transformer.h"

namespace qdit {

std::vector<std::string> supported_model_classes() {
    return {"ZImageTransformer2DModel", "QwenImageTransformer2DModel", "Qwen3Model", "Qwen3ForCausalLM",
            "Qwen2_5_VLForConditionalGeneration", "AutoencoderKLQwenImage"};
}

ModelSpec model_spec_from_config(const nlohmann::json& config, const std::string& where, const HasKey& has_key) {
    // diffusers configs name the class in "_class_name", transformers configs
    // (text encoders) in "architectures".
    std::string cls;
    if (config.is_object() && config.contains("_class_name") && config["_class_name"].is_string())
        cls = config["_class_name"].get<std::string>();
    else if (config.is_object() && config.contains("architectures") &&
             config["architectures"].is_array() && !config["architectures"].empty() &&
             config["architectures"][0].is_string())
        cls = config["architectures"][0].get<std::string>();
    else
        raise<ConfigError>("{}: no \"_class_name\" or \"architectures\" naming the model class "
                           "(supported: {})",
                           where, fmt::join(supported_model_classes(), ", "));
    if (cls == "ZImageTransformer2DModel")
        return zimage::model_spec(zimage::Config::from_json(config, where));
    if (cls == "QwenImageTransformer2DModel")
        return qwen_image::model_spec(qwen_image::Config::from_json(config, where));
    if (cls == "Qwen3Model" || cls == "Qwen3ForCausalLM")
        return text::model_spec(text::Qwen3Config::from_json(config, where));
    if (cls == "Qwen2_5_VLForConditionalGeneration") {
        text::Qwen25VLConfig c = text::Qwen25VLConfig::from_json(config, where);
        if (has_key) c.detect_key_layout(has_key);
        return text::model_spec(c);
    }
    if (cls == "AutoencoderKLQwenImage")
        return vae::model_spec(vae::QwenImageVaeConfig::from_json(config, where));
    raise<ConfigError>("{}: model class '{}' is not supported (supported: {})", where, cls,
                       fmt::join(supported_model_classes(), ", "));
}

void check_rope_axes(const std::vector<int64_t>& dims, int64_t head_dim, const std::string& where,
                     const std::string& field, const std::string& head) {
    int64_t sum = 0;
    for (size_t i = 0; i < dims.size(); ++i) {
        require_config(dims[i] % 2 == 0, where, fmt::format("{}[{}] ({}) must be even", field, i, dims[i]));
        sum += dims[i];
    }
    require_config(sum == head_dim, where, fmt::format("sum({}) = {} must equal {} = {}", field, sum, head, head_dim));
}

ModelSpec load_model_spec(const std::string& dir) {
    std::string path = (std::filesystem::path(dir) / "config.json").string();
    if (!std::filesystem::exists(path)) raise<IoError>("{} is missing", path);
    return model_spec_from_config(read_json_file(path), path);
}

}  // namespace qdit
