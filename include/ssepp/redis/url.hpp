// ssepp/redis/url.hpp
// Where a Redis server is: ssepp::redis::endpoint, and parse_url() for `redis://host:port[/db]`
// (a command line's --redis flag), with an error that says what is wrong with the input.
// SPDX-License-Identifier: BSL-1.0
#ifndef SSEPP_REDIS_URL_HPP
#define SSEPP_REDIS_URL_HPP

#include <ssepp/redis/error.hpp>

#include <charconv>
#include <cstdint>
#include <string>
#include <string_view>
#include <system_error>

namespace ssepp::redis {

/// A Redis server's address and the database to SELECT on each connection (0: none).
struct endpoint {
    std::string host = "127.0.0.1";  ///< an IP address or a host name (IPv6 without brackets)
    std::uint16_t port = 6379;
    int db = 0;

    friend bool operator==(const endpoint&, const endpoint&) = default;
};

namespace detail {
[[noreturn]] inline void bad_url(std::string_view url, std::string_view why)
{
    throw system_error(make_error_code(errc::invalid_url),
                       "Redis URL '" + std::string(url) + "': " + std::string(why));
}

template <class Int>
bool parse_decimal(std::string_view s, Int& out)
{
    if (s.empty() || s.size() > 10)
        return false;
    for (char c : s)
        if (c < '0' || c > '9')
            return false;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
    return ec == std::errc{} && end == s.data() + s.size();
}
} // namespace detail

/// Reads `redis://host[:port][/db]`: host a name, an IPv4 address or a bracketed IPv6 address
/// (`redis://[::1]:6379`); port 1-65535 (default 6379); db a decimal database index (default
/// 0). Throws system_error with errc::invalid_url and a message naming the URL and what is
/// wrong with it. Not supported, and refused as such: credentials, `rediss://` (TLS), unix
/// sockets, query strings.
inline endpoint parse_url(std::string_view url)
{
    constexpr std::string_view scheme = "redis://";
    if (url.starts_with("rediss://"))
        detail::bad_url(url, "TLS (rediss://) is not supported");
    if (url.starts_with("unix:") || url.starts_with("redis+unix:"))
        detail::bad_url(url, "unix sockets are not supported");
    if (!url.starts_with(scheme))
        detail::bad_url(url, "expected redis://host[:port][/db]");
    std::string_view rest = url.substr(scheme.size());
    if (rest.find_first_of("?#") != std::string_view::npos)
        detail::bad_url(url, "query strings and fragments are not supported");
    const auto slash = rest.find('/');
    std::string_view authority = rest.substr(0, slash);
    std::string_view path = slash == std::string_view::npos ? std::string_view{} : rest.substr(slash + 1);
    if (authority.find('@') != std::string_view::npos)
        detail::bad_url(url, "credentials (user:password@) are not supported");

    endpoint ep;
    std::string_view port;
    if (authority.starts_with('[')) {
        const auto close = authority.find(']');
        if (close == std::string_view::npos)
            detail::bad_url(url, "unterminated '[' in the host");
        ep.host = std::string(authority.substr(1, close - 1));
        std::string_view after = authority.substr(close + 1);
        if (!after.empty() && !after.starts_with(':'))
            detail::bad_url(url, "expected ':port' after ']'");
        if (!after.empty())
            port = after.substr(1);
        else
            port = {};
        if (!after.empty() && port.empty())
            detail::bad_url(url, "empty port after ':'");
    } else {
        const auto colon = authority.find(':');
        ep.host = std::string(authority.substr(0, colon));
        if (colon != std::string_view::npos) {
            port = authority.substr(colon + 1);
            if (port.empty())
                detail::bad_url(url, "empty port after ':'");
            if (port.find(':') != std::string_view::npos)
                detail::bad_url(url, "an IPv6 host needs brackets: redis://[::1]:6379");
        }
    }
    if (ep.host.empty())
        detail::bad_url(url, "no host");
    if (!port.empty()) {
        std::uint32_t p = 0;
        if (!detail::parse_decimal(port, p) || p == 0 || p > 65535)
            detail::bad_url(url, "port must be a number from 1 to 65535");
        ep.port = static_cast<std::uint16_t>(p);
    }
    if (!path.empty()) {
        std::uint32_t db = 0;
        if (!detail::parse_decimal(path, db) || db > 0x7fffffff)
            detail::bad_url(url, "the path must be a database number, as in redis://host:6379/2");
        ep.db = static_cast<int>(db);
    }
    return ep;
}

} // namespace ssepp::redis

#endif
