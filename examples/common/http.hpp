// examples/common/http.hpp
// The examples' HTTP/1.1 front: requests parsed by request_parser (llhttp), keep-alive, early
// rejection from the request head (413 before the body arrives, Expect: 100-continue), and the
// hand-off of a connection's socket to an event stream.
#pragma once

#include "common/request_parser.hpp"

#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace common::http {

/// A reply that takes the connection's socket out of HTTP, for an event stream: `handler`
/// gets the socket (on its strand) and owns it from then on.
struct take_socket {
    std::function<void(asio::ip::tcp::socket)> handler;
};

using reply = std::variant<response, take_socket>;

struct server_options {
    /// The request head as sent (see parser_limits); over it: 431.
    std::size_t max_head_bytes = 16 * 1024;
    /// Default body limit; head_check may raise it per request.
    std::size_t max_body_bytes = std::size_t(1) << 20;
    /// A keep-alive connection with no request in progress, or whose client does not read its
    /// response, closes after this long.
    std::chrono::milliseconds idle_timeout = std::chrono::seconds(60);
    /// A request head must arrive whole within this long of its first byte, however slowly
    /// its bytes trickle in; else 408 and the connection closes.
    std::chrono::milliseconds head_timeout = std::chrono::seconds(20);
    /// A body must arrive within body_timeout of its head, plus one second for every
    /// min_body_rate bytes received (0: no extension), and no pause in it may last longer
    /// than body_timeout: a client that keeps up that rate may take as long as it needs, one
    /// that stalls or trickles gets 408 (one that sent fast has not earned a long stall).
    std::chrono::milliseconds body_timeout = std::chrono::seconds(20);
    std::size_t min_body_rate = 8 * 1024;
    /// HTTP connections at once (sockets taken for event streams are not counted). Past it a
    /// new connection is answered 503 with Retry-After at once, and closed.
    std::size_t max_connections = 512;
};

/// An HTTP/1.1 server. Each connection runs on its own strand, so `handler` may be called
/// on several threads at once, never twice at once for one connection.
class server {
public:
    using handler = std::function<reply(request&)>;
    /// See common::http::head_check: a refusal closes the connection after the answer.
    using head_check = http::head_check;

    server(asio::io_context& io, const asio::ip::tcp::endpoint& endpoint, handler on_request,
           head_check check = {}, server_options options = {});
    ~server();
    server(const server&) = delete;
    server& operator=(const server&) = delete;

    asio::ip::tcp::endpoint local_endpoint() const;

    /// Stops accepting and closes the HTTP connections (not the sockets already taken).
    void stop();

    /// HTTP connections open now (those counted against server_options::max_connections).
    std::size_t connections() const;

    struct state;

private:
    std::shared_ptr<state> state_;
};

} // namespace common::http
