// ssepp/detail/lines.hpp
// Line splitting shared by the formatter and the parser: the protocol's three line ends
// (CRLF, CR, LF), found with memchr so long single-line payloads stay fast.
// SPDX-License-Identifier: BSL-1.0
#ifndef SSEPP_DETAIL_LINES_HPP
#define SSEPP_DETAIL_LINES_HPP

#include <cstring>
#include <string_view>

namespace ssepp::detail {

/// The first CR or LF in [first, last), or last.
inline const char* find_line_end(const char* first, const char* last) noexcept
{
    const auto n = static_cast<std::size_t>(last - first);
    const auto* lf = static_cast<const char*>(std::memchr(first, '\n', n));
    const char* bound = lf ? lf : last;
    const auto* cr = static_cast<const char*>(
        std::memchr(first, '\r', static_cast<std::size_t>(bound - first)));
    return cr ? cr : bound;
}

/// Calls f(line) for each line of `value`, split on CRLF, CR and LF. An empty value, or a
/// value ending in a line break, yields a last empty line: "a\n" is the lines "a" and "".
template <class F>
void for_each_line(std::string_view value, F&& f)
{
    const char* p = value.data();
    const char* const end = p + value.size();
    for (;;) {
        const char* eol = find_line_end(p, end);
        f(std::string_view(p, static_cast<std::size_t>(eol - p)));
        if (eol == end)
            return;
        p = eol + 1;
        if (*eol == '\r' && p != end && *p == '\n')
            ++p;
    }
}

} // namespace ssepp::detail

#endif
