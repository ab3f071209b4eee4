#pragma once
#include <string>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace qdit {

// Whole file as a string; IoError naming the path when it cannot be read.
std::string read_text_file(const std::string& path);

// Parses a JSON file; FormatError naming the file and the parser's position.
nlohmann::json read_json_file(const std::string& path);

// Reads config field j[key] into *out when it is present and not null (else
// *out keeps its default, as the reference's constructor defaults apply);
// ConfigError naming `where` and the key when the value has the wrong type.
template <typename T>
void read_config_field(const nlohmann::json& j, const std::string& where, const char* key, T* out) {
    if (!j.contains(key) || j[key].is_null()) return;
    try {
        *out = j[key].get<T>();
    } catch (const nlohmann::json::exception&) {
        raise<ConfigError>("{}: field '{}' has the wrong type ({})", where, key, j[key].dump());
    }
}

// Writes `data` to a temporary file beside `path`, then renames it over
// `path`, so readers never see a partial file.
void write_file_atomic(const std::string& path, const std::string& data);

// A temporary path beside `path` (same folder, so rename is atomic).
std::string temp_path_for(const std::string& path);

}  // namespace qdit
