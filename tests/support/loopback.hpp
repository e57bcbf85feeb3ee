// tests/support/loopback.hpp
// Real sockets on 127.0.0.1 for the connection tests: a server io_context on its own thread
// that hands accepted sockets to the test, and a blocking SSE client whose every wait is
// bounded (poll with a deadline), so a failing test fails instead of hanging.
#pragma once

#include <ssepp/parser.hpp>
#include <ssepp/request.hpp>

#include <asio.hpp>

#include <poll.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace test {

using namespace std::chrono_literals;
using clock = std::chrono::steady_clock;

/// Waits until `pred()` holds, checking every millisecond; false after `timeout`.
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds timeout = 5s)
{
    const auto deadline = clock::now() + timeout;
    while (!pred()) {
        if (clock::now() > deadline)
            return false;
        std::this_thread::sleep_for(1ms);
    }
    return true;
}

/// An io_context run by `threads` threads, with an acceptor on 127.0.0.1:0. Each accepted
/// socket is handed, with its request head (read up to the blank line), to on_request, on an
/// I/O thread.
class server {
public:
    using handler = std::function<void(asio::ip::tcp::socket, std::string head)>;

    explicit server(handler on_request, int threads = 1)
        : on_request_(std::move(on_request))
        , acceptor_(io_, {asio::ip::make_address("127.0.0.1"), 0})
    {
        accept();
        for (int i = 0; i < threads; ++i)
            threads_.emplace_back([this] { io_.run(); });
    }

    ~server() { stop(); }

    void stop()
    {
        work_.reset();
        asio::post(io_, [this] { acceptor_.close(); });
        io_.stop();
        for (auto& t : threads_)
            if (t.joinable())
                t.join();
    }

    asio::ip::port_type port() const { return acceptor_.local_endpoint().port(); }
    asio::io_context& io() { return io_; }

private:
    void accept()
    {
        acceptor_.async_accept([this](std::error_code ec, asio::ip::tcp::socket s) {
            if (ec)
                return;
            auto sock = std::make_shared<asio::ip::tcp::socket>(std::move(s));
            auto head = std::make_shared<std::string>();
            asio::async_read_until(*sock, asio::dynamic_buffer(*head, 16384), "\r\n\r\n",
                                   [this, sock, head](std::error_code ec, std::size_t n) {
                                       if (!ec)
                                           on_request_(std::move(*sock), head->substr(0, n));
                                   });
            accept();
        });
    }

    handler on_request_;
    asio::io_context io_;
    asio::executor_work_guard<asio::io_context::executor_type> work_ = asio::make_work_guard(io_);
    asio::ip::tcp::acceptor acceptor_;
    std::vector<std::thread> threads_;
};

/// One received event.
struct received {
    std::string type;
    std::string data;
    std::string id;
    friend bool operator==(const received&, const received&) = default;
};

/// A blocking SSE client on its own socket. Reads the HTTP head, then parses the body with
/// ssepp::parser (chunked bodies are decoded when the head says so). Every read is bounded.
class client {
public:
    explicit client(asio::ip::port_type port, std::string path = "/events", std::string extra_headers = "")
        : socket_(io_)
    {
        socket_.connect({asio::ip::make_address("127.0.0.1"), port});
        const auto request = "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
                             + extra_headers + "\r\n";
        asio::write(socket_, asio::buffer(request));
    }

    /// Reads until pred() holds or the stream ends; false on timeout or end before pred().
    template <class Pred>
    bool read_until(Pred pred, std::chrono::milliseconds timeout = 5s)
    {
        const auto deadline = clock::now() + timeout;
        while (!pred()) {
            if (eof_)
                return false;
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now());
            if (left.count() <= 0 || !read_some(left))
                return pred();
        }
        return true;
    }

    /// Reads until at least n events arrived.
    bool read_events(std::size_t n, std::chrono::milliseconds timeout = 5s)
    {
        return read_until([&] { return events.size() >= n; }, timeout);
    }

    /// Reads until the server closes the connection; false on timeout.
    bool read_to_eof(std::chrono::milliseconds timeout = 5s)
    {
        read_until([&] { return eof_; }, timeout);
        return eof_;
    }

    /// Stops reading, and shrinks the receive buffer so the server's writes back up quickly.
    void stall()
    {
        socket_.set_option(asio::socket_base::receive_buffer_size(4096));
    }

    /// Closes with RST (SO_LINGER 0) instead of FIN: an abrupt disconnect.
    void reset()
    {
        socket_.set_option(asio::socket_base::linger(true, 0));
        socket_.close();
    }

    void close() { socket_.close(); }
    bool eof() const { return eof_; }
    asio::ip::tcp::socket& socket() { return socket_; }

    std::string head;        // the response head, up to and including the blank line
    std::string body;        // the body bytes, chunked coding removed
    std::vector<received> events;
    std::vector<std::string> comments;
    std::vector<std::chrono::milliseconds> retries;
    ssepp::parser parser;

private:
    bool read_some(std::chrono::milliseconds timeout)
    {
        pollfd p{socket_.native_handle(), POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0)
            return false;
        char buf[65536];
        std::error_code ec;
        const auto n = socket_.read_some(asio::buffer(buf), ec);
        if (ec) {
            eof_ = true;
            return false;
        }
        on_bytes(std::string_view(buf, n));
        return true;
    }

    void on_bytes(std::string_view bytes)
    {
        if (head_done_) {
            chunked_ ? on_chunked(bytes) : on_body(bytes);
            return;
        }
        pending_.append(bytes);
        const auto end = pending_.find("\r\n\r\n");
        if (end == std::string::npos)
            return;
        head = pending_.substr(0, end + 4);
        head_done_ = true;
        chunked_ = head.find("Transfer-Encoding: chunked") != std::string::npos;
        auto rest = pending_.substr(end + 4);
        pending_.clear();
        on_bytes(rest);
    }

    void on_chunked(std::string_view bytes)
    {
        pending_.append(bytes);
        for (;;) {
            if (chunk_left_ == 0) {
                const auto eol = pending_.find("\r\n");
                if (eol == std::string::npos)
                    return;
                chunk_left_ = std::stoul(pending_.substr(0, eol), nullptr, 16) + 2;  // + CRLF
                if (chunk_left_ == 2)
                    chunk_terminated = true;
                pending_.erase(0, eol + 2);
            }
            const auto n = std::min(chunk_left_, pending_.size());
            const auto data_n = n > chunk_left_ - 2 ? chunk_left_ - 2 : n;  // excludes the CRLF
            on_body(std::string_view(pending_).substr(0, std::min(data_n, n)));
            pending_.erase(0, n);
            chunk_left_ -= n;
            if (chunk_left_ > 0 && pending_.empty())
                return;
            if (chunk_left_ > 0)
                continue;
        }
    }

    void on_body(std::string_view bytes)
    {
        body.append(bytes);
        struct handler {
            client& c;
            void on_event(const ssepp::message& m)
            {
                c.events.push_back({std::string(m.type), std::string(m.data), std::string(m.last_event_id)});
            }
            void on_comment(std::string_view s) { c.comments.emplace_back(s); }
            void on_retry(std::chrono::milliseconds ms) { c.retries.push_back(ms); }
        };
        parse_error = parser.feed(bytes, handler{*this});
    }

public:
    bool chunk_terminated = false;
    std::error_code parse_error;

private:
    asio::io_context io_;
    asio::ip::tcp::socket socket_;
    std::string pending_;
    std::size_t chunk_left_ = 0;
    bool head_done_ = false;
    bool chunked_ = false;
    bool eof_ = false;
};

} // namespace test
