#include "pipeline/frontend.h"

#include <algorithm>
#include <filesystem>

#include <fmt/format.h>

#include "core/clock.h"
#include "core/error.h"
#include "io/safetensors.h"
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

LoadProgress::LoadProgress(const std::string& dir, bool enabled, uint64_t min_bytes, std::FILE* out) : out_(out) {
    namespace fs = std::filesystem;
    if (!enabled) return;
    std::error_code ec;
    for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
        if (it->path().extension() == ".safetensors" && it->is_regular_file(ec)) total_ += it->file_size(ec);
    if (total_ == 0 || total_ < min_bytes) return;
    t0_ = std::chrono::steady_clock::now();
    set_checkpoint_read_observer([this](uint64_t bytes) {
        read_ += bytes;
        const int tenth = int(std::min<uint64_t>(10, read_ * 10 / total_));
        if (tenth <= shown_) return;
        shown_ = tenth;
        const double s = seconds_since(t0_);
        fmt::print(out_, "loading weights: {:3d}% ({:.1f} of {:.1f} GB, {:.2f} GB/s)\n", tenth * 10,
                   double(read_) / 1e9, double(total_) / 1e9, s > 0 ? double(read_) / 1e9 / s : 0.0);
        std::fflush(out_);
    });
    active_ = true;
}

LoadProgress::~LoadProgress() {
    if (active_) set_checkpoint_read_observer({});
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
