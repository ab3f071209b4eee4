#include <gtest/gtest.h>

#include <filesystem>
#include <random>

#include "core/error.h"
#include "io/png.h"
#include "tiny_model.h"

using namespace qdit;

TEST(Png, RoundTripWithTextChunks) {
    auto dir = testutil::fresh_dir("png");
    const int w = 37, h = 21;
    std::vector<uint8_t> rgb(size_t(w * h * 3));
    std::mt19937 rng(5);
    for (auto& b : rgb) b = uint8_t(rng());
    std::string path = (dir / "a.png").string();
    write_png(path, rgb.data(), w, h, {{"prompt", "a cat, \xe7\x8c\xab \xf0\x9f\x90\x88"}, {"seed", "42"}});
    PngImage img = read_png(path);
    EXPECT_EQ(img.width, w);
    EXPECT_EQ(img.height, h);
    EXPECT_EQ(img.rgb, rgb);
    ASSERT_EQ(img.text.size(), 2u);
    EXPECT_EQ(img.text[0].first, "prompt");
    EXPECT_EQ(img.text[0].second, "a cat, \xe7\x8c\xab \xf0\x9f\x90\x88");
    EXPECT_EQ(img.text[1].second, "42");
    // Only the final file is there: the temporary was renamed.
    EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir), std::filesystem::directory_iterator()), 1);
}

// Smooth content (what the filter and the run-length strategy compress), read back bit for bit, in a
// file under half the size of the raw pixels.
TEST(Png, SmoothImageRoundTrip) {
    auto dir = testutil::fresh_dir("png_smooth");
    const int w = 300, h = 200;
    std::vector<uint8_t> rgb(size_t(w * h * 3));
    for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x)
            for (int c = 0; c < 3; ++c) rgb[size_t((y * w + x) * 3 + c)] = uint8_t((x * (c + 1) + y * 2) / 3 + (x * y) % 3);
    const std::string path = (dir / "s.png").string();
    write_png(path, rgb.data(), w, h);
    EXPECT_EQ(read_png(path).rgb, rgb);
    EXPECT_LT(std::filesystem::file_size(path), rgb.size() / 2);
}

// An image of many ~256 KB runs of rows (compressed in parallel, joined into one zlib stream): read
// back bit for bit, and the stream's end checks out (zlib verifies the combined Adler-32 when it
// inflates the image data).
TEST(Png, ManyRunsRoundTrip) {
    auto dir = testutil::fresh_dir("png_runs");
    const int w = 1000, h = 700;  // 3001 bytes a filtered row: 87 rows a run, 9 runs
    std::vector<uint8_t> rgb(size_t(w * h * 3));
    uint32_t st = 7;
    for (size_t i = 0; i < rgb.size(); ++i) {
        st = st * 1664525u + 1013904223u;
        rgb[i] = (i / 3000) % 2 ? uint8_t(st >> 24) : uint8_t(i % 251);  // noise and smooth bands
    }
    const std::string path = (dir / "r.png").string();
    write_png(path, rgb.data(), w, h, {{"prompt", "runs"}});
    const PngImage img = read_png(path);
    EXPECT_EQ(img.rgb, rgb);
    ASSERT_EQ(img.text.size(), 1u);
    EXPECT_EQ(img.text[0].second, "runs");
}

TEST(Png, UnwritablePathLeavesNothing) {
    std::vector<uint8_t> rgb(12, 7);
    EXPECT_THROW(write_png("/no/such/dir/a.png", rgb.data(), 2, 2), IoError);
    auto dir = testutil::fresh_dir("png_bad");
    std::string path = (dir / "not.png").string();
    FILE* f = fopen(path.c_str(), "wb");
    fputs("hello", f);
    fclose(f);
    EXPECT_THROW(read_png(path), FormatError);
}
