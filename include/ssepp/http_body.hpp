// ssepp/http_body.hpp
// The HTTP/1.1 side of an event stream on a raw byte stream: the response head, and
// http_body<NextLayer>, a transport that writes that head once and delimits the body
// (close-delimited or chunked), so that the emitter above it never knows HTTP.
// SPDX-License-Identifier: BSL-1.0
#ifndef SSEPP_HTTP_BODY_HPP
#define SSEPP_HTTP_BODY_HPP

#include <ssepp/transport.hpp>

#include <ssepp/detail/asio.hpp>

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

// The buffers of one write on the wire: what is left of the head and of the chunk framing
// around up to 64 body buffers. Copied into the write operation, as Asio copies any sequence.
struct wire_buffers {
    using value_type = asio::const_buffer;
    using const_iterator = const asio::const_buffer*;
    std::array<asio::const_buffer, 68> b;
    std::size_t n = 0;

    void push(asio::const_buffer x)
    {
        if (x.size() && n < b.size())
            b[n++] = x;
    }
    const_iterator begin() const noexcept { return b.data(); }
    const_iterator end() const noexcept { return b.data() + n; }
};

// Completes a write with the body bytes it wrote, not the wire bytes: the caller
// counts what it gave. Keeps the caller's executor, allocator and continuation hint.
template <class Body, class Handler>
struct body_write_handler {
    static constexpr std::size_t first = std::size_t(-1);
    Body* body;
    Handler handler;
    std::size_t wire_head;        // head bytes in the write
    std::size_t wire_body;        // body bytes in the write
    std::size_t written = first;  // once the body bytes are counted: the end of their chunk is going out

    void operator()(error_code ec, std::size_t n)
    {
        if (written != first) {  // the chunk's closing CRLF, sent on its own
            body->crlf_left_ = static_cast<std::uint8_t>(body->crlf_left_ - std::min<std::size_t>(n, body->crlf_left_));
            return handler(ec, written);
        }
        written = body->consume(n, wire_head, wire_body);
        // A chunk whose body is out is closed before the write completes: the stream may stay
        // idle for long after it, and the client must not wait for the CRLF meanwhile.
        if (!ec && body->chunk_left_ == 0 && body->crlf_left_ > 0) {
            auto rest = Body::bytes(Body::crlf) + (2 - body->crlf_left_);
            return asio::async_write(body->next_, rest, std::move(*this));
        }
        handler(ec, written);
    }

    friend bool asio_handler_is_continuation(body_write_handler* h)
    {
        using asio::asio_handler_is_continuation;  // the default, when the handler has none
        return asio_handler_is_continuation(std::addressof(h->handler));
    }
};

} // namespace detail

/// A transport over `NextLayer` (a socket, a TLS stream) whose bytes are an HTTP/1.1 event
/// stream response body: the head, response_head(options), goes out with the first write, and
/// each write is delimited as options.framing says. It satisfies ssepp::transport; reads pass
/// through to the next layer untouched. A stack that writes heads and delimits bodies itself
/// passes its own transport to the emitter instead.
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
    void close(error_code& ec)
    {
        if constexpr (requires { next_.close(ec); })
            next_.close(ec);
        else
            next_.lowest_layer().close(ec);
    }

    /// True once the head went out (or began to).
    bool head_written() const noexcept { return head_pos_ == head_->size(); }

    /// Writes some of `buffers` as body bytes, as any write_some: the handler gets how many
    /// body bytes went out (0 when only framing did), and the caller offers the rest again.
    /// A chunk spans the bytes offered when it opens; later writes continue it. One write at
    /// a time, as for any Asio stream.
    template <class ConstBufferSequence, class WriteHandler>
    auto async_write_some(const ConstBufferSequence& buffers, WriteHandler&& handler)
    {
        if (!chunked_ && head_pos_ == head_->size())
            return next_.async_write_some(buffers, std::forward<WriteHandler>(handler));
        detail::wire_buffers wire;
        wire.push(asio::buffer(*head_) + head_pos_);
        const std::size_t wire_head = head_->size() - head_pos_;
        // A chunk is at most 4 GiB (its size line fits chunk_size_); the rest goes in the next.
        std::size_t offered = std::min<std::size_t>(asio::buffer_size(buffers), UINT32_MAX);
        if (chunked_) {
            wire.push(bytes(crlf) + (2 - crlf_left_));  // the end of the last chunk
            if (size_left_ == 0 && chunk_left_ == 0 && offered > 0) {
                size_len_ = static_cast<std::uint8_t>(
                    fmt::format_to_n(chunk_size_.data(), chunk_size_.size(), "{:x}\r\n", offered).size);
                size_left_ = size_len_;
                chunk_left_ = static_cast<std::uint32_t>(offered);
            }
            wire.push(asio::buffer(chunk_size_.data(), size_len_) + (size_len_ - size_left_));
            offered = std::min<std::size_t>(offered, chunk_left_);
        }
        std::size_t wire_body = 0;
        for (auto it = asio::buffer_sequence_begin(buffers); it != asio::buffer_sequence_end(buffers); ++it) {
            const auto b = asio::buffer(asio::const_buffer(*it), offered - wire_body);
            if (wire.n + 1 == wire.b.size())
                break;  // room for the chunk's end
            wire.push(b);
            wire_body += b.size();
        }
        if (chunked_ && chunk_left_ > 0 && wire_body == chunk_left_)
            wire.push(bytes(crlf));
        return next_.async_write_some(wire, detail::body_write_handler<http_body, std::decay_t<WriteHandler>>{
                                                this, std::forward<WriteHandler>(handler), wire_head, wire_body});
    }

    template <class MutableBufferSequence, class ReadHandler>
        requires detail::has_async_read_some<next_layer_type>
    auto async_read_some(const MutableBufferSequence& buffers, ReadHandler&& handler)
    {
        return next_.async_read_some(buffers, std::forward<ReadHandler>(handler));
    }

    /// Ends the body: what is left of the head and of the last chunk, the 0-chunk when
    /// chunked, then the next layer's closing handshake (TLS close_notify) or a FIN.
    /// `handler(error_code)` runs once, on the next layer's executor.
    template <class ShutdownHandler>
    void async_shutdown(ShutdownHandler handler)
    {
        std::array<asio::const_buffer, 3> wire{asio::buffer(*head_) + head_pos_, asio::const_buffer(),
                                               asio::const_buffer()};
        if (chunked_) {
            wire[1] = bytes(crlf) + (2 - crlf_left_);
            wire[2] = bytes(last_chunk);
        }
        head_pos_ = static_cast<std::uint32_t>(head_->size());
        crlf_left_ = 0;
        if (asio::buffer_size(wire) == 0)
            return shutdown_next(std::move(handler));
        asio::async_write(next_, wire, [this, h = std::move(handler)](error_code ec, std::size_t) mutable {
            if (ec)
                return h(ec);
            shutdown_next(std::move(h));
        });
    }

