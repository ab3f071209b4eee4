// io/files.h: JSON files and typed config fields.
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "expect_error.h"
#include "io/files.h"

using namespace qdit;
using nlohmann::json;

namespace {

template <typename T>
std::string field_error(const json& value, T fallback) {
    T out = fallback;
    return testutil::error_of<ConfigError>([&] {
        read_config_field(json{{"f", value}}, "cfg.json", "f", &out);
    });
}

}  // namespace

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

TEST(ConfigField, ReadsEachTypeAndKeepsTheDefaultWhenAbsentOrNull) {
    const json j = {{"i", 7},    {"u", 7u},  {"whole", 3840.0}, {"d", 2},
                    {"b", true}, {"s", "x"}, {"v", {1, 2, 3}},  {"n", nullptr}};
    int64_t i = 0, u = 0, whole = 0, absent = 5, null = 6;
    int small = 0;
    double d = 0;
    bool b = false;
    std::string s;
    std::vector<int64_t> v;
    read_config_field(j, "c", "i", &i);
    read_config_field(j, "c", "u", &u);
    read_config_field(j, "c", "whole", &whole);
    read_config_field(j, "c", "i", &small);
    read_config_field(j, "c", "d", &d);
    read_config_field(j, "c", "b", &b);
    read_config_field(j, "c", "s", &s);
    read_config_field(j, "c", "v", &v);
    read_config_field(j, "c", "absent", &absent);
    read_config_field(j, "c", "n", &null);
    EXPECT_EQ(i, 7);
    EXPECT_EQ(u, 7);
    EXPECT_EQ(whole, 3840);
    EXPECT_EQ(small, 7);
    EXPECT_EQ(d, 2.0);
    EXPECT_TRUE(b);
    EXPECT_EQ(s, "x");
    EXPECT_EQ(v, (std::vector<int64_t>{1, 2, 3}));
    EXPECT_EQ(absent, 5);
    EXPECT_EQ(null, 6);
}

// Values that do not fit the field are ConfigErrors naming the file and the field,
// never truncated, wrapped or (for floats out of range) undefined behaviour.
TEST(ConfigField, RefusesWrongTypesFractionsAndOutOfRangeValues) {
    const json bad_ints[] = {2.5,  1e300, -1e300,        9.3e18,
                             true, "16",  json::array(), json(uint64_t(1) << 63)};
    for (const json& v : bad_ints) {
        const std::string e = field_error<int64_t>(v, 0);
        EXPECT_NE(e.find("cfg.json: field 'f'"), std::string::npos) << v.dump() << ": " << e;
    }
    for (const json& v : {json(int64_t(1) << 31), json(-(int64_t(1) << 31) - 1), json(3e9)})
        EXPECT_NE(field_error<int>(v, 0).find("'f'"), std::string::npos) << v.dump();
    EXPECT_NE(field_error<uint32_t>(-1, 0).find("'f'"), std::string::npos);
    EXPECT_NE(field_error<bool>(1, false).find("'f'"), std::string::npos);
    EXPECT_NE(field_error<double>("1.0", 0.0).find("'f'"), std::string::npos);
    EXPECT_NE(field_error<std::string>(1, "").find("'f'"), std::string::npos);
    EXPECT_NE(field_error<std::vector<int64_t>>({1, 2.5}, {}).find("'f'"), std::string::npos);
    // The extremes that do fit.
    EXPECT_EQ(field_error<int64_t>(INT64_MIN, 0), "no error of the expected type");
    EXPECT_EQ(field_error<int64_t>(INT64_MAX, 0), "no error of the expected type");
    EXPECT_EQ(field_error<int>(-(int64_t(1) << 31), 0), "no error of the expected type");
}
