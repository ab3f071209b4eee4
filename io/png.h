// PNG output through libpng: 8-bit RGB with tEXt chunks, in memory or written atomically.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace qdit {

// Writes `rgb` (height × width × 3 bytes, row-major) to `path` through a
// temporary file renamed at the end. `text` becomes tEXt chunks (keyword, value);
// values may be UTF-8 (written as iTXt when not plain Latin-1).
// The PNG file's bytes for `rgb` (height × width × 3 bytes, row-major) with
// `text` as tEXt / iTXt chunks.
std::string encode_png(const uint8_t* rgb, int width, int height,
                       const std::vector<std::pair<std::string, std::string>>& text = {});

void write_png(const std::string& path, const uint8_t* rgb, int width, int height,
               const std::vector<std::pair<std::string, std::string>>& text = {});

struct PngImage {
    int width = 0, height = 0;
    std::vector<uint8_t> rgb;
    std::vector<std::pair<std::string, std::string>> text;
};
// Reads an 8-bit RGB PNG (for tests and tools).
PngImage read_png(const std::string& path);

}  // namespace qdit
