// examples/common/request_parser.cpp
// llhttp pauses at four points: the end of the head (so the head's size in bytes as sent is
// known exactly, from where it paused, and the head check runs before any body byte), the
// start of a chunked body's trailer section, the end of a message (pipelined bytes wait their
// turn), and a body refused (over its limit, or by the head check's on_body_bytes). The head
// and the trailers are measured the same way: in bytes fed, llhttp never given more than one
// byte past the limit, so that the verdict (400 for bytes it rejects within the limit, 431
// past it) does not depend on how the bytes were split.
#include "common/request_parser.hpp"

#include <ssepp/request.hpp>

#include <fmt/format.h>
#include <llhttp.h>

#include <algorithm>

namespace common::http {

namespace {

bool iequals(std::string_view a, std::string_view b)
{
    return ssepp::detail::iequals(a, b);
}

} // namespace

std::string_view request::header(std::string_view name) const
{
    for (const auto& [k, v] : headers)
        if (iequals(k, name))
            return v;
    return {};
}

std::optional<std::string> request::query(std::string_view name) const
{
    return ssepp::query_parameter(target, name);
}

std::optional<std::string> request::cookie(std::string_view name) const
{
    auto cookies = header("Cookie");
    while (!cookies.empty()) {
        const auto semi = cookies.find(';');
        auto pair = ssepp::detail::trim_ows(cookies.substr(0, semi));
        const auto eq = pair.find('=');
        if (eq != std::string_view::npos && pair.substr(0, eq) == name)
            return std::string(pair.substr(eq + 1));
        if (semi == std::string_view::npos)
            break;
        cookies.remove_prefix(semi + 1);
    }
    return std::nullopt;
}

response response::json(int status, const nlohmann::json& body)
{
    return {status, "application/json", body.dump(), {}};
}

response response::error(int status, std::string_view reason)
{
    return json(status, {{"error", reason}});
}

response response::html(std::string body)
{
    return {200, "text/html; charset=utf-8", std::move(body), {}};
}

response response::text(int status, std::string body)
{
    return {status, "text/plain; charset=utf-8", std::move(body), {}};
}

response response::empty(int status)
{
    return {status, "", "", {}};
}

std::string_view reason_phrase(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Content Too Large";
    case 415: return "Unsupported Media Type";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    default: return "Unknown";
    }
}

struct request_parser::impl {
    enum class pause { none, head_done, trailers, message_done, refused };

    parser_limits limits;
    head_check check;
    llhttp_settings_t settings{};
    llhttp_t parser{};
    request req;
    std::string field;
    std::string value;
    std::optional<response> refusal;
    phase at = phase::idle;
    pause paused = pause::none;
    std::size_t head_fed = 0;      // bytes fed since the head's first byte
    bool in_trailers = false;      // after a chunked body's last chunk
    std::size_t trailer_fed = 0;   // bytes fed since the trailer section's first byte
    std::uint64_t body_fed = 0;
    std::size_t max_body = 0;
    bool keep_alive = false;

    impl(parser_limits l, head_check c) : limits(l), check(std::move(c))
    {
        llhttp_settings_init(&settings);
        settings.on_message_begin = [](llhttp_t* p) { return self(p)->on_message_begin(); };
        settings.on_url = [](llhttp_t* p, const char* d, size_t n) { return self(p)->append(self(p)->req.target, d, n); };
        settings.on_header_field = [](llhttp_t* p, const char* d, size_t n) { return self(p)->append(self(p)->field, d, n); };
        settings.on_header_value = [](llhttp_t* p, const char* d, size_t n) { return self(p)->append(self(p)->value, d, n); };
        settings.on_header_value_complete = [](llhttp_t* p) { return self(p)->on_value_complete(); };
        settings.on_headers_complete = [](llhttp_t* p) { return self(p)->on_headers_complete(); };
        settings.on_body = [](llhttp_t* p, const char* d, size_t n) { return self(p)->on_body(d, n); };
        // After the last chunk's line (size 0) come the trailers: from there they are measured.
        settings.on_chunk_header = [](llhttp_t* p) {
            if (p->content_length != 0)
                return 0;
            self(p)->paused = pause::trailers;
            return int(HPE_PAUSED);
        };
        settings.on_message_complete = [](llhttp_t* p) {
            self(p)->paused = pause::message_done;
            return int(HPE_PAUSED);
        };
        llhttp_init(&parser, HTTP_REQUEST, &settings);
        parser.data = this;
    }

