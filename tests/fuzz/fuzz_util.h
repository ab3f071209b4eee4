// Shared by the libFuzzer targets: the input as a file (the readers under test
// take paths) and the rule that bad input may only end in a qdit::Error.
#pragma once
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <string>
#include <typeinfo>

#include "core/error.h"

namespace qdit::fuzz {

// The harness itself failed (not the code under test).
[[noreturn]] inline void harness_failed(const char* what) {
    std::fprintf(stderr, "fuzz harness: %s\n", what);
    std::abort();
}

// A file in memory (memfd) that each input overwrites; path() opens it like a
// file on disk.
class MemFile {
public:
    MemFile() : fd_(::memfd_create("qdit-fuzz", MFD_CLOEXEC)) {
        if (fd_ < 0) harness_failed("memfd_create failed");
        path_ = "/proc/self/fd/" + std::to_string(fd_);
    }
    MemFile(const MemFile&) = delete;
    MemFile& operator=(const MemFile&) = delete;
    ~MemFile() { ::close(fd_); }

    void write(const uint8_t* data, size_t size) {
        if (::ftruncate(fd_, 0) != 0) harness_failed("ftruncate failed");
        for (size_t done = 0; done < size;) {
            ssize_t n = ::pwrite(fd_, data + done, size - done, off_t(done));
            if (n <= 0) harness_failed("pwrite failed");
            done += size_t(n);
        }
    }
    const std::string& path() const { return path_; }

private:
    int fd_;
    std::string path_;
};

// A fresh folder under the system's temporary directory, removed on exit.
class TempDir {
public:
    TempDir() {
        std::string tmpl = (std::filesystem::temp_directory_path() / "qdit-fuzz-XXXXXX").string();
        if (!::mkdtemp(tmpl.data())) harness_failed("mkdtemp failed");
        path_ = tmpl;
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    const std::filesystem::path& path() const { return path_; }

private:
    std::filesystem::path path_;
};

// Runs fn on one input. A qdit::Error is what bad input must end in and is
// swallowed; any other exception is a bug: it is printed and the run aborts,
// which libFuzzer reports as a crash (with the input that caused it).
template <typename Fn>
void only_qdit_errors(Fn&& fn) {
    try {
        fn();
    } catch (const Error&) {
    } catch (const std::exception& e) {
        std::fprintf(stderr, "uncaught %s: %s\n", typeid(e).name(), e.what());
        std::abort();
    }
}

// A property of the code under test failed: print it and abort (a crash for libFuzzer).
[[noreturn]] inline void property_failed(const std::string& what) {
    std::fprintf(stderr, "property failed: %s\n", what.c_str());
    std::abort();
}

}  // namespace qdit::fuzz
