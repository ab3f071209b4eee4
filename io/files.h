#pragma once
#include <string>

#include <nlohmann/json.hpp>

namespace qdit {

// Whole file as a string; IoError naming the path when it cannot be read.
std::string read_text_file(const std::string& path);

// Parses a JSON file; FormatError naming the file and the parser's position.
nlohmann::json read_json_file(const std::string& path);

// Writes `data` to a temporary file beside `path`, then renames it over
// `path`, so readers never see a partial file.
void write_file_atomic(const std::string& path, const std::string& data);

// A temporary path beside `path` (same folder, so rename is atomic).
std::string temp_path_for(const std::string& path);

}  // namespace qdit
