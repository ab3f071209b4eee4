// Test helper: sets an environment variable for a scope (unset when the value is null) and puts
// back what it was when the scope ends.
#pragma once
#include <cstdlib>
#include <optional>
#include <string>

namespace qdit::testutil {

struct EnvVar {
    std::string name;
    std::optional<std::string> old;
    EnvVar(const char* n, const char* value) : name(n) {
        if (const char* o = std::getenv(n)) old = o;
        set(value);
    }
    EnvVar(const EnvVar&) = delete;
    EnvVar& operator=(const EnvVar&) = delete;
    ~EnvVar() { set(old ? old->c_str() : nullptr); }
    void set(const char* value) const {
        if (value)
            ::setenv(name.c_str(), value, 1);
        else
            ::unsetenv(name.c_str());
    }
};

}  // namespace qdit::testutil
