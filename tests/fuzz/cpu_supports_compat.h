// Force-included into backend/cpu/int8_gemm.cpp when the compiler (clang 14,
// Debian 12's clang) does not know every CPU feature name the ISA dispatcher
// asks __builtin_cpu_supports about ("f16c", "amx-tile", "amx-int8"): the same
// answers, with those read from CPUID.
#pragma once
#include <cpuid.h>

#include <cstring>

static inline bool qdit_cpu_supports(const char* feature) {
    unsigned a, b, c, d;
    if (std::strcmp(feature, "f16c") == 0)
        return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C) != 0;
    // CPUID leaf 7: EDX bit 24 AMX-TILE, bit 25 AMX-INT8.
    if (std::strcmp(feature, "amx-tile") == 0)
        return __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d & (1u << 24)) != 0;
    if (std::strcmp(feature, "amx-int8") == 0)
        return __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d & (1u << 25)) != 0;
    // The other names, each a literal, as the builtin needs.
#define QDIT_FEATURE(name) \
    if (std::strcmp(feature, name) == 0) return __builtin_cpu_supports(name)
    QDIT_FEATURE("avx2");
    QDIT_FEATURE("fma");
    QDIT_FEATURE("avx512f");
    QDIT_FEATURE("avx512bw");
    QDIT_FEATURE("avx512vl");
    QDIT_FEATURE("avx512dq");
    QDIT_FEATURE("avx512vnni");
#undef QDIT_FEATURE
    return false;
}
#define __builtin_cpu_supports(feature) qdit_cpu_supports(feature)
