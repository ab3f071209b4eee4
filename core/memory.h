// How much memory a model needs against how much a device offers, checked
// before any weight is read.
#pragma once
#include <cstdint>
#include <string>

namespace qdit {

// Physical memory of this machine in bytes (0 when the system does not say).
uint64_t physical_memory_bytes();

// ResourceError when `need` bytes exceed `budget` bytes; the message names
// what needs them (`what`, e.g. "the models' weights (...)"), the budget
// (`budget_name`, e.g. "the machine's physical memory") and both sizes.
// A budget of 0 means unknown and passes.
void require_memory(uint64_t need, uint64_t budget, const std::string& what,
                    const std::string& budget_name);

// "12.34 GiB" (B, KiB, MiB, GiB or TiB).
std::string format_bytes(uint64_t bytes);

}  // namespace qdit
