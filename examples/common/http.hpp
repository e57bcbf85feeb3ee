// examples/common/http.hpp
// The examples' HTTP/1.1 front: requests parsed by llhttp, keep-alive, early rejection from the
// request head (413 before the body arrives, Expect: 100-continue), and the hand-off of a
// connection's socket to an event stream.
#pragma once

#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <nlohmann/json.hpp>

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

struct request {
    std::string method;
    std::string target;  // as sent
    std::string path;    // target before '?'
    std::vector<std::pair<std::string, std::string>> headers;
    std::string body;
    std::optional<std::uint64_t> content_length;

    /// The value of header `name` (case-insensitive), or empty.
    std::string_view header(std::string_view name) const;
    /// The value of query parameter `name`, decoded.
    std::optional<std::string> query(std::string_view name) const;
    /// The value of cookie `name`.
    std::optional<std::string> cookie(std::string_view name) const;
};

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

/// A reply that takes the connection's socket out of HTTP, for an event stream: `handler`
/// gets the socket (on its strand) and owns it from then on.
struct take_socket {
    std::function<void(asio::ip::tcp::socket)> handler;
};

using reply = std::variant<response, take_socket>;

struct server_options {
    std::size_t max_head_bytes = 16 * 1024;
    /// Default body limit; head_check may raise it per request.
    std::size_t max_body_bytes = std::size_t(1) << 20;
    /// A keep-alive connection with no request in progress closes after this long.
    std::chrono::milliseconds idle_timeout = std::chrono::seconds(60);
};

/// An HTTP/1.1 server. Each connection runs on its own strand, so `handler` may be called
/// on several threads at once, never twice at once for one connection.
class server {
public:
    using handler = std::function<reply(request&)>;
    /// Called once a request's head is complete, before its body: returns a response to
    /// reject the request at once (the connection then closes), and may change `max_body`.
    /// A Content-Length above `max_body` is answered 413 without reading the body.
    using head_check = std::function<std::optional<response>(const request&, std::size_t& max_body)>;

    server(asio::io_context& io, const asio::ip::tcp::endpoint& endpoint, handler on_request,
           head_check check = {}, server_options options = {});
    ~server();
    server(const server&) = delete;
    server& operator=(const server&) = delete;

    asio::ip::tcp::endpoint local_endpoint() const;

    /// Stops accepting and closes the HTTP connections (not the sockets already taken).
    void stop();

    struct state;

private:
    std::shared_ptr<state> state_;
};

/// The standard reason phrase of `status`.
std::string_view reason_phrase(int status);

} // namespace common::http
