// Where the committed fixtures are: QDIT_TEST_DATA (the source tree the test binary was built
// from) when that folder is there, else tests/data (a test binary run from the repository root of
// a copy of the tree, e.g. on a GPU machine).
#pragma once
#include <filesystem>
#include <string>

namespace qdit::testutil {

// tests/data/<family>/<name>.
inline std::filesystem::path fixture_dir(const std::string& family, const std::string& name) {
    std::filesystem::path root = "tests/data";
#ifdef QDIT_TEST_DATA
    if (std::filesystem::exists(std::filesystem::path(QDIT_TEST_DATA) / family)) root = QDIT_TEST_DATA;
#endif
    return root / family / name;
}

// A fixture's transformer checkpoint in bf16: `transformer-bf16` where the fixture has one, else
// `transformer` (f32, loaded as bf16: the same rounding).
inline std::string transformer_bf16(const std::filesystem::path& fixture) {
    const std::filesystem::path d16 = fixture / "transformer-bf16";
    return (std::filesystem::exists(d16) ? d16 : fixture / "transformer").string();
}

}  // namespace qdit::testutil
