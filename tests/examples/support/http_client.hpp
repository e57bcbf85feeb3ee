// tests/examples/support/http_client.hpp
// Blocking HTTP/1.1 and SSE clients over real sockets on 127.0.0.1 for the end-to-end tests.
// Every read waits at most until a deadline (poll), so a broken server fails a test instead
// of hanging it. The SSE client parses with ssepp::parser and stamps each event with the time
// the bytes that completed it arrived.
#pragma once

#if !__has_include(<ssepp/parser.hpp>)
#error "the end-to-end tests parse streams with ssepp::parser: link example_tests with ssepp::ssepp (tests/examples/CMakeLists.txt)"
#endif
#include <ssepp/parser.hpp>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

namespace e2e {

using namespace std::chrono_literals;
using clock = std::chrono::steady_clock;

inline bool iequals(std::string_view a, std::string_view b)
{
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
           });
}

using header_list = std::vector<std::pair<std::string, std::string>>;

struct http_response {
    int status = 0;
    std::string head; // status line and fields, up to and including the blank line
    header_list headers;
    std::string body;

    /// The first value of header `name` (case-insensitive), or nullopt.
    std::optional<std::string> header(std::string_view name) const
    {
        for (const auto& [k, v] : headers)
            if (iequals(k, name))
                return v;
        return std::nullopt;
    }
    std::vector<std::string> all(std::string_view name) const
    {
        std::vector<std::string> out;
        for (const auto& [k, v] : headers)
            if (iequals(k, name))
                out.push_back(v);
        return out;
    }
};

