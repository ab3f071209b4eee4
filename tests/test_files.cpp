// io/files.h: JSON files and paths.
#include <filesystem>
#include <string>

#include <gtest/gtest.h>

#include "expect_error.h"
#include "io/files.h"

using namespace qdit;

// A number beyond double's range is a parse failure (nlohmann throws out_of_range
// for it, not parse_error): still a FormatError naming the file.
TEST(JsonFile, NumberOverflowIsAFormatError) {
    const std::string path =
        (std::filesystem::temp_directory_path() / "qdit_number_overflow.json").string();
    write_file_atomic(path, R"({"dim": 1e400})");
    const std::string e = testutil::error_of<FormatError>([&] { read_json_file(path); });
    EXPECT_NE(e.find(path), std::string::npos) << e;
    EXPECT_NE(e.find("not valid JSON"), std::string::npos) << e;
    std::filesystem::remove(path);
}

// path_exists: false for a missing path, an IoError naming a path that cannot be
// examined (std::filesystem::exists would throw its own filesystem_error).
TEST(PathExists, MissingExistingAndUnexaminable) {
    const auto tmp = std::filesystem::temp_directory_path();
    EXPECT_TRUE(path_exists(tmp.string()));
    EXPECT_FALSE(path_exists((tmp / "qdit_no_such_file").string()));
    const std::string too_long = (tmp / std::string(300, 'x')).string();
    const std::string e = testutil::error_of<IoError>([&] { path_exists(too_long); });
    EXPECT_NE(e.find(too_long), std::string::npos) << e;
}