    static impl* self(llhttp_t* p) { return static_cast<impl*>(p->data); }

    int on_message_begin()
    {
        req = request{};
        field.clear();
        value.clear();
        in_trailers = false;
        trailer_fed = 0;
        body_fed = 0;
        max_body = limits.max_body_bytes;
        return 0;
    }

    // Trailers too: they are bounded by what feed() lets llhttp see of them.
    static int append(std::string& to, const char* d, std::size_t n)
    {
        to.append(d, n);
        return 0;
    }

    int on_value_complete()
    {
        req.headers.emplace_back(std::move(field), std::move(value));
        field.clear();
        value.clear();
        return 0;
    }

    int on_headers_complete()
    {
        paused = pause::head_done;
        return HPE_PAUSED;
    }

    int on_body(const char* d, std::size_t n)
    {
        if (req.body.size() + n > max_body) {
            refusal = response::error(413, fmt::format("body is over the limit of {} bytes", max_body));
            paused = pause::refused;
            return HPE_PAUSED;
        }
        if (req.on_body_bytes) {
            if (auto refused = req.on_body_bytes(n)) {
                refusal = std::move(*refused);
                paused = pause::refused;
                return HPE_PAUSED;
            }
        }
        req.body.append(d, n);
        body_fed += n;
        return 0;
    }

    // The request is over: what it holds (a reservation, say) goes now, not with the
    // connection.
    result fail(response r, std::size_t consumed)
    {
        refusal = std::move(r);
        req = request{};
        at = phase::idle;
        return {event::error, consumed};
    }

    result trailers_too_large(std::size_t consumed)
    {
        return fail(response::error(431, fmt::format("trailer fields over the limit of {} bytes", limits.max_head_bytes)),
                    consumed);
    }

    // The head is complete: its checks, in the order a client would expect them.
    std::optional<event> head_done(std::size_t consumed)
    {
        req.method = llhttp_method_name(static_cast<llhttp_method_t>(parser.method));
        req.path = req.target.substr(0, req.target.find('?'));
        if (parser.flags & F_CONTENT_LENGTH)
            req.content_length = parser.content_length;
        if (head_fed > limits.max_head_bytes)
            return fail(response::error(431, fmt::format("request head of {} bytes is over the limit of {} bytes",
                                                         head_fed, limits.max_head_bytes)),
                        consumed)
                .what;
        if (parser.upgrade)
            return fail(response::error(501, "protocol upgrade not supported"), consumed).what;
        std::optional<response> refused;
        if (check)
            refused = check(req, max_body);
        // Too large is final, whatever else the check said (see head_check).
        if (req.content_length && *req.content_length > max_body)
            return fail(response::error(413, fmt::format("body of {} bytes is over the limit of {} bytes",
                                                         *req.content_length, max_body)),
                        consumed)
                .what;
        if (refused)
            return fail(std::move(*refused), consumed).what;
        at = phase::body;
        // Room for a small body at once; a large one grows as it arrives, so that a head
        // announcing megabytes does not get them before it sends them.
        if (req.content_length)
            req.body.reserve(static_cast<std::size_t>(std::min<std::uint64_t>(*req.content_length, 64 * 1024)));
        if (iequals(req.header("Expect"), "100-continue") && req.content_length.value_or(1) > 0)
            return event::expect_continue;
        return std::nullopt;
    }

