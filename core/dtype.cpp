#include "core/dtype.h"

#include <cmath>

namespace qdit {

namespace {
struct Info {
    DType t;
    const char* name;
    size_t size;
};
constexpr Info kInfo[] = {
    {DType::F64, "F64", 8},  {DType::F32, "F32", 4}, {DType::F16, "F16", 2},
    {DType::BF16, "BF16", 2}, {DType::I64, "I64", 8}, {DType::I32, "I32", 4},
    {DType::I8, "I8", 1},    {DType::U8, "U8", 1},   {DType::F8_E4M3, "F8_E4M3", 1},
};
}  // namespace

size_t dtype_size(DType t) { return kInfo[int(t)].size; }
const char* dtype_name(DType t) { return kInfo[int(t)].name; }

bool dtype_from_name(std::string_view s, DType* out) {
    for (const Info& i : kInfo)
        if (s == i.name) {
            *out = i.t;
            return true;
        }
    return false;
}

float f16_to_f32(uint16_t h) {
    uint32_t sign = uint32_t(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    uint32_t u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else {  // subnormal: value = man * 2^-24
            float f = std::ldexp(float(man), -24);
            std::memcpy(&u, &f, 4);
            u |= sign;
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 112) << 23) | (man << 13);
    }
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

uint16_t f32_to_f16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    uint16_t sign = uint16_t((u >> 16) & 0x8000);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00;  // NaN
    if (a >= 0x477ff000u) return sign | 0x7c00;  // rounds to >= 65520: inf
    if (a < 0x38800000u) {                       // below the smallest normal: subnormal or zero
        float af;
        std::memcpy(&af, &a, 4);
        float m = std::nearbyint(af * 16777216.0f);  // units of 2^-24, ties to even
        return sign | uint16_t(m);
    }
    uint32_t r = a + 0xfffu + ((a >> 13) & 1u);
    return sign | uint16_t(((r >> 13) - (112u << 10)));
}

float f8e4m3_to_f32(uint8_t v) {
    uint32_t sign = v >> 7, exp = (v >> 3) & 0xf, man = v & 7;
    float r;
    if (exp == 15 && man == 7) r = NAN;
    else if (exp == 0) r = std::ldexp(float(man), -9);
    else r = std::ldexp(1.0f + float(man) / 8.0f, int(exp) - 7);
    return sign ? -r : r;
}

}  // namespace qdit
