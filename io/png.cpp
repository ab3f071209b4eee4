#include "io/png.h"

#include <png.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>

#include "core/error.h"
#include "core/threads.h"
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

// Row y of an RGB image through the PNG Paeth filter (type byte 4, then each byte minus the Paeth
// predictor of its left, upper and upper-left neighbours; zeros outside the image).
void paeth_row(const uint8_t* cur, const uint8_t* prev, size_t stride, uint8_t* out) {
    out[0] = 4;
    for (size_t i = 0; i < stride; ++i) {
        const int a = i >= 3 ? cur[i - 3] : 0, b = prev ? prev[i] : 0, c = prev && i >= 3 ? prev[i - 3] : 0;
        const int p = a + b - c, pa = std::abs(p - a), pb = std::abs(p - b), pc = std::abs(p - c);
        const int pred = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
        out[i + 1] = uint8_t(cur[i] - pred);
    }
}

// The image data (IDAT) of an 8-bit RGB PNG: its rows Paeth-filtered, as one zlib stream at level 1
// with zlib's run-length strategy (on 1024x1024 photographs 6-7x faster than libpng's defaults,
// every filter tried per row and level 6, for files within 0.5 % of their size: docs/benchmarks.md,
// "PNG encoding"). The rows are cut into runs of about 256 KB that are filtered and deflated on
// the thread pool, each on its own and ended by a sync flush (the last by the stream's end), so
// that their outputs concatenate into one deflate stream; the Adler-32 of the whole is combined
// from the runs'. Empty string when zlib fails (out of memory).
std::string png_image_data(const uint8_t* rgb, int width, int height) {
    const size_t stride = size_t(width) * 3, line = stride + 1;
    const int64_t per_run = std::max<int64_t>(1, int64_t((size_t(1) << 18) / line));
    const int64_t runs = (int64_t(height) + per_run - 1) / per_run;
    const size_t n = static_cast<size_t>(runs);
    std::vector<std::string> parts(n);
    std::vector<uLong> adler(n);
    std::vector<size_t> bytes(n);
    std::vector<char> ok(n, 0);
    parallel_for(runs, 1, [&](int64_t b, int64_t e) {
        std::vector<uint8_t> f;
        for (int64_t r = b; r < e; ++r) {
            const int64_t y0 = r * per_run, y1 = std::min<int64_t>(height, y0 + per_run);
            f.resize(size_t(y1 - y0) * line);
            for (int64_t y = y0; y < y1; ++y)
                paeth_row(rgb + size_t(y) * stride, y > 0 ? rgb + size_t(y - 1) * stride : nullptr, stride,
                          f.data() + size_t(y - y0) * line);
            adler[size_t(r)] = adler32(1, f.data(), uInt(f.size()));
            bytes[size_t(r)] = f.size();
            z_stream z{};
            if (deflateInit2(&z, 1, Z_DEFLATED, -15, 8, Z_RLE) != Z_OK) continue;
            std::string& out = parts[size_t(r)];
            out.resize(deflateBound(&z, uLong(f.size())) + 16);  // + the sync flush's empty block
            z.next_in = f.data();
            z.avail_in = uInt(f.size());
            z.next_out = reinterpret_cast<Bytef*>(out.data());
            z.avail_out = uInt(out.size());
            const bool last = r + 1 == runs;
            const int rc = deflate(&z, last ? Z_FINISH : Z_SYNC_FLUSH);
            ok[size_t(r)] = (last ? rc == Z_STREAM_END : rc == Z_OK && z.avail_in == 0) ? 1 : 0;
            out.resize(z.total_out);
            deflateEnd(&z);
        }
    });
    if (std::find(ok.begin(), ok.end(), 0) != ok.end()) return {};
    std::string s = "\x78\x01";  // zlib header: deflate, 32 KB window, fastest level
    uLong a = adler32(0, nullptr, 0);
    for (int64_t r = 0; r < runs; ++r) {
        s += parts[size_t(r)];
        a = adler32_combine(a, adler[size_t(r)], z_off_t(bytes[size_t(r)]));
    }
    for (int shift = 24; shift >= 0; shift -= 8) s += char((a >> shift) & 0xff);
    return s;
}

// The only code that runs under libpng's longjmp error handling: plain
// pointers in, success out, so nothing with a destructor is skipped. libpng writes the signature,
// the header, the text chunks and the end; the image data is ours, compressed in parallel.
bool png_write_all(png_structp png, png_infop info, std::string* out, int width, int height,
                   png_textp chunks, int n_chunks, const std::string* idat) {
    if (setjmp(png_jmpbuf(png))) return false;
    png_set_write_fn(png, out, png_append, png_flush_nothing);
    png_set_IHDR(png, info, png_uint_32(width), png_uint_32(height), 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (n_chunks > 0) png_set_text(png, info, chunks, n_chunks);
    png_write_info(png, info);
    png_write_chunk(png, reinterpret_cast<png_const_bytep>("IDAT"), reinterpret_cast<png_const_bytep>(idat->data()),
                    idat->size());
    png_write_chunk(png, reinterpret_cast<png_const_bytep>("IEND"), nullptr, 0);
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
    QDIT_CHECK(size_t(width) * 3 + 1 <= size_t(1) << 30 && size_t(height) * (size_t(width) * 3 + 1) < size_t(1) << 31,
               "a {}x{} image is past what one PNG image-data chunk holds", width, height);
    // Before libpng's structs exist: nothing to free if this throws.
    const std::string idat = png_image_data(rgb, width, height);
    std::vector<png_text> chunks(text.size());
    std::string err, out;
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &err, on_png_error, on_png_warning);
    png_infop info = png ? png_create_info_struct(png) : nullptr;
    for (size_t i = 0; i < text.size(); ++i) {
        std::memset(&chunks[i], 0, sizeof(png_text));
        chunks[i].compression =
            is_ascii(text[i].second) ? PNG_TEXT_COMPRESSION_NONE : PNG_ITXT_COMPRESSION_NONE;
        chunks[i].key = const_cast<char*>(text[i].first.c_str());
        chunks[i].text = const_cast<char*>(text[i].second.c_str());
        chunks[i].text_length = text[i].second.size();
    }
    if (idat.empty()) err = "zlib could not compress the image";
    bool ok = png && info && !idat.empty() &&
              png_write_all(png, info, &out, width, height, chunks.data(), int(chunks.size()), &idat);
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
