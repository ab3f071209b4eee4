#include "io/files.h"

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace qdit {

std::string read_text_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) raise<IoError>("cannot read {}: {}", path, std::strerror(errno));
    std::ostringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

nlohmann::json read_json_file(const std::string& path) {
    std::string text = read_text_file(path);
    try {
        return nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
        raise<FormatError>("{} is not valid JSON: {}", path, e.what());
    }
}

bool path_exists(const std::string& path) {
    std::error_code ec;
    bool exists = std::filesystem::exists(path, ec);
    if (ec) raise<IoError>("cannot access {}: {}", path, ec.message());
    return exists;
}

namespace config_detail {

void wrong_type(const std::string& where, const std::string& field, const char* want,
                const nlohmann::json& got) {
    raise<ConfigError>("{}: field '{}' must be {} (got {})", where, field, want, got.dump());
}

int64_t integer(const nlohmann::json& v, const std::string& where, const std::string& field,
                int64_t lo, int64_t hi) {
    // Integers only: 2.0 too is refused, as the reference writes counts and
    // sizes as JSON integers and a float there is a sign of a hand edit.
    if (!v.is_number_integer()) wrong_type(where, field, "an integer", v);
    const bool huge = v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX);
    const int64_t x = huge ? 0 : v.get<int64_t>();
    if (huge || x < lo || x > hi)
        raise<ConfigError>("{}: field '{}' is {}, outside the supported range [{}, {}]", where, field,
                           v.dump(), lo, hi);
    return x;
}

double number(const nlohmann::json& v, const std::string& where, const std::string& field,
              double lo, double hi) {
    if (!v.is_number()) wrong_type(where, field, "a number", v);
    const double x = v.get<double>();
    if (!std::isfinite(x)) wrong_type(where, field, "a finite number", v);
    if (x < lo || x > hi)
        raise<ConfigError>("{}: field '{}' is {}, outside the supported range [{}, {}]", where, field,
                           v.dump(), lo, hi);
    return x;
}

}  // namespace config_detail

void check_output_file(const std::string& path) {
    namespace fs = std::filesystem;
    std::error_code ec;
    const fs::path p = fs::absolute(path, ec);
    if (ec || path.empty()) raise<IoError>("cannot write '{}': not a valid file path", path);
    if (fs::is_directory(p, ec))
        raise<IoError>("cannot write {}: it is a folder; name a file in it instead", path);
    const fs::path dir = p.parent_path();
    if (!fs::is_directory(dir, ec))
        raise<IoError>("cannot write {}: folder {} does not exist", path, dir.string());
    if (::access(dir.c_str(), W_OK | X_OK) != 0)
        raise<IoError>("cannot write {}: folder {} is not writable ({})", path, dir.string(),
                       std::strerror(errno));
    if (fs::exists(p, ec) && !fs::is_regular_file(p, ec))
        raise<IoError>("cannot write {}: it exists and is not a regular file", path);
}

std::string temp_path_for(const std::string& path) {
    static std::atomic<int> counter{0};
    return fmt::format("{}.tmp-{}-{}", path, ::getpid(), counter++);
}

void write_file_atomic(const std::string& path, const std::string& data) {
    std::string tmp = temp_path_for(path);
    {
        std::FILE* f = std::fopen(tmp.c_str(), "wb");
        if (!f) raise<IoError>("cannot write {}: {}", path, std::strerror(errno));
        bool ok = std::fwrite(data.data(), 1, data.size(), f) == data.size();
        ok = (std::fflush(f) == 0) && ok;
        ok = (std::fclose(f) == 0) && ok;
        if (!ok) {
            std::remove(tmp.c_str());
            raise<IoError>("cannot write {}: {}", path, std::strerror(errno));
        }
    }
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    if (ec) {
        std::remove(tmp.c_str());
        raise<IoError>("cannot write {}: {}", path, ec.message());
    }
}

}  // namespace qdit
