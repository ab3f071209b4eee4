// Fuzz target: a .safetensors file of arbitrary bytes (header length, JSON
// header, dtypes, shapes, data_offsets). Opening it must either succeed with
// every tensor a view of exactly the bytes its data_offsets name, or throw a
// qdit::Error.
#include <cstring>

#include <fmt/format.h>

#include "fuzz_util.h"
#include "io/safetensors.h"

using namespace qdit;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static fuzz::MemFile file;
    file.write(data, size);
    fuzz::only_qdit_errors([&] {
        const Checkpoint ck(file.path());
        // The constructor accepted the header length, so the data region starts inside the input.
        uint64_t header = 0;
        std::memcpy(&header, data, 8);
        const uint8_t* region = data + 8 + header;
        for (const std::string& name : ck.keys()) {
            const TensorInfo& info = ck.info(name);
            const Tensor t = ck.get(name);
            // Reading the input at the same offsets lets AddressSanitizer catch an out-of-range
            // span.
            if (t.nbytes() != info.end - info.begin ||
                std::memcmp(t.raw(), region + info.begin, t.nbytes()) != 0)
                fuzz::property_failed(
                    fmt::format("tensor '{}' is not the bytes [{}, {}) of the data region", name,
                                info.begin, info.end));
            if (is_float(info.dtype)) (void)ck.get_as(name, DType::F32);
        }
    });
    return 0;
}