    result feed(std::string_view bytes)
    {
        if (refusal)
            return {event::error, 0};
        std::size_t used = 0;
        // Runs at least once: after the head, a request without a body completes with no more
        // bytes.
        bool first = true;
        while (first || used < bytes.size()) {
            first = false;
            if (paused != pause::none) {
                llhttp_resume(&parser);
                paused = pause::none;
            }
            if (at == phase::idle) {
                if (used == bytes.size())
                    break;
                at = phase::head;
                head_fed = 0;
            }
            auto slice = bytes.substr(used);
            // Never more than one byte past the head's (or the trailers') limit, whatever the
            // caller feeds at once: what the callbacks keep stays bounded, and llhttp sees the
            // same bytes before the verdict however they were split.
            if (at == phase::head)
                slice = slice.substr(0, limits.max_head_bytes - std::min(head_fed, limits.max_head_bytes) + 1);
            else if (in_trailers)
                slice = slice.substr(0, limits.max_head_bytes - std::min(trailer_fed, limits.max_head_bytes) + 1);
            static constexpr char none = 0;
            const char* start = slice.empty() ? &none : slice.data();
            const auto err = llhttp_execute(&parser, start, slice.size());
            if (err == HPE_OK) {
                used += slice.size();
                if (at == phase::head) {
                    head_fed += slice.size();
                    if (head_fed > limits.max_head_bytes)
                        return fail(response::error(431, fmt::format("request head is over the limit of {} bytes",
                                                                     limits.max_head_bytes)),
                                    used);
                } else if (in_trailers) {
                    trailer_fed += slice.size();
                    if (trailer_fed > limits.max_head_bytes)
                        return trailers_too_large(used);
                }
                continue;
            }
            if (err == HPE_PAUSED) {
                const auto n = static_cast<std::size_t>(llhttp_get_error_pos(&parser) - start);
                used += n;
                switch (paused) {
                case pause::head_done:
                    head_fed += n;
                    if (auto e = head_done(used)) {
                        if (*e == event::expect_continue) {
                            // Resumed by the next feed.
                            return {event::expect_continue, used};
                        }
                        return {*e, used};
                    }
                    first = true; // a request without a body completes now
                    continue;
                case pause::trailers:
                    in_trailers = true;
                    trailer_fed = 0;
                    continue;
                case pause::message_done:
                    if (in_trailers) {
                        trailer_fed += n;
                        if (trailer_fed > limits.max_head_bytes)
                            return trailers_too_large(used);
                    }
                    in_trailers = false;
                    keep_alive = llhttp_should_keep_alive(&parser) != 0;
                    at = phase::idle;
                    return {event::request, used};
                case pause::refused:
                    return fail(std::move(*refusal), used);
                case pause::none:
                    break;
                }
            }
            if (err == HPE_PAUSED_UPGRADE)
                return fail(response::error(501, "protocol upgrade not supported"), used);
            return fail(response::error(400, fmt::format("malformed request: {}", llhttp_get_error_reason(&parser))),
                        used);
        }
        return {event::need_more, used};
    }
};

request_parser::request_parser(parser_limits limits, head_check check)
    : impl_(std::make_unique<impl>(limits, std::move(check)))
{
}

request_parser::~request_parser() = default;

request_parser::result request_parser::feed(std::string_view bytes)
{
    return impl_->feed(bytes);
}

request request_parser::take_request()
{
    return std::move(impl_->req);
}

bool request_parser::keep_alive() const
{
    return impl_->keep_alive;
}

const response& request_parser::rejection() const
{
    static const response none = response::error(500, "no rejection");
    return impl_->refusal ? *impl_->refusal : none;
}

request_parser::phase request_parser::where() const
{
    return impl_->at;
}

std::size_t request_parser::head_bytes() const
{
    return impl_->head_fed;
}

std::uint64_t request_parser::body_bytes() const
{
    return impl_->body_fed;
}

void request_parser::drop_request()
{
    impl_->req = request{};
}

} // namespace common::http