/// One TCP connection to 127.0.0.1:port.
class connection {
public:
    /// `receive_buffer`: SO_RCVBUF before connecting (0: the system's default).
    explicit connection(std::uint16_t port, int receive_buffer = 0)
    {
        fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd_ < 0)
            throw std::runtime_error("socket failed");
        if (receive_buffer > 0)
            ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &receive_buffer, sizeof receive_buffer);
        int one = 1;
        ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_port = htons(port);
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
            ::close(fd_);
            throw std::runtime_error("connect to 127.0.0.1:" + std::to_string(port) + " failed: " + std::strerror(errno));
        }
        ::fcntl(fd_, F_SETFL, ::fcntl(fd_, F_GETFL) | O_NONBLOCK);
    }
    ~connection() { close(); }
    connection(const connection&) = delete;
    connection& operator=(const connection&) = delete;

    void close()
    {
        if (fd_ >= 0)
            ::close(fd_);
        fd_ = -1;
    }

    /// Closes with RST (SO_LINGER 0): an abrupt disconnect.
    void reset()
    {
        linger l{1, 0};
        ::setsockopt(fd_, SOL_SOCKET, SO_LINGER, &l, sizeof l);
        close();
    }

    int fd() const { return fd_; }

    /// Sends everything, or throws (peer gone, or not accepted within `timeout`).
    void send_all(std::string_view bytes, std::chrono::milliseconds timeout = 10s)
    {
        const auto deadline = clock::now() + timeout;
        while (!bytes.empty()) {
            const auto n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
            if (n > 0) {
                bytes.remove_prefix(static_cast<std::size_t>(n));
                continue;
            }
            if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                throw std::runtime_error(std::string("send failed: ") + std::strerror(errno));
            if (!wait(POLLOUT, deadline))
                throw std::runtime_error("send timed out");
        }
    }

    /// Reads what is there, waiting until `deadline` for something: appended to `out`.
    /// Returns false at the deadline; sets eof() when the peer closed (or reset).
    bool read_some(std::string& out, clock::time_point deadline)
    {
        for (;;) {
            char buf[65536];
            const auto n = ::recv(fd_, buf, sizeof buf, 0);
            if (n > 0) {
                out.append(buf, static_cast<std::size_t>(n));
                return true;
            }
            if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
                eof_ = true;
                reset_by_peer_ = n < 0 && errno == ECONNRESET;
                return true;
            }
            if (!wait(POLLIN, deadline))
                return false;
        }
    }

    bool eof() const { return eof_; }
    /// The end was a reset (RST), not an orderly close (FIN).
    bool reset_by_peer() const { return reset_by_peer_; }

    /// Reads until the peer closes; false if it did not within `timeout`. Bytes go to `out`.
    bool read_to_eof(std::string& out, std::chrono::milliseconds timeout = 5s)
    {
        const auto deadline = clock::now() + timeout;
        while (!eof_)
            if (!read_some(out, deadline))
                return false;
        return true;
    }

    /// Reads one response (after `pending_` bytes left by the previous one): head, then a
    /// Content-Length body, none for 1xx/204/304 or a HEAD, or up to the close otherwise.
    /// Throws on timeout or a malformed response.
    http_response read_response(std::chrono::milliseconds timeout = 10s)
    {
        const auto deadline = clock::now() + timeout;
        std::size_t end;
        while ((end = pending_.find("\r\n\r\n")) == std::string::npos) {
            if (eof_)
                throw std::runtime_error("connection closed before a response head; got: " + pending_);
            if (!read_some(pending_, deadline))
                throw std::runtime_error("no response head in time; got: " + pending_);
        }
        http_response r;
        r.head = pending_.substr(0, end + 4);
        pending_.erase(0, end + 4);
        parse_head(r);
        std::optional<std::size_t> length;
        if (auto cl = r.header("Content-Length"))
            length = std::stoull(*cl);
        if (r.status < 200 || r.status == 204 || r.status == 304)
            length = 0;
        if (length) {
            while (pending_.size() < *length) {
                if (eof_)
                    throw std::runtime_error("connection closed inside a body");
                if (!read_some(pending_, deadline))
                    throw std::runtime_error("body not complete in time");
            }
            r.body = pending_.substr(0, *length);
            pending_.erase(0, *length);
        } else {
            while (!eof_)
                if (!read_some(pending_, deadline))
                    throw std::runtime_error("close-delimited body not complete in time");
            r.body = std::move(pending_);
            pending_.clear();
        }
        return r;
    }

    /// Bytes read past the last response.
    std::string& pending() { return pending_; }

    /// Fills status and headers from r.head.
    static void parse_head(http_response& r)
    {
        std::string_view h = r.head;
        auto eol = h.find("\r\n");
        const auto status_line = h.substr(0, eol);
        if (!status_line.starts_with("HTTP/1.1 ") || status_line.size() < 12)
            throw std::runtime_error("bad status line: " + std::string(status_line));
        r.status = std::stoi(std::string(status_line.substr(9, 3)));
        h.remove_prefix(eol + 2);
        while ((eol = h.find("\r\n")) != 0 && eol != std::string_view::npos) {
            const auto line = h.substr(0, eol);
            const auto colon = line.find(':');
            if (colon == std::string_view::npos)
                throw std::runtime_error("bad header line: " + std::string(line));
            auto value = line.substr(colon + 1);
            while (!value.empty() && value.front() == ' ')
                value.remove_prefix(1);
            r.headers.emplace_back(std::string(line.substr(0, colon)), std::string(value));
            h.remove_prefix(eol + 2);
        }
    }

private:
    bool wait(short events, clock::time_point deadline)
    {
        for (;;) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now()).count();
            if (left < 0)
                return false;
            pollfd p{fd_, events, 0};
            const int r = ::poll(&p, 1, static_cast<int>(std::max<long long>(left, 1)));
            if (r > 0)
                return true;
            if (r < 0 && errno != EINTR)
                throw std::runtime_error("poll failed");
        }
    }

    int fd_ = -1;
    bool eof_ = false;
    bool reset_by_peer_ = false;
    std::string pending_;
};

/// A request's text: `Host`, `Content-Length` when there is a body, and `extra` fields.
inline std::string format_request(std::string_view method, std::string_view target, const header_list& extra = {},
                                  std::string_view body = {}, bool close = false)
{
    std::string out = std::string(method) + " " + std::string(target) + " HTTP/1.1\r\nHost: 127.0.0.1\r\n";
    for (const auto& [k, v] : extra)
        out += k + ": " + v + "\r\n";
    if (!body.empty() || method == "POST" || method == "PUT")
        out += "Content-Length: " + std::to_string(body.size()) + "\r\n";
    if (close)
        out += "Connection: close\r\n";
    out += "\r\n";
    out += body;
    return out;
}

