// ssepp/transport.hpp
// The transport concept: what an emitter needs of a connection. An Asio AsyncWriteStream that
// can be closed; asio::ip::tcp::socket, asio::ssl::stream<tcp::socket> and
// asio::local::stream_protocol::socket satisfy it as they are.
// SPDX-License-Identifier: BSL-1.0
#ifndef SSEPP_TRANSPORT_HPP
#define SSEPP_TRANSPORT_HPP

#include <ssepp/detail/asio.hpp>

#include <cstddef>
#include <system_error>
#include <type_traits>

namespace ssepp {

namespace detail {
struct write_handler_archetype {
    void operator()(error_code, std::size_t) const {}
};
} // namespace detail

/// An Asio AsyncWriteStream that can be closed: either `t.close(ec)` or, for layered streams
/// such as `asio::ssl::stream`, `t.lowest_layer().close(ec)`. Closing completes a write in
/// flight (Asio's sockets do, with operation_aborted): the emitter's close handlers wait for
/// it, to know what it wrote.
///
/// Optional, detected when present:
/// - `t.lowest_layer()` (or `t` itself) is an Asio socket: the emitter waits for readability on
///   it to notice a vanished peer promptly, without holding a read buffer.
/// - otherwise `t.async_read_some(buffer, handler)`: the emitter keeps a small read outstanding.
/// Without either, a vanished peer is noticed at the next write (heartbeats bound the delay).
/// - `t.async_shutdown(handler)` (TLS, http_body): a stream that completes ends with it
///   (close_notify, the last chunk), bounded in time.
template <class T>
concept transport = requires(T& t, asio::const_buffer b) {
    typename T::executor_type;
    { t.get_executor() } -> std::convertible_to<typename T::executor_type>;
    t.async_write_some(b, detail::write_handler_archetype{});
} && (requires(T& t, error_code& ec) { t.close(ec); }
      || requires(T& t, error_code& ec) { t.lowest_layer().close(ec); });

namespace detail {

template <class T>
concept has_lowest_socket = requires(T& t) {
    t.lowest_layer().async_wait(asio::socket_base::wait_read, [](error_code) {});
    t.lowest_layer().non_blocking(true);
};

/// A layer that reads nothing itself (ssepp::http_body): what is under it decides.
template <class T>
concept passes_reads_through = requires {
    typename T::next_layer_type;
    requires T::passes_reads_through;
};

/// True when the bytes on the transport's lowest layer are the client's own, as on a plain
/// socket (or a plain socket under layers that only write), so draining them with a
/// non-blocking read is harmless.
template <class T>
constexpr bool is_plain_socket = [] {
    if constexpr (passes_reads_through<T>)
        return is_plain_socket<typename T::next_layer_type>;
    else if constexpr (has_lowest_socket<T>)
        return std::is_base_of_v<std::remove_cvref_t<decltype(std::declval<T&>().lowest_layer())>, T>;
    else
        return false;
}();

/// The socket under layers that pass reads through (is_plain_socket<T>): for draining it.
template <class T>
auto& plain_socket(T& t) noexcept
{
    if constexpr (passes_reads_through<T>)
        return plain_socket(t.next_layer());
    else
        return t;
}

template <class T>
concept has_async_read_some = requires(T& t, asio::mutable_buffer b) {
    t.async_read_some(b, write_handler_archetype{});
};

/// A stream with a closing handshake of its own: TLS's close_notify, http_body's last chunk.
template <class T>
concept has_async_shutdown = requires(T& t) { t.async_shutdown([](error_code) {}); };

/// Closes the transport (or its lowest layer); cancels its pending operations.
template <transport T>
void close_transport(T& t) noexcept
{
    error_code ec;
    if constexpr (requires { t.close(ec); })
        t.close(ec);
    else
        t.lowest_layer().close(ec);
}

/// Sends FIN after the last byte where the transport exposes a socket, so that a
/// close-delimited body ends cleanly even if the peer has unread bytes in flight.
template <transport T>
void shutdown_send(T& t) noexcept
{
    if constexpr (has_lowest_socket<T>) {
        error_code ec;
        t.lowest_layer().shutdown(asio::socket_base::shutdown_send, ec);
    }
}

} // namespace detail
} // namespace ssepp

#endif
