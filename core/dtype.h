#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace qdit {

// Element types a Tensor can hold. The names match the safetensors dtype strings.
enum class DType : uint8_t { F64, F32, F16, BF16, I64, I32, I8, U8, F8_E4M3 };

size_t dtype_size(DType t);
const char* dtype_name(DType t);            // "F32", "BF16", ...
bool dtype_from_name(std::string_view s, DType* out);  // false when unknown
inline bool is_float(DType t) {
    return t == DType::F64 || t == DType::F32 || t == DType::F16 || t == DType::BF16 ||
           t == DType::F8_E4M3;
}

// bf16 <-> f32. Rounding to bf16 is round-to-nearest-even, NaN stays NaN.
inline float bf16_to_f32(uint16_t h) {
    uint32_t u = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return uint16_t(u >> 16);
}
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);  // round-to-nearest-even, overflow to inf
// The value a store of v into a tensor of compute dtype dt keeps: rounded to nearest even for BF16,
// v itself for F32.
inline float round_to_dtype(float v, DType dt) { return dt == DType::BF16 ? bf16_to_f32(f32_to_bf16(v)) : v; }
float f8e4m3_to_f32(uint8_t v);

}  // namespace qdit
