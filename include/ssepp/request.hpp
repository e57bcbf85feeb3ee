// ssepp/request.hpp
// What an event-stream request says about resuming: the Last-Event-ID header, or the
// `lastEventId` query parameter that EventSource polyfills send instead.
// SPDX-License-Identifier: BSL-1.0
#ifndef SSEPP_REQUEST_HPP
#define SSEPP_REQUEST_HPP

#include <optional>
#include <string>
#include <string_view>

namespace ssepp {

namespace detail {

inline bool iequals(std::string_view a, std::string_view b) noexcept
{
    if (a.size() != b.size())
        return false;
    for (std::size_t i = 0; i < a.size(); ++i) {
        auto x = a[i], y = b[i];
        if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
        if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
        if (x != y)
            return false;
    }
    return true;
}

inline std::string_view trim_ows(std::string_view s) noexcept
{
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

inline int hex_value(char c) noexcept
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/// application/x-www-form-urlencoded decoding: %XX and '+'; a malformed escape stays as is.
inline std::string percent_decode(std::string_view s)
{
    std::string out;
    out.reserve(s.size());
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '+') {
            out += ' ';
        } else if (s[i] == '%' && i + 2 < s.size() && hex_value(s[i + 1]) >= 0
                   && hex_value(s[i + 2]) >= 0) {
            out += static_cast<char>(hex_value(s[i + 1]) * 16 + hex_value(s[i + 2]));
            i += 2;
        } else {
            out += s[i];
        }
    }
    return out;
}

} // namespace detail

/// The value of query parameter `name` in a request target (`/path?a=1&b=2`), decoded.
[[nodiscard]] inline std::optional<std::string> query_parameter(std::string_view target,
                                                                std::string_view name)
{
    const auto q = target.find('?');
    if (q == std::string_view::npos)
        return std::nullopt;
    auto query = target.substr(q + 1);
    if (const auto hash = query.find('#'); hash != std::string_view::npos)
        query = query.substr(0, hash);
    while (!query.empty()) {
        const auto amp = query.find('&');
        const auto pair = query.substr(0, amp);
        const auto eq = pair.find('=');
        if (detail::percent_decode(pair.substr(0, eq)) == name)
            return eq == std::string_view::npos ? std::string() : detail::percent_decode(pair.substr(eq + 1));
        if (amp == std::string_view::npos)
            break;
        query.remove_prefix(amp + 1);
    }
    return std::nullopt;
}

/// The id a reconnecting client resumes from, for a stack that has parsed the request:
/// `header_value` is the Last-Event-ID field's value (empty when absent), `target` the request
/// target, whose `lastEventId` (or `last_event_id`) query parameter is used when the header is
/// absent. Empty optional when the request names no id.
[[nodiscard]] inline std::optional<std::string> last_event_id(std::string_view header_value,
                                                              std::string_view target)
{
    // EventSource sends no header while its last event id is empty, so empty means absent.
    if (const auto v = detail::trim_ows(header_value); !v.empty())
        return std::string(v);
    for (const auto name : {std::string_view("lastEventId"), std::string_view("last_event_id")})
        if (auto q = query_parameter(target, name); q && !q->empty())
            return q;
    return std::nullopt;
}

/// The same, read off a raw request head (request line and header fields, as read from a
/// socket up to the blank line). Only the request line and the Last-Event-ID field are looked at.
[[nodiscard]] inline std::optional<std::string> last_event_id(std::string_view request_head)
{
    std::string_view target;
    std::string_view header;
    bool first = true;
    while (!request_head.empty()) {
        const auto nl = request_head.find('\n');
        auto line = request_head.substr(0, nl);
        request_head.remove_prefix(nl == std::string_view::npos ? request_head.size() : nl + 1);
        if (!line.empty() && line.back() == '\r')
            line.remove_suffix(1);
        if (first) {
            first = false;
            const auto sp1 = line.find(' ');
            const auto sp2 = line.find(' ', sp1 == std::string_view::npos ? sp1 : sp1 + 1);
            if (sp1 != std::string_view::npos)
                target = line.substr(sp1 + 1, sp2 == std::string_view::npos ? sp2 : sp2 - sp1 - 1);
            continue;
        }
        if (line.empty())
            break;
        const auto colon = line.find(':');
        if (colon != std::string_view::npos && detail::iequals(line.substr(0, colon), "last-event-id"))
            header = line.substr(colon + 1);
    }
    return last_event_id(header, target);
}

} // namespace ssepp

#endif
