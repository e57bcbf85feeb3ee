// ssepp/http_body.hpp
// The HTTP/1.1 side of an event stream on a raw byte stream: the response head, and
// http_body<NextLayer>, a transport that writes that head once and frames the body
// (close-delimited or chunked), so that the emitter above it never knows HTTP.
// SPDX-License-Identifier: BSL-1.0
#ifndef SSEPP_HTTP_BODY_HPP
#define SSEPP_HTTP_BODY_HPP

#include <ssepp/transport.hpp>

#include <asio/associated_allocator.hpp>
#include <asio/associated_executor.hpp>
#include <asio/buffer.hpp>
#include <asio/handler_continuation_hook.hpp>
#include <asio/post.hpp>
#include <asio/write.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

namespace ssepp {

/// How the body bytes are delimited on the wire.
enum class body_framing {
    /// Bytes as they are: the body ends when the connection closes (HTTP/1.1 without
    /// Content-Length).
    raw,
    /// HTTP/1.1 chunked transfer coding; every write is one chunk.
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

namespace detail {

// Completes a framed write with the body bytes written, not the wire bytes: the caller
// counts what it gave. Keeps the caller's executor, allocator and continuation hint.
template <class Handler>
struct body_write_handler {
    Handler handler;
    std::size_t prefix;  // head and chunk-size bytes before the body
    std::size_t body;

    void operator()(std::error_code ec, std::size_t n)
    {
        handler(ec, std::min(n - std::min(n, prefix), body));
    }

    friend bool asio_handler_is_continuation(body_write_handler* h)
    {
        return asio_handler_cont_helpers::is_continuation(h->handler);
    }
};

} // namespace detail

/// A transport over `NextLayer` (a socket, a TLS stream) whose bytes are an HTTP/1.1 event
/// stream response body: the head, response_head(options), goes out with the first write, and
/// each write is framed as the options say. It satisfies ssepp::transport; reads pass through
/// to the next layer untouched. A stack that writes heads and frames bodies itself passes its
/// own transport to the emitter instead.
///
/// async_write_some() reports body bytes only. With raw framing, writes after the first go
/// straight to the next layer.
template <class NextLayer>
class http_body {
public:
    using next_layer_type = std::remove_reference_t<NextLayer>;
    using executor_type = typename next_layer_type::executor_type;
    /// Bytes read through this layer are the next layer's own (see ssepp::transport).
    static constexpr bool passes_reads_through = true;

    /// @throws std::invalid_argument as response_head() does.
    explicit http_body(NextLayer&& next, const response_options& options = {})
        : next_(std::move(next)), head_(head_of(options)), chunked_(options.framing == body_framing::chunked)
    {
    }

    executor_type get_executor() noexcept { return next_.get_executor(); }
    next_layer_type& next_layer() noexcept { return next_; }
    const next_layer_type& next_layer() const noexcept { return next_; }

    decltype(auto) lowest_layer() noexcept
    {
        if constexpr (requires { next_.lowest_layer(); })
            return next_.lowest_layer();
        else
            return (next_);
    }

    /// Closes the next layer (its lowest layer for a layered stream).
    void close(std::error_code& ec)
    {
        if constexpr (requires { next_.close(ec); })
            next_.close(ec);
        else
            next_.lowest_layer().close(ec);
    }

    /// True once the head went out (or began to).
    bool head_written() const noexcept { return head_sent_; }

    /// Writes `buffers` as body bytes. One write at a time, as for any Asio stream.
    template <class ConstBufferSequence, class WriteHandler>
    auto async_write_some(const ConstBufferSequence& buffers, WriteHandler&& handler)
    {
        if (!chunked_ && head_sent_)
            return next_.async_write_some(buffers, std::forward<WriteHandler>(handler));
        std::vector<asio::const_buffer> wire;
        std::size_t prefix = 0;
        if (!std::exchange(head_sent_, true)) {
            wire.emplace_back(head_->data(), head_->size());
            prefix += head_->size();
        }
        const std::size_t body = asio::buffer_size(buffers);
        if (chunked_ && body > 0) {
            const auto n = fmt::format_to_n(chunk_size_.data(), chunk_size_.size(), "{:x}\r\n", body).size;
            wire.emplace_back(chunk_size_.data(), n);
            prefix += n;
        }
        for (auto it = asio::buffer_sequence_begin(buffers); it != asio::buffer_sequence_end(buffers); ++it)
            if (asio::const_buffer b(*it); b.size())
                wire.push_back(b);
        if (chunked_ && body > 0)
            wire.emplace_back("\r\n", 2);
        // A chunk must go whole: a partial one would leave the peer mid-chunk, so the framed
        // write is a composed one.
        return asio::async_write(
            next_, std::move(wire),
            detail::body_write_handler<std::decay_t<WriteHandler>>{std::forward<WriteHandler>(handler), prefix, body});
    }

