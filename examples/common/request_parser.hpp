// examples/common/request_parser.hpp
// The examples' HTTP/1.1 request parsing, without a socket: bytes in, whole requests (or a
// refusal with its status) out. The server in http.cpp feeds it what it reads; a fuzzer or a
// test can feed it anything, split anywhere.
#pragma once

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace common::http {

struct response {
    int status = 200;
    std::string content_type = "application/json";
    std::string body;
    std::vector<std::pair<std::string, std::string>> headers;

    static response json(int status, const nlohmann::json& body);
    /// `{"error": reason}` with `status`.
    static response error(int status, std::string_view reason);
    static response html(std::string body);
    static response text(int status, std::string body);
    /// A status without a body (204, 304).
    static response empty(int status);
};

struct request {
    std::string method;
    std::string target;  // as sent
    std::string path;    // target before '?'
    std::vector<std::pair<std::string, std::string>> headers;
    std::string body;
    std::optional<std::uint64_t> content_length;
    /// What a head_check wants held while the request lives: until it is answered, refused
    /// (at once, not when its connection goes), or dropped with its connection.
    mutable std::shared_ptr<void> hold;
    /// Set by a head_check to follow the body as it arrives: called with the size of each
    /// piece before it is kept; a response refuses the request there (and the connection
    /// closes after it). For accounting what a body really holds, rather than what its head
    /// announced.
    mutable std::function<std::optional<response>(std::size_t bytes)> on_body_bytes;

    /// The value of header `name` (case-insensitive), or empty.
    std::string_view header(std::string_view name) const;
    /// The value of query parameter `name`, decoded.
    std::optional<std::string> query(std::string_view name) const;
    /// The value of cookie `name`.
    std::optional<std::string> cookie(std::string_view name) const;
};


/// The standard reason phrase of `status`.
std::string_view reason_phrase(int status);

struct parser_limits {
    /// The request head as sent (request line, every field with its ": " or other spacing and
    /// CRLF, the blank line, and any empty lines before the request line); over it: 431.
    /// The trailer section of a chunked body (after the last chunk's line, up to and including
    /// its blank line) has the same limit of its own.
    std::size_t max_head_bytes = 16 * 1024;
    /// Default body limit (decoded); a head_check may change it per request. Over it: 413.
    std::size_t max_body_bytes = std::size_t(1) << 20;
};

/// Called once a request's head is complete, before its body: returns a response to refuse
/// the request at once, and may change `max_body`. A Content-Length above `max_body` (as the
/// check left it) is refused 413 before any of the body is read, whatever the check answered:
/// a refusal that will not change comes before one that may (a 503 would have the client
/// retry a body that can never be accepted), and what the check reserved in `hold` is
/// released at once.
using head_check = std::function<std::optional<response>(const request&, std::size_t& max_body)>;

/// An incremental HTTP/1.1 request parser (llhttp underneath). Feed it bytes as they come;
/// it stops after each whole request so that pipelined requests are answered in turn.
///
///     request_parser p(limits, check);
///     for (auto rest = bytes; ;) {
///         auto [what, used] = p.feed(rest);
///         rest.remove_prefix(used);
///         if (what == request_parser::event::request) { handle(p.take_request()); continue; }
///         if (what == request_parser::event::expect_continue) { send_100(); continue; }
///         if (what == request_parser::event::error) { send(p.rejection()); close(); }
///         break;  // need_more: read more bytes
///     }
///
/// Not thread-safe; one per connection.
class request_parser {
public:
    enum class event {
        /// Every byte given was used: feed more.
        need_more,
        /// The head was accepted and asks for "100 Continue" before its body: send it, then
        /// feed the rest.
        expect_continue,
        /// A whole request: take it with take_request(), then feed the rest.
        request,
        /// The request is refused (malformed 400, head too large 431, body too large 413,
        /// upgrade 501, or the head_check's answer): send rejection() and close the
        /// connection. Every later feed() returns error again.
        error,
    };
    struct result {
        event what;
        std::size_t consumed;  // bytes of the input used; feed the rest again
    };
    /// Where the parser is between feeds.
    enum class phase {
        idle,  // between requests: nothing of the next one fed yet
        head,  // some of a request head
        body,  // the head was accepted; some of the body is missing
    };

    explicit request_parser(parser_limits limits = {}, head_check check = {});
    ~request_parser();
    request_parser(const request_parser&) = delete;
    request_parser& operator=(const request_parser&) = delete;

    result feed(std::string_view bytes);

    /// After event::request: the request (moved out).
    request take_request();
    /// After event::request: whether the connection may carry another request.
    bool keep_alive() const;
    /// After event::error: the answer to send (then close).
    const response& rejection() const;

    phase where() const;
    /// Bytes of the head fed so far (phase::head), or of the last complete head.
    std::size_t head_bytes() const;
    /// Decoded body bytes received so far of the current request.
    std::uint64_t body_bytes() const;
    /// Drops the request in progress and what it holds (body, hold): the caller refused it
    /// (a deadline passed) or its connection is going. Feed nothing more afterwards.
    void drop_request();

private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

} // namespace common::http