/// One request on a connection of its own.
inline http_response request(std::uint16_t port, std::string_view method, std::string_view target,
                             const header_list& headers = {}, std::string_view body = {},
                             std::chrono::milliseconds timeout = 20s)
{
    connection c(port);
    c.send_all(format_request(method, target, headers, body, true), timeout);
    return c.read_response(timeout);
}

/// One received event.
struct event {
    std::string type;
    std::string data;
    std::string id; // the last event id in force
    clock::time_point at;
};

/// An SSE client: sends a GET, reads the response head, then parses the body with
/// ssepp::parser as it arrives.
class sse_client {
public:
    sse_client(std::uint16_t port, std::string_view target, const header_list& headers = {},
               int receive_buffer = 0)
        : conn_(port, receive_buffer)
    {
        header_list h{{"Accept", "text/event-stream"}};
        h.insert(h.end(), headers.begin(), headers.end());
        conn_.send_all(format_request("GET", target, h));
    }

    /// Reads the response head (and whatever body came with it); its status.
    int read_head(std::chrono::milliseconds timeout = 5s)
    {
        const auto deadline = clock::now() + timeout;
        while (!head_done_) {
            if (conn_.eof())
                throw std::runtime_error("connection closed before the head; got: " + raw_);
            if (!pump(deadline))
                throw std::runtime_error("no response head in time");
        }
        return response.status;
    }

    /// Reads until `pred()` holds; false on timeout or when the stream ended first.
    template <class Pred>
    bool read_until(Pred pred, std::chrono::milliseconds timeout = 5s)
    {
        const auto deadline = clock::now() + timeout;
        while (!pred()) {
            if (conn_.eof())
                return false;
            if (!pump(deadline))
                return pred();
        }
        return true;
    }

    bool read_events(std::size_t n, std::chrono::milliseconds timeout = 5s)
    {
        return read_until([&] { return events.size() >= n; }, timeout);
    }

    /// Reads until the server ends the stream; false on timeout.
    bool read_to_eof(std::chrono::milliseconds timeout = 5s)
    {
        read_until([] { return false; }, timeout);
        return conn_.eof();
    }

    /// Nothing arrives for `quiet` (no event, stream still open): for "B never receives".
    bool nothing_for(std::chrono::milliseconds quiet)
    {
        const auto before = events.size();
        read_until([&] { return events.size() != before; }, quiet);
        return events.size() == before && !conn_.eof();
    }

    bool eof() const { return conn_.eof(); }
    connection& conn() { return conn_; }

    http_response response; // head only; body for a non-stream answer after read_to_eof()
    std::vector<event> events;
    std::vector<std::string> comments;
    std::vector<std::chrono::milliseconds> retries;  // each valid retry: field, in order
    std::error_code parse_error;
    std::string raw_; // everything received

private:
    bool pump(clock::time_point deadline)
    {
        std::string chunk;
        if (!conn_.read_some(chunk, deadline))
            return false;
        const auto now = clock::now();
        raw_ += chunk;
        if (!head_done_) {
            head_buf_ += chunk;
            const auto end = head_buf_.find("\r\n\r\n");
            if (end == std::string::npos)
                return true;
            response = parse(head_buf_.substr(0, end + 4));
            head_done_ = true;
            chunk = head_buf_.substr(end + 4);
            head_buf_.clear();
            if (response.status != 200) {
                response.body += chunk;
                return true;
            }
        } else if (response.status != 200) {
            response.body += chunk;
            return true;
        }
        struct handler {
            sse_client& c;
            clock::time_point at;
            void on_event(const ssepp::message& m)
            {
                c.events.push_back({std::string(m.type), std::string(m.data), std::string(m.last_event_id), at});
            }
            void on_comment(std::string_view s) { c.comments.emplace_back(s); }
            void on_retry(std::chrono::milliseconds r) { c.retries.push_back(r); }
        };
        if (auto ec = parser_.feed(chunk, handler{*this, now}); ec && !parse_error)
            parse_error = ec;
        return true;
    }

    static http_response parse(std::string head)
    {
        http_response r;
        r.head = std::move(head);
        connection::parse_head(r);
        return r;
    }

    connection conn_;
    ssepp::parser parser_;
    std::string head_buf_;
    bool head_done_ = false;
};

} // namespace e2e
