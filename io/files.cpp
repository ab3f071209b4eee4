#include "io/files.h"

#include <unistd.h>

#include <atomic>
#include <cerrno>
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
