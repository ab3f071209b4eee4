#pragma once
#include <cmath>
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

namespace detail {

// j as a T when its JSON type and value fit T: integers only from JSON integers (or
// floats with an integral value) inside T's range, never from booleans or fractions;
// false otherwise. nlohmann's get<T>() would truncate 2.5 to 2, take true as 1, and
// casting a float beyond T's range is undefined behaviour.
template <typename T>
bool config_value(const nlohmann::json& j, T* out) {
    if constexpr (std::is_same_v<T, bool>) {
        if (!j.is_boolean()) return false;
        *out = j.get<bool>();
    } else if constexpr (std::is_integral_v<T>) {
        using L = std::numeric_limits<T>;
        if (j.is_number_unsigned()) {
            uint64_t v = j.get<uint64_t>();
            if (v > uint64_t(L::max())) return false;
            *out = T(v);
        } else if (j.is_number_integer()) {
            int64_t v = j.get<int64_t>();
            if (v < 0 ? !L::is_signed || v < int64_t(L::min()) : uint64_t(v) > uint64_t(L::max()))
                return false;
            *out = T(v);
        } else if (j.is_number_float()) {
            // T holds [-2^digits, 2^digits) (signed) or [0, 2^digits); both ends are exact doubles.
            double v = j.get<double>(), top = std::ldexp(1.0, L::digits);
            if (v != std::floor(v) || v < (L::is_signed ? -top : 0.0) || v >= top) return false;
            *out = T(v);
        } else {
            return false;
        }
    } else if constexpr (std::is_floating_point_v<T>) {
        if (!j.is_number()) return false;
        *out = j.get<T>();
    } else if constexpr (std::is_same_v<T, std::string>) {
        if (!j.is_string()) return false;
        *out = j.get<std::string>();
    } else {  // std::vector<U>
        if (!j.is_array()) return false;
        T v(j.size());
        for (size_t i = 0; i < j.size(); ++i)
            if (!config_value(j[i], &v[i])) return false;
        *out = std::move(v);
    }
    return true;
}

}  // namespace detail

// Reads config field j[key] into *out when it is present and not null (else
// *out keeps its default, as the reference's constructor defaults apply);
// ConfigError naming `where` and the key when the value has the wrong type or
// does not fit *out. T: bool, an integer, a floating-point type, std::string,
// or a std::vector of those.
template <typename T>
void read_config_field(const nlohmann::json& j, const std::string& where, const char* key, T* out) {
    if (!j.is_object() || !j.contains(key) || j[key].is_null()) return;
    if (!detail::config_value(j[key], out))
        raise<ConfigError>("{}: field '{}' has the wrong type or is out of range ({})", where, key,
                           j[key].dump());
}

// Writes `data` to a temporary file beside `path`, then renames it over
// `path`, so readers never see a partial file.
void write_file_atomic(const std::string& path, const std::string& data);

// A temporary path beside `path` (same folder, so rename is atomic).
std::string temp_path_for(const std::string& path);

}  // namespace qdit
