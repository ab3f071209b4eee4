#include "pipeline/frontend.h"

#include <fmt/format.h>

#include "core/error.h"
#include "ops/context.h"
#include "pipeline/tiny_model.h"

namespace qdit {

Device parse_device(const std::string& s, const std::string& field) {
    if (s == "cpu") return Device{};
    if (s == "cuda") return Device{DeviceType::CUDA, 0};
    if (s.rfind("cuda:", 0) == 0 && s.size() > 5 && s.size() < 9 &&
        s.find_first_not_of("0123456789", 5) == std::string::npos)
        return Device{DeviceType::CUDA, std::stoi(s.substr(5))};
    raise<UsageError>("{} {}: allowed values are cpu, cuda, cuda:N", field, s);
}

std::string default_device_name(DType dtype) {
    return dtype == DType::BF16 && ops::cuda_devices() > 0 ? "cuda" : "cpu";
}

std::string resolve_model_dir(const std::string& model, bool* tiny, TinyPipeline builtin) {
    if (tiny) *tiny = model.empty();
    return model.empty() ? ensure_tiny_pipeline(default_cache_dir(), builtin) : model;
}

std::string rename_flags(std::string message,
                         const std::vector<std::pair<std::string, std::string>>& flag_to_name) {
    auto continues_flag = [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
               c == '_';
    };
    for (const auto& [flag, name] : flag_to_name) {
        for (size_t at = message.find(flag); at != std::string::npos; at = message.find(flag, at)) {
            const size_t end = at + flag.size();
            if (end < message.size() && continues_flag(message[end])) {
                at = end;
                continue;
            }
            message.replace(at, flag.size(), name);
            at += name.size();
        }
    }
    return message;
}

std::vector<std::pair<std::string, std::string>> image_metadata(const GenerateOptions& o,
                                                                const std::string& model,
                                                                const std::string& quantization,
                                                                const std::string& device) {
    return {{"prompt", o.prompt},
            {"negative_prompt", o.negative_prompt},
            {"seed", std::to_string(o.seed)},
            {"steps", std::to_string(o.steps)},
            {"size", fmt::format("{}x{}", o.width, o.height)},
            {"guidance", fmt::format("{}", o.guidance)},
            {"model", model},
            {"quantization", quantization},
            {"device", device},
            {"software", "qdit"}};
}

std::vector<std::pair<std::string, std::string>> image_metadata(const QwenImageGenerateOptions& o,
                                                                const std::string& model,
                                                                const std::string& quantization,
                                                                const std::string& device) {
    std::vector<std::pair<std::string, std::string>> m = {{"prompt", o.prompt}};
    if (o.negative_prompt) m.emplace_back("negative_prompt", *o.negative_prompt);
    m.insert(m.end(), {{"seed", std::to_string(o.seed)},
                       {"steps", std::to_string(o.steps)},
                       {"size", fmt::format("{}x{}", o.width, o.height)},
                       {"true_cfg_scale", fmt::format("{}{}", o.true_cfg_scale, o.true_cfg() ? "" : " (off)")},
                       {"model", model},
                       {"quantization", quantization},
                       {"device", device},
                       {"software", "qdit"}});
    return m;
}

}  // namespace qdit
