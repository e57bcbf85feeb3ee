// ssepp/response.hpp
// The HTTP/1.1 response head of an event stream, for transports that are raw byte streams,
// and the body framings the emitter can write (close-delimited or chunked).
// SPDX-License-Identifier: BSL-1.0
#ifndef SSEPP_RESPONSE_HPP
#define SSEPP_RESPONSE_HPP

#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ssepp {

/// How the body bytes are delimited on the wire.
enum class body_framing {
    /// Bytes as they are: the body ends when the connection closes (HTTP/1.1 without
    /// Content-Length), or the HTTP stack under the transport frames the body itself.
    raw,
    /// HTTP/1.1 chunked transfer coding; every coalesced write is one chunk.
    chunked,
};

/// What the response head says.
struct response_options {
    body_framing framing = body_framing::raw;
    /// `Access-Control-Allow-Origin` value; empty writes no CORS headers.
    std::string cors_origin{};
    /// Adds `Access-Control-Allow-Credentials: true` (with a non-`*` origin, for cookies).
    bool cors_credentials = false;
    /// More header fields, written as given after the standard ones.
    std::vector<std::pair<std::string, std::string>> headers{};
};

/// `HTTP/1.1 200 OK` with `Content-Type: text/event-stream`, `Cache-Control: no-cache,
/// no-transform` (no-transform: a proxy must not compress the stream, which would hold events
/// back until a compression block fills), `X-Accel-Buffering: no` (so nginx does not buffer
/// the stream) and what `options` adds.
/// No `Connection` header: it is hop-by-hop and forbidden in HTTP/2, and proxies that translate
/// to HTTP/2 break streams that carry it.
/// @throws std::invalid_argument when a header name or value would break the head (CR, LF,
/// NUL, or a name with ':' or space): that is a programming error, not input to report.
[[nodiscard]] inline std::string response_head(const response_options& options = {})
{
    const auto check = [](std::string_view s, bool name) {
        const auto bad = name ? std::string_view(" \t:\r\n\0", 6) : std::string_view("\r\n\0", 3);
        if (s.find_first_of(bad) != std::string_view::npos || (name && s.empty()))
            throw std::invalid_argument("ssepp::response_head: invalid header field");
    };
    std::string head = "HTTP/1.1 200 OK\r\n"
                       "Content-Type: text/event-stream\r\n"
                       "Cache-Control: no-cache, no-transform\r\n"
                       "X-Accel-Buffering: no\r\n";
    if (options.framing == body_framing::chunked)
        head += "Transfer-Encoding: chunked\r\n";
    if (!options.cors_origin.empty()) {
        check(options.cors_origin, false);
        head += "Access-Control-Allow-Origin: " + options.cors_origin + "\r\n";
        if (options.cors_credentials)
            head += "Access-Control-Allow-Credentials: true\r\n";
        if (options.cors_origin != "*")
            head += "Vary: Origin\r\n";
    }
    for (const auto& [name, value] : options.headers) {
        check(name, true);
        check(value, false);
        head += name + ": " + value + "\r\n";
    }
    head += "\r\n";
    return head;
}

} // namespace ssepp

#endif