    template <class MutableBufferSequence, class ReadHandler>
        requires detail::has_async_read_some<next_layer_type>
    auto async_read_some(const MutableBufferSequence& buffers, ReadHandler&& handler)
    {
        return next_.async_read_some(buffers, std::forward<ReadHandler>(handler));
    }

    /// Ends the body: the head if no write sent it, the last chunk when chunked, then the next
    /// layer's closing handshake (TLS close_notify) or a FIN. `handler(std::error_code)` runs
    /// once, on the next layer's executor.
    template <class ShutdownHandler>
    void async_shutdown(ShutdownHandler handler)
    {
        std::string_view tail = chunked_ ? std::string_view("0\r\n\r\n") : std::string_view();
        if (!head_sent_ || !tail.empty()) {
            std::array<asio::const_buffer, 2> wire{
                std::exchange(head_sent_, true) ? asio::const_buffer() : asio::const_buffer(head_->data(), head_->size()),
                asio::buffer(tail)};
            asio::async_write(next_, wire, [this, h = std::move(handler)](std::error_code ec, std::size_t) mutable {
                if (ec)
                    return h(ec);
                shutdown_next(std::move(h));
            });
            return;
        }
        shutdown_next(std::move(handler));
    }

private:
    template <class Handler>
    void shutdown_next(Handler handler)
    {
        if constexpr (requires { next_.async_shutdown(std::move(handler)); }) {
            next_.async_shutdown(std::move(handler));
        } else {
            std::error_code ec;
            if constexpr (requires { lowest_layer().shutdown(asio::socket_base::shutdown_send, ec); })
                lowest_layer().shutdown(asio::socket_base::shutdown_send, ec);
            asio::post(get_executor(), [h = std::move(handler), ec]() mutable { h(ec); });
        }
    }

    // The default head is shared by every stream that uses it: opening a stream then
    // allocates nothing for it.
    static std::shared_ptr<const std::string> head_of(const response_options& options)
    {
        if (options.cors_origin.empty() && options.headers.empty() && !options.cors_credentials) {
            static const auto raw = std::make_shared<const std::string>(response_head({}));
            static const auto chunked =
                std::make_shared<const std::string>(response_head({.framing = body_framing::chunked}));
            return options.framing == body_framing::chunked ? chunked : raw;
        }
        return std::make_shared<const std::string>(response_head(options));
    }

    NextLayer next_;
    std::shared_ptr<const std::string> head_;
    std::array<char, 18> chunk_size_{};  // "<hex size>\r\n" of the chunk being written
    bool chunked_;
    bool head_sent_ = false;
};

template <class NextLayer>
http_body(NextLayer&&, const response_options& = {}) -> http_body<std::remove_cvref_t<NextLayer>>;

} // namespace ssepp

template <class Handler, class Executor>
struct asio::associated_executor<ssepp::detail::body_write_handler<Handler>, Executor> {
    using type = asio::associated_executor_t<Handler, Executor>;
    static type get(const ssepp::detail::body_write_handler<Handler>& h, const Executor& ex = Executor()) noexcept
    {
        return asio::get_associated_executor(h.handler, ex);
    }
};

template <class Handler, class Allocator>
struct asio::associated_allocator<ssepp::detail::body_write_handler<Handler>, Allocator> {
    using type = asio::associated_allocator_t<Handler, Allocator>;
    static type get(const ssepp::detail::body_write_handler<Handler>& h, const Allocator& a = Allocator()) noexcept
    {
        return asio::get_associated_allocator(h.handler, a);
    }
};

#endif
