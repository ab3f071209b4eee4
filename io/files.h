#pragma once
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace qdit {

// Whole file as a string; IoError naming the path when it cannot be read.
std::string read_text_file(const std::string& path);

// Parses a JSON file; FormatError naming the file and the parser's position.
nlohmann::json read_json_file(const std::string& path);

// Whether `path` exists; IoError naming it when it cannot be examined (a name too
// long, a folder without permission...), where std::filesystem::exists would throw
// its own filesystem_error.
bool path_exists(const std::string& path);

// Config fields (config.json, scheduler_config.json, model_index.json, ...).
//
// A field must have the JSON type of what it is read into: an integer field
// refuses 2.5, 2.0, 1e9, "2" and true; a number field refuses strings and
// booleans; a boolean field refuses 0 and 1; a list field checks each entry.
// A field that is absent or null keeps the default in *out (as the reference's
// constructor defaults apply). Errors are ConfigError naming `where` (the
// file) and the field, with the list index for list entries ("axes_lens[0]").

// A relation between config fields (or a value) that must hold: ConfigError "<where>: <what>".
inline void require_config(bool ok, const std::string& where, const std::string& what) {
    if (!ok) raise<ConfigError>("{}: {}", where, what);
}
// The same for one field's value: ConfigError "<where>: field '<field>' <what>".
inline void require_config_field(bool ok, const std::string& where, const std::string& field,
                                 const std::string& what) {
    if (!ok) raise<ConfigError>("{}: field '{}' {}", where, field, what);
}
// A diffusers config.json `j` (named `where`) of the class `class_name`: a JSON object whose
// "_class_name", when present, is that class; ConfigError naming the field otherwise.
void require_config_class(const nlohmann::json& j, const std::string& where, const std::string& class_name);

// Inclusive range of a numeric config field.
template <typename T>
struct Bounds {
    T lo, hi;
};

// Sizes the model families plausibly use, far above any published model and
// far below what would overflow or exhaust memory while a model's parameter
// list is built (docs/usage.md, "Limits on inputs").
namespace config_limits {
inline constexpr int64_t kLayers = 1024;         // blocks, decoder layers, resnets per block
inline constexpr int64_t kWidth = 65536;         // hidden sizes, channels, feature and head dims
inline constexpr int64_t kFfnWidth = 4 * kWidth; // feed-forward (intermediate) sizes
inline constexpr int64_t kHeads = 1024;          // attention heads
inline constexpr int64_t kVocab = 1 << 22;       // vocabulary entries
inline constexpr int64_t kPositions = 65536;     // RoPE table length per axis
inline constexpr int64_t kRopeTableValues = int64_t(1) << 26;  // sum over axes of length x dim
inline constexpr int64_t kListEntries = 16;      // entries of a per-axis / per-block list
}  // namespace config_limits

namespace config_detail {

template <typename T>
struct is_vector : std::false_type {};
template <typename T>
struct is_vector<std::vector<T>> : std::true_type {};

[[noreturn]] void wrong_type(const std::string& where, const std::string& field, const char* want,
                             const nlohmann::json& got);
// v as an integer in [lo, hi] / a finite number in [lo, hi].
int64_t integer(const nlohmann::json& v, const std::string& where, const std::string& field,
                int64_t lo, int64_t hi);
double number(const nlohmann::json& v, const std::string& where, const std::string& field,
              double lo, double hi);

template <typename T>
T value(const nlohmann::json& v, const std::string& where, const std::string& field) {
    if constexpr (std::is_same_v<T, bool>) {
        if (!v.is_boolean()) wrong_type(where, field, "true or false", v);
        return v.get<bool>();
    } else if constexpr (std::is_integral_v<T>) {
        return T(integer(v, where, field, std::numeric_limits<T>::min(),
                         int64_t(std::min<uint64_t>(std::numeric_limits<T>::max(), INT64_MAX))));
    } else if constexpr (std::is_floating_point_v<T>) {
        return T(number(v, where, field, std::numeric_limits<T>::lowest(),
                        std::numeric_limits<T>::max()));
    } else if constexpr (std::is_same_v<T, std::string>) {
        if (!v.is_string()) wrong_type(where, field, "a string", v);
        return v.get<std::string>();
    } else if constexpr (is_vector<T>::value) {
        if (!v.is_array()) wrong_type(where, field, "a list", v);
        T out;
        for (size_t i = 0; i < v.size(); ++i)
            out.push_back(value<typename T::value_type>(v[i], where, field + "[" + std::to_string(i) + "]"));
        return out;
    } else {
        static_assert(is_vector<T>::value, "read_config_field: unsupported field type");
    }
}

template <typename T>
T bounded(const nlohmann::json& v, const std::string& where, const std::string& field, Bounds<T> b) {
    static_assert(std::is_arithmetic_v<T> && !std::is_same_v<T, bool>, "bounds are for numbers");
    if constexpr (std::is_integral_v<T>)
        return T(integer(v, where, field, int64_t(b.lo), int64_t(b.hi)));
    else
        return T(number(v, where, field, double(b.lo), double(b.hi)));
}

}  // namespace config_detail

// Reads j[key] into *out with its JSON type checked (see above).
template <typename T>
void read_config_field(const nlohmann::json& j, const std::string& where, const char* key, T* out) {
    if (!j.contains(key) || j[key].is_null()) return;
    *out = config_detail::value<T>(j[key], where, key);
}

// A number within `b` (inclusive).
template <typename T>
void read_config_field(const nlohmann::json& j, const std::string& where, const char* key, T* out,
                       Bounds<T> b) {
    if (!j.contains(key) || j[key].is_null()) return;
    *out = config_detail::bounded(j[key], where, key, b);
}

// A list of 1 to `max_entries` numbers, each within `b`.
template <typename T>
void read_config_field(const nlohmann::json& j, const std::string& where, const char* key,
                       std::vector<T>* out, Bounds<T> b,
                       size_t max_entries = size_t(config_limits::kListEntries)) {
    if (!j.contains(key) || j[key].is_null()) return;
    const nlohmann::json& v = j[key];
    if (!v.is_array() || v.empty() || v.size() > max_entries)
        raise<ConfigError>("{}: field '{}' must be a list of 1 to {} numbers (got {})", where, key,
                           max_entries, v.dump());
    out->clear();
    for (size_t i = 0; i < v.size(); ++i)
        out->push_back(config_detail::bounded(v[i], where, fmt::format("{}[{}]", key, i), b));
}

// Writes `data` to a temporary file beside `path`, then renames it over
// `path`, so readers never see a partial file.
void write_file_atomic(const std::string& path, const std::string& data);

// Checks, before any work, that a file can be written at `path` (as
// write_file_atomic does it: a temporary file beside it, renamed over it):
// `path` is not a folder and its folder exists and is writable. IoError
// naming the path otherwise.
void check_output_file(const std::string& path);

// A temporary path beside `path` (same folder, so rename is atomic).
std::string temp_path_for(const std::string& path);

// Reads byte ranges of files into the caller's memory with pread (nothing is mapped, so the bytes
// live only in the page cache and the caller's buffer); a range of at least 2 × `min_piece` bytes
// is split over up to `threads` threads. Files stay open until the reader is destroyed.
class RangeReader {
public:
    explicit RangeReader(int threads = 4, size_t min_piece = size_t(4) << 20);
    ~RangeReader();
    RangeReader(const RangeReader&) = delete;
    RangeReader& operator=(const RangeReader&) = delete;

    // n bytes of `path` from `offset` into dst; IoError naming the file when it cannot be read or
    // ends before offset + n.
    void read(const std::string& path, uint64_t offset, size_t n, void* dst);

private:
    int fd(const std::string& path);

    int threads_;
    size_t min_piece_;
    std::vector<std::pair<std::string, int>> fds_;
};

}  // namespace qdit
