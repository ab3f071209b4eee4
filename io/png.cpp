#include "io/png.h"

#include <png.h>
#include <zlib.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <new>

#include "core/error.h"
#include "io/files.h"

namespace qdit {

namespace {

[[noreturn]] void on_png_error(png_structp png, png_const_charp msg) {
    auto* where = static_cast<std::string*>(png_get_error_ptr(png));
    *where = msg;
    png_longjmp(png, 1);
}
void on_png_warning(png_structp, png_const_charp) {}

// libpng's output callback: appends to the std::string given to png_set_write_fn. No exception
// may cross libpng, so a failed allocation becomes a libpng error (a longjmp from here).
void png_append(png_structp png, png_bytep data, size_t n) {
    bool ok = true;
    try {
        static_cast<std::string*>(png_get_io_ptr(png))->append(reinterpret_cast<const char*>(data), n);
    } catch (const std::bad_alloc&) {
        ok = false;
    }
    if (!ok) png_error(png, "out of memory");
}
void png_flush_nothing(png_structp) {}

// The only code that runs under libpng's longjmp error handling: plain
// pointers in, success out, so nothing with a destructor is skipped.
bool png_write_all(png_structp png, png_infop info, std::string* out, int width, int height,
                   png_textp chunks, int n_chunks, png_bytepp rows) {
    if (setjmp(png_jmpbuf(png))) return false;
    png_set_write_fn(png, out, png_append, png_flush_nothing);
    // The Paeth filter on every row and zlib's run-length strategy: on 1024x1024 photographs
    // 6-7x faster than libpng's defaults (every filter tried per row, zlib level 6) for files
    // within 0.5 % of their size (docs/benchmarks.md, "PNG encoding").
    png_set_filter(png, PNG_FILTER_TYPE_BASE, PNG_FILTER_PAETH);
    png_set_compression_strategy(png, Z_RLE);
    png_set_compression_level(png, 1);
    png_set_IHDR(png, info, png_uint_32(width), png_uint_32(height), 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (n_chunks > 0) png_set_text(png, info, chunks, n_chunks);
    png_set_rows(png, info, rows);
    png_write_png(png, info, PNG_TRANSFORM_IDENTITY, nullptr);
    return true;
}

bool png_read_all(png_structp png, png_infop info, std::FILE* f) {
    if (setjmp(png_jmpbuf(png))) return false;
    png_init_io(png, f);
    png_read_png(png, info, PNG_TRANSFORM_STRIP_16 | PNG_TRANSFORM_PACKING | PNG_TRANSFORM_EXPAND,
                 nullptr);
    return true;
}

bool is_ascii(const std::string& s) {
    for (unsigned char c : s)
        if (c >= 0x80) return false;
    return true;
}

}  // namespace

std::string encode_png(const uint8_t* rgb, int width, int height,
                       const std::vector<std::pair<std::string, std::string>>& text) {
    QDIT_CHECK(width > 0 && height > 0, "empty image {}x{}", width, height);
    std::string err, out;
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &err, on_png_error, on_png_warning);
    png_infop info = png ? png_create_info_struct(png) : nullptr;
    std::vector<png_text> chunks(text.size());
    for (size_t i = 0; i < text.size(); ++i) {
        std::memset(&chunks[i], 0, sizeof(png_text));
        chunks[i].compression =
            is_ascii(text[i].second) ? PNG_TEXT_COMPRESSION_NONE : PNG_ITXT_COMPRESSION_NONE;
        chunks[i].key = const_cast<char*>(text[i].first.c_str());
        chunks[i].text = const_cast<char*>(text[i].second.c_str());
        chunks[i].text_length = text[i].second.size();
    }
    std::vector<png_bytep> rows(static_cast<size_t>(height));
    for (int y = 0; y < height; ++y)
        rows[size_t(y)] = const_cast<png_bytep>(rgb + size_t(y) * size_t(width) * 3);
    bool ok = png && info &&
              png_write_all(png, info, &out, width, height, chunks.data(), int(chunks.size()), rows.data());
    png_destroy_write_struct(png ? &png : nullptr, info ? &info : nullptr);
    if (!ok) raise<FormatError>("cannot encode a {}x{} PNG: {}", width, height, err.empty() ? "out of memory" : err);
    return out;
}

void write_png(const std::string& path, const uint8_t* rgb, int width, int height,
               const std::vector<std::pair<std::string, std::string>>& text) {
    write_file_atomic(path, encode_png(rgb, width, height, text));
}

PngImage read_png(const std::string& path) {
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) raise<IoError>("cannot read {}: {}", path, std::strerror(errno));
    std::string err;
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &err, on_png_error, on_png_warning);
    png_infop info = png ? png_create_info_struct(png) : nullptr;
    PngImage img;
    bool ok = png && info && png_read_all(png, info, f);
    if (ok && png_get_color_type(png, info) != PNG_COLOR_TYPE_RGB) {
        err = "not an 8-bit RGB image";
        ok = false;
    }
    if (ok) {
        img.width = int(png_get_image_width(png, info));
        img.height = int(png_get_image_height(png, info));
        png_bytepp rows = png_get_rows(png, info);
        const size_t stride = size_t(img.width) * 3;
        img.rgb.resize(stride * size_t(img.height));
        for (int y = 0; y < img.height; ++y) std::memcpy(img.rgb.data() + size_t(y) * stride, rows[y], stride);
        png_textp t = nullptr;
        int n = png_get_text(png, info, &t, nullptr);
        for (int i = 0; i < n; ++i)
            img.text.emplace_back(t[i].key, std::string(t[i].text, t[i].compression == PNG_TEXT_COMPRESSION_NONE
                                                                       ? t[i].text_length
                                                                       : t[i].itxt_length));
    }
    png_destroy_read_struct(png ? &png : nullptr, info ? &info : nullptr, nullptr);
    std::fclose(f);
    if (!ok) raise<FormatError>("{} is not a readable PNG: {}", path, err);
    return img;
}

}  // namespace qdit
