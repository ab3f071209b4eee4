// The built-in tiny Z-Image pipeline: a diffusers ZImagePipeline folder with
// random weights (same layout, key names and config fields as the real
// model), written deterministically so `qdit generate` runs with no download.
#pragma once
#include <string>

#include "io/cache.h"  // default_cache_dir

namespace qdit {

// Returns <cache_dir>/tiny-zimage-v1, writing it first if it is not there
// (into a temporary folder renamed at the end, so a half-written model is
// never used).
std::string ensure_tiny_zimage(const std::string& cache_dir);

// Writes the tiny pipeline into `dir` (which must not exist).
void write_tiny_zimage(const std::string& dir);

}  // namespace qdit
