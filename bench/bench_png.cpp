// PNG encoding (io/png.h: Paeth filter, zlib level 1 with the run-length strategy, runs of rows
// compressed in parallel on the thread pool) of 1024x1024 RGB images, on one thread and on the
// pool's default count. Images: uniform noise (what random weights generate), a smooth synthetic
// one, and every 8-bit RGB PNG listed in QDIT_PNG_IMAGES (colon-separated paths). Counter bytes:
// the file's size.
//   QDIT_PNG_IMAGES=a.png:b.png bench_png --benchmark_min_time=0.5
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdlib>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/threads.h"
#include "io/png.h"

using namespace qdit;

namespace {

void encode(benchmark::State& st, std::vector<uint8_t> rgb, int w, int h, int threads) {
    set_num_threads(threads);
    size_t bytes = 0;
    for (auto _ : st) {
        const std::string png = encode_png(rgb.data(), w, h);
        bytes = png.size();
        benchmark::DoNotOptimize(png.data());
    }
    st.counters["bytes"] = double(bytes);
    st.counters["threads"] = num_threads();
    set_num_threads(0);
}

void register_image(const std::string& name, const std::vector<uint8_t>& rgb, int w, int h) {
    for (int threads : {1, 0})
        benchmark::RegisterBenchmark((name + (threads == 1 ? "/1thread" : "/pool")).c_str(),
                                     [=](benchmark::State& st) { encode(st, rgb, w, h, threads); })
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
}

}  // namespace

int main(int argc, char** argv) {
    const int w = 1024, h = 1024;
    std::vector<uint8_t> noise(size_t(w) * h * 3), smooth(noise.size());
    std::mt19937 g(1);
    for (auto& v : noise) v = uint8_t(g());
    for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x)
            for (int c = 0; c < 3; ++c)
                smooth[(size_t(y) * w + x) * 3 + c] =
                    uint8_t(127 + 100 * std::sin(x * 0.01 + c) * std::cos(y * 0.013) + double(g() % 7));
    register_image("noise", noise, w, h);
    register_image("smooth", smooth, w, h);
    if (const char* list = std::getenv("QDIT_PNG_IMAGES")) {
        std::stringstream ss(list);
        for (std::string path; std::getline(ss, path, ':');) {
            if (path.empty()) continue;
            const PngImage img = read_png(path);
            register_image(path.substr(path.find_last_of('/') + 1), img.rgb, img.width, img.height);
        }
    }
    benchmark::Initialize(&argc, argv);
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
