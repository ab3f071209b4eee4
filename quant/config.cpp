#include "quant/config.h"

#include <cctype>

#include <fmt/format.h>

#include "core/error.h"
#include "io/files.h"

using nlohmann::json;

namespace qdit {

namespace {

constexpr const char* kMethods = "none, int8, fp8";
constexpr const char* kFields = "method, ignored_layers, activation_scheme";

QuantMethod parse_method(const json& v, const std::string& where, const char* field) {
    if (v.is_null()) return QuantMethod::None;
    if (!v.is_string())
        raise<ConfigError>("{}: '{}' must be a string, one of: {}", where, field, kMethods);
    std::string s = v.get<std::string>();
    for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
    if (s == "none" || s.empty()) return QuantMethod::None;
    if (s == "int8") return QuantMethod::Int8;
    if (s == "fp8") return QuantMethod::Fp8;
    raise<ConfigError>("{}: unknown quantization method '{}' in '{}' (allowed: {})", where,
                       v.get<std::string>(), field, kMethods);
}

void check_pattern(const std::string& p, const std::string& where) {
    bool bad = p.empty() || p.front() == '.' || p.back() == '.' ||
               p.find("..") != std::string::npos;
    if (bad)
        raise<ConfigError>(
            "{}: ignored_layers entry '{}' is not a layer name (dotted components such as "
            "'layers.3.feed_forward' or 'feed_forward')",
            where, p);
}

}  // namespace

const char* quant_method_name(QuantMethod m) {
    switch (m) {
        case QuantMethod::None: return "none";
        case QuantMethod::Int8: return "int8";
        case QuantMethod::Fp8: return "fp8";
    }
    return "?";
}

json QuantConfig::to_json() const {
    return {{"quant_method", quant_method_name(method)},
            {"method", quant_method_name(method)},
            {"activation_scheme", activation_scheme},
            {"ignored_layers", ignored_layers}};
}

QuantConfig parse_quant_config(const json& j, const std::string& where) {
    if (!j.is_object())
        raise<ConfigError>("{}: a quantization config must be a JSON object with fields {}", where,
                           kFields);
    QuantConfig c;
    bool has_method = false;
    for (auto& [key, v] : j.items()) {
        if (key == "method" || key == "quant_method") {
            QuantMethod m = parse_method(v, where, key.c_str());
            if (has_method && m != c.method)
                raise<ConfigError>("{}: 'method' and 'quant_method' disagree ({} vs {})", where,
                                   quant_method_name(c.method), quant_method_name(m));
            c.method = m;
            has_method = true;
        } else if (key == "ignored_layers") {
            if (!v.is_array())
                raise<ConfigError>("{}: 'ignored_layers' must be a list of layer names", where);
            for (const json& p : v) {
                if (!p.is_string())
                    raise<ConfigError>("{}: 'ignored_layers' entry {} is not a string", where,
                                       p.dump());
                check_pattern(p.get<std::string>(), where);
                c.ignored_layers.push_back(p.get<std::string>());
            }
        } else if (key == "activation_scheme") {
            if (!v.is_string() || v.get<std::string>() != "dynamic")
                raise<ConfigError>(
                    "{}: activation_scheme {} is not supported (allowed: dynamic — per-token "
                    "scales computed on the fly)",
                    where, v.dump());
            c.activation_scheme = "dynamic";
        } else {
            raise<ConfigError>("{}: unknown field '{}' in the quantization config (allowed: {})",
                               where, key, kFields);
        }
    }
    if (!has_method)
        raise<ConfigError>("{}: the quantization config has no 'method' (allowed: {})", where,
                           kMethods);
    return c;
}

std::vector<std::string> split_layer_list(const std::string& s, const std::string& flag) {
    std::vector<std::string> out;
    size_t start = 0;
    while (start <= s.size()) {
        size_t comma = s.find(',', start);
        if (comma == std::string::npos) comma = s.size();
        std::string item = s.substr(start, comma - start);
        size_t b = item.find_first_not_of(" \t"), e = item.find_last_not_of(" \t");
        item = b == std::string::npos ? "" : item.substr(b, e - b + 1);
        if (item.empty()) raise<UsageError>("{}: empty layer name in '{}'", flag, s);
        check_pattern(item, flag);
        out.push_back(item);
        start = comma + 1;
    }
    return out;
}

QuantConfig resolve_quant_config(const QuantArgs& args, std::vector<std::string>* warnings) {
    QuantConfig c;
    bool have_shorthand = !args.shorthand.empty();
    QuantMethod shorthand = QuantMethod::None;
    if (have_shorthand) {
        try {
            shorthand = parse_method(json(args.shorthand), "--quantization", "--quantization");
        } catch (const ConfigError& e) {
            throw UsageError(e.what());
        }
    }
    if (!args.config.empty()) {
        size_t first = args.config.find_first_not_of(" \t\r\n");
        bool inline_json = first != std::string::npos && args.config[first] == '{';
        json j;
        std::string where;
        if (inline_json) {
            where = "--quantization-config";
            try {
                j = json::parse(args.config);
            } catch (const json::exception& e) {
                raise<ConfigError>("--quantization-config is not valid JSON: {}", e.what());
            }
        } else {
            where = args.config;
            j = read_json_file(args.config);
        }
        // A config without a method takes it from the shorthand.
        if (j.is_object() && !j.contains("method") && !j.contains("quant_method") &&
            have_shorthand)
            j["method"] = quant_method_name(shorthand);
        c = parse_quant_config(j, where);
        if (have_shorthand && shorthand != c.method && warnings)
            warnings->push_back(fmt::format(
                "--quantization {} conflicts with method '{}' of the quantization config; using "
                "the config's '{}'",
                quant_method_name(shorthand), quant_method_name(c.method),
                quant_method_name(c.method)));
    } else {
        c.method = shorthand;
    }
    for (const std::string& p : args.ignored_layers) {
        check_pattern(p, "--ignored-layers");
        c.ignored_layers.push_back(p);
    }
    if (c.method == QuantMethod::Fp8)
        raise<ConfigError>(
            "quantization method 'fp8' is not implemented yet in this build (use int8 or none)");
    if (!c.enabled() && !c.ignored_layers.empty() && warnings)
        warnings->push_back("ignored_layers has no effect without quantization (method none)");
    return c;
}

}  // namespace qdit
