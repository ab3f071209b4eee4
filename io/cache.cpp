#include "io/cache.h"

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include <fmt/format.h>

#include "core/error.h"
#include "io/files.h"

namespace fs = std::filesystem;

namespace qdit {

namespace {

constexpr char kMagic[] = "qdit-blob 1\n";
constexpr size_t kMagicLen = sizeof(kMagic) - 1;

uint64_t fnv1a(const uint8_t* p, size_t n, uint64_t h = 0xcbf29ce484222325ull) {
    for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

void put_u64(std::string& s, uint64_t v) { s.append(reinterpret_cast<const char*>(&v), 8); }

}  // namespace

std::string default_cache_dir() {
    if (const char* d = std::getenv("QDIT_CACHE_DIR"); d && *d) return d;
    if (const char* d = std::getenv("XDG_CACHE_HOME"); d && *d) return (fs::path(d) / "qdit").string();
    if (const char* h = std::getenv("HOME"); h && *h) return (fs::path(h) / ".cache" / "qdit").string();
    raise<IoError>("no cache folder: set QDIT_CACHE_DIR or HOME");
}

std::string BlobCache::path_of(const std::string& key) const {
    const uint64_t h = fnv1a(reinterpret_cast<const uint8_t*>(key.data()), key.size());
    return (fs::path(dir_) / fmt::format("{:016x}.bin", h)).string();
}

std::optional<std::vector<uint8_t>> BlobCache::get(const std::string& key, std::string* problem) const {
    const std::string path = path_of(key);
    std::string why;
    auto unusable = [&](const std::string& w) -> std::optional<std::vector<uint8_t>> {
        if (problem) *problem = fmt::format("{}: {}", path, w);
        return std::nullopt;
    };
    std::error_code ec;
    if (!fs::exists(path, ec)) return std::nullopt;
    std::ifstream f(path, std::ios::binary);
    if (!f) return unusable(fmt::format("cannot be read: {}", std::strerror(errno)));
    const std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    const uint8_t* p = reinterpret_cast<const uint8_t*>(s.data());
    size_t at = 0;
    auto u64 = [&](uint64_t* v) {
        if (s.size() - at < 8) return false;
        std::memcpy(v, p + at, 8);
        at += 8;
        return true;
    };
    if (s.size() < kMagicLen || s.compare(0, kMagicLen, kMagic) != 0) return unusable("not a qdit cache entry");
    at = kMagicLen;
    uint64_t klen = 0, plen = 0, sum = 0;
    if (!u64(&klen) || klen > s.size() - at) return unusable("truncated (key)");
    const std::string stored_key = s.substr(at, size_t(klen));
    at += size_t(klen);
    if (!u64(&plen) || plen > s.size() - at) return unusable("truncated (payload)");
    const size_t payload_at = at;
    at += size_t(plen);
    const size_t body = at;
    if (!u64(&sum) || at != s.size()) return unusable("truncated or trailing bytes");
    if (fnv1a(p, body) != sum) return unusable("checksum mismatch (corrupt)");
    if (stored_key != key) return unusable("written for another key");
    return std::vector<uint8_t>(p + payload_at, p + payload_at + plen);
}

bool BlobCache::put(const std::string& key, const std::vector<uint8_t>& payload, std::string* problem) const {
    std::string s(kMagic, kMagicLen);
    put_u64(s, key.size());
    s += key;
    put_u64(s, payload.size());
    s.append(reinterpret_cast<const char*>(payload.data()), payload.size());
    put_u64(s, fnv1a(reinterpret_cast<const uint8_t*>(s.data()), s.size()));
    const std::string path = path_of(key);
    try {
        std::error_code ec;
        fs::create_directories(dir_, ec);
        if (ec) raise<IoError>("cannot make the folder {}: {}", dir_, ec.message());
        write_file_atomic(path, s);
        return true;
    } catch (const std::exception& e) {
        if (problem) *problem = e.what();
        return false;
    }
}

std::string plan_cache_dir() {
    if (const char* v = std::getenv("QDIT_PLAN_CACHE"); v && std::string(v) == "0") return {};
    try {
        return (fs::path(default_cache_dir()) / "cudnn-plans").string();
    } catch (const IoError&) {
        return {};
    }
}

std::string plan_cache_key(const std::string& kind, int format, const PlanEnvironment& env, const std::string& shape) {
    return fmt::format("{} {}|qdit {}|gpu {}|cc {}.{}|driver {}|cudnn {}|frontend {}|{}", kind, format, env.qdit,
                       env.gpu, env.cc_major, env.cc_minor, env.driver, env.library, env.frontend, shape);
}

}  // namespace qdit
