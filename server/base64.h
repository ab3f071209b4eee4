// Standard base64 (RFC 4648, with padding), for images in JSON responses.
#pragma once
#include <string>

namespace qdit::server {

inline std::string base64_encode(const std::string& in) {
    static const char table[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    out.reserve((in.size() + 2) / 3 * 4);
    size_t i = 0;
    for (; i + 2 < in.size(); i += 3) {
        const unsigned v = unsigned((unsigned char)in[i]) << 16 | unsigned((unsigned char)in[i + 1]) << 8 |
                           unsigned((unsigned char)in[i + 2]);
        out += {table[v >> 18], table[(v >> 12) & 63], table[(v >> 6) & 63], table[v & 63]};
    }
    if (i < in.size()) {
        const bool two = i + 1 < in.size();
        const unsigned v = unsigned((unsigned char)in[i]) << 16 | (two ? unsigned((unsigned char)in[i + 1]) << 8 : 0);
        out += {table[v >> 18], table[(v >> 12) & 63], two ? table[(v >> 6) & 63] : '=', '='};
    }
    return out;
}

}  // namespace qdit::server
