#include "core/memory.h"

#include <unistd.h>

#include <fmt/format.h>

#include "core/error.h"

namespace qdit {

uint64_t physical_memory_bytes() {
    const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
    if (pages <= 0 || page <= 0) return 0;
    return uint64_t(pages) * uint64_t(page);
}

std::string format_bytes(uint64_t b) {
    const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = double(b);
    int u = 0;
    while (v >= 1024.0 && u < 4) {
        v /= 1024.0;
        ++u;
    }
    return u == 0 ? fmt::format("{} B", b) : fmt::format("{:.2f} {}", v, units[u]);
}

void require_memory(uint64_t need, uint64_t budget, const std::string& what,
                    const std::string& budget_name) {
    if (budget == 0 || need <= budget) return;
    raise<ResourceError>("{} need {} ({} bytes), more than {}: {} ({} bytes); use a machine with "
                         "more memory, a smaller model or --quantization int8",
                         what, format_bytes(need), need, budget_name, format_bytes(budget), budget);
}

}  // namespace qdit
