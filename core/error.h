// One exception hierarchy for the whole engine. Messages say what went wrong,
// where (file, tensor, layer, field) and, where it helps, what to do.
#pragma once
#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace qdit {

class Error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// A file could not be opened, read or written.
class IoError : public Error {
public:
    using Error::Error;
};

// A file was read but its contents are malformed (corrupt header, bad offsets...).
class FormatError : public Error {
public:
    using Error::Error;
};

// A configuration (quantization config, model config.json) is invalid.
class ConfigError : public Error {
public:
    using Error::Error;
};

// Shapes, dtypes or keys do not fit what the model or op expects.
class ShapeError : public Error {
public:
    using Error::Error;
};

// The command line itself is wrong; the CLI exits with status 2 for these.
class UsageError : public Error {
public:
    using Error::Error;
};

// The machine lacks what a request needs (memory for a model's weights).
class ResourceError : public Error {
public:
    using Error::Error;
};

// A CUDA runtime or library call failed.
class CudaError : public Error {
public:
    using Error::Error;
};

template <typename E = Error, typename... Args>
[[noreturn]] void raise(fmt::format_string<Args...> f, Args&&... args) {
    throw E(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace qdit

// Internal invariant check: throws qdit::Error naming the source location.
#define QDIT_CHECK(cond, ...)                                                          \
    do {                                                                              \
        if (!(cond))                                                                  \
            throw ::qdit::Error(fmt::format("{} ({}:{})", fmt::format(__VA_ARGS__), \
                                            __FILE__, __LINE__));                     \
    } while (0)
