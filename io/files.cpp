#include "io/files.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <system_error>
#include <thread>

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

void require_config_class(const nlohmann::json& j, const std::string& where, const std::string& class_name) {
    if (!j.is_object()) raise<ConfigError>("{}: expected a JSON object", where);
    std::string cls = class_name;
    read_config_field(j, where, "_class_name", &cls);
    require_config_field(cls == class_name, where, "_class_name",
                         fmt::format("is '{}'; expected '{}'", cls, class_name));
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

// ---------------------------------------------------------------- RangeReader

RangeReader::RangeReader(int threads, size_t min_piece)
    : threads_(std::max(1, threads)), min_piece_(std::max<size_t>(1, min_piece)) {}

RangeReader::~RangeReader() {
    for (auto& [path, fd] : fds_) ::close(fd);
}

int RangeReader::fd(const std::string& path) {
    for (auto& [p, fd] : fds_)
        if (p == path) return fd;
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) raise<IoError>("cannot open {}: {}", path, std::strerror(errno));
    fds_.emplace_back(path, fd);
    return fd;
}

namespace {

// pread until n bytes are in or the file ends; returns the error text, empty on success.
std::string pread_all(int fd, uint64_t offset, size_t n, uint8_t* dst) {
    while (n > 0) {
        const ssize_t got = ::pread(fd, dst, std::min<size_t>(n, size_t(1) << 30), off_t(offset));
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) return std::strerror(errno);
        if (got == 0) return fmt::format("the file ends {} bytes early", n);
        dst += got;
        offset += uint64_t(got);
        n -= size_t(got);
    }
    return {};
}

}  // namespace

void RangeReader::read(const std::string& path, uint64_t offset, size_t n, void* dst) {
    const int f = fd(path);
    uint8_t* out = static_cast<uint8_t*>(dst);
    const size_t pieces = std::clamp<size_t>(n / min_piece_, 1, size_t(threads_));
    std::string err;
    if (pieces == 1) {
        err = pread_all(f, offset, n, out);
    } else {
        // Equal pieces, 4 KiB aligned so that each thread starts on its own page.
        const size_t step = (n / pieces + 4095) / 4096 * 4096;
        std::vector<std::string> errs(pieces);
        std::vector<std::thread> ts;
        for (size_t i = 1; i < pieces; ++i) {
            const size_t b = std::min(n, i * step), e = std::min(n, b + step);
            try {
                ts.emplace_back([&, i, b, e] { errs[i] = pread_all(f, offset + b, e - b, out + b); });
            } catch (const std::system_error&) {  // no thread: this one reads the piece
                errs[i] = pread_all(f, offset + b, e - b, out + b);
            }
        }
        errs[0] = pread_all(f, offset, std::min(n, step), out);
        for (std::thread& t : ts) t.join();
        for (const std::string& e : errs)
            if (!e.empty() && err.empty()) err = e;
    }
    if (!err.empty()) raise<IoError>("cannot read {} bytes at offset {} of {}: {}", n, offset, path, err);
}

}  // namespace qdit