private:
    template <class Handler>
    void shutdown_next(Handler handler)
    {
        if constexpr (requires { next_.async_shutdown(std::move(handler)); }) {
            next_.async_shutdown(std::move(handler));
        } else {
            error_code ec;
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

    template <class, class>
    friend struct detail::body_write_handler;

    // Takes `n` wire bytes of the write that just ended off the framing state, in the order
    // they went out; returns how many of them were body bytes.
    std::size_t consume(std::size_t n, std::size_t wire_head, std::size_t wire_body)
    {
        const auto take = [&n](std::size_t want) {
            const auto k = std::min(n, want);
            n -= k;
            return k;
        };
        head_pos_ += static_cast<std::uint32_t>(take(wire_head));
        if (!chunked_)
            return take(wire_body);
        crlf_left_ = static_cast<std::uint8_t>(crlf_left_ - take(crlf_left_));
        size_left_ = static_cast<std::uint8_t>(size_left_ - take(size_left_));
        const auto body = take(wire_body);
        if (body > 0 && (chunk_left_ -= static_cast<std::uint32_t>(body)) == 0)
            crlf_left_ = 2;  // the chunk's body is out: its end follows, now or with the next write
        crlf_left_ = static_cast<std::uint8_t>(crlf_left_ - (chunk_left_ == 0 ? take(crlf_left_) : 0));
        return body;
    }

    // Not asio::buffer(string_view): Asio without std::string_view support
    // (ASIO_DISABLE_STD_STRING_VIEW, which restinio's CMake target defines) has no such overload.
    static asio::const_buffer bytes(std::string_view s) noexcept { return {s.data(), s.size()}; }
    static constexpr std::string_view crlf = "\r\n";
    static constexpr std::string_view last_chunk = "0\r\n\r\n";

    NextLayer next_;
    std::shared_ptr<const std::string> head_;
    // Sizes are 32-bit: a connection's state is kept small, as there are many.
    std::uint32_t head_pos_ = 0;    // head bytes written
    std::uint32_t chunk_left_ = 0;  // body bytes of the open chunk not yet written
    std::array<char, 10> chunk_size_{};  // "<hex size>\r\n" of the open chunk
    std::uint8_t size_len_ = 0;   // its length
    std::uint8_t size_left_ = 0;  // its bytes not yet written
    std::uint8_t crlf_left_ = 0;  // bytes of the open chunk's closing CRLF not yet written
    bool chunked_;
};

template <class NextLayer>
http_body(NextLayer&&, const response_options& = {}) -> http_body<std::remove_cvref_t<NextLayer>>;

} // namespace ssepp

template <class Body, class Handler, class Executor>
struct ssepp::asio::associated_executor<ssepp::detail::body_write_handler<Body, Handler>, Executor> {
    using type = asio::associated_executor_t<Handler, Executor>;
    static type get(const ssepp::detail::body_write_handler<Body, Handler>& h, const Executor& ex = Executor()) noexcept
    {
        return asio::get_associated_executor(h.handler, ex);
    }
};

template <class Body, class Handler, class Allocator>
struct ssepp::asio::associated_allocator<ssepp::detail::body_write_handler<Body, Handler>, Allocator> {
    using type = asio::associated_allocator_t<Handler, Allocator>;
    static type get(const ssepp::detail::body_write_handler<Body, Handler>& h, const Allocator& a = Allocator()) noexcept
    {
        return asio::get_associated_allocator(h.handler, a);
    }
};

#endif
