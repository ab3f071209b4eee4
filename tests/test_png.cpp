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
