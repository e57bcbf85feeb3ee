// tests/support/loopback.hpp
// Real sockets on 127.0.0.1 for the connection tests: a server io_context on its own threads
// that hands accepted sockets to the test, and blocking SSE clients (TCP, or any Asio stream:
// TLS, local sockets) whose every wait is bounded, so a failing test fails instead of hanging.
#pragma once

#include <ssepp/emitter.hpp>
#include <ssepp/parser.hpp>
#include <ssepp/request.hpp>

#include "asio.hpp"

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace test {

using namespace std::chrono_literals;
using clock = std::chrono::steady_clock;

/// Runs `io` on a thread of its own until it runs out of work, and stops it at the end of the
/// scope, so that a failed check does not leave the test waiting for run() to return.
class run_in_background {
public:
    explicit run_in_background(asio::io_context& io)
        : io_(io), done_(std::async(std::launch::async, [&io] { io.run(); }))
    {
    }
    run_in_background(const run_in_background&) = delete;
    run_in_background& operator=(const run_in_background&) = delete;
    ~run_in_background() { io_.stop(); }  // then done_ waits for the thread

    std::future_status wait_for(std::chrono::milliseconds d) const { return done_.wait_for(d); }

private:
    asio::io_context& io_;
    std::future<void> done_;
};

/// Emitter options with no heartbeat and no write timeout: only what a test does is written.
/// What an emitter's send() or enqueue() reported, for assertions: the error_code overloads.
template <class Emitter>
ssepp::error_code send_ec(Emitter& em, const ssepp::event& e)
{
    ssepp::error_code ec;
    em.send(e, ec);
    return ec;
}
template <class Emitter>
ssepp::error_code send_ec(Emitter& em, ssepp::shared_frame frame, std::uint64_t seq = 0)
{
    ssepp::error_code ec;
    em.enqueue(std::move(frame), seq, ec);
    return ec;
}
template <class Emitter>
ssepp::error_code complete_ec(Emitter& em, const ssepp::event& last)
{
    ssepp::error_code ec;
    em.complete(last, ec);
    return ec;
}

inline ssepp::emitter_options quiet()
{
    ssepp::emitter_options o;
    o.heartbeat = 0ms;
    o.write_timeout = 0ms;
    return o;
}

/// Waits until `pred()` holds, checking every `poll` (longer where each check is a request);
/// false after `timeout`.
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds timeout = 5s, std::chrono::milliseconds poll = 1ms)
{
    const auto deadline = clock::now() + timeout;
    while (!pred()) {
        if (clock::now() > deadline)
            return false;
        std::this_thread::sleep_for(poll);
    }
    return true;
}

/// Runs `f` on `ex` and waits for it; false when it did not run within `timeout`. With a
/// single-threaded context this is also a barrier: everything posted before has run.
template <class Executor, class F>
bool run_on(const Executor& ex, F f, std::chrono::milliseconds timeout = 5s)
{
    auto done = std::make_shared<std::promise<void>>();
    auto fut = done->get_future();
    asio::post(ex, [done, f = std::move(f)]() mutable {
        f();
        done->set_value();
    });
    return fut.wait_for(timeout) == std::future_status::ready;
}

/// Values handed from I/O threads to the test thread (emitters, typically).
template <class T>
class collector {
public:
    void push(T v)
    {
        std::lock_guard lock(mtx_);
        items_.push_back(std::move(v));
        cv_.notify_all();
    }

    /// Waits until at least `n` were pushed; false after `timeout`.
    bool wait(std::size_t n = 1, std::chrono::milliseconds timeout = 5s)
    {
        std::unique_lock lock(mtx_);
        return cv_.wait_for(lock, timeout, [&] { return items_.size() >= n; });
    }

    /// The i-th pushed value; waits (bounded) for it, throws if it never came.
    T at(std::size_t i, std::chrono::milliseconds timeout = 5s)
    {
        std::unique_lock lock(mtx_);
        if (!cv_.wait_for(lock, timeout, [&] { return items_.size() > i; }))
            throw std::runtime_error("test::collector: nothing pushed in time");
        return items_[i];
    }

    std::size_t size() const
    {
        std::lock_guard lock(mtx_);
        return items_.size();
    }

    void clear()
    {
        std::lock_guard lock(mtx_);
        items_.clear();
    }

private:
    mutable std::mutex mtx_;
    std::condition_variable cv_;
    std::vector<T> items_;
};

/// Records an emitter's on_close calls; its handler() may outlive the log.
class close_log {
public:
    struct call {
        ssepp::close_reason reason;
        ssepp::error_code ec;
        std::thread::id thread;
    };

    std::function<void(ssepp::close_reason, ssepp::error_code)> handler() const
    {
        return [s = state_](ssepp::close_reason r, ssepp::error_code ec) {
            std::lock_guard lock(s->mtx);
            s->calls.push_back({r, ec, std::this_thread::get_id()});
            s->cv.notify_all();
        };
    }

    /// Waits until at least `n` calls; false after `timeout`.
    bool wait(std::size_t n = 1, std::chrono::milliseconds timeout = 5s) const
    {
        std::unique_lock lock(state_->mtx);
        return state_->cv.wait_for(lock, timeout, [&] { return state_->calls.size() >= n; });
    }

    std::size_t count() const
    {
        std::lock_guard lock(state_->mtx);
        return state_->calls.size();
    }

    call at(std::size_t i) const
    {
        std::lock_guard lock(state_->mtx);
        return state_->calls.at(i);
    }

    ssepp::close_reason reason(std::size_t i = 0) const { return at(i).reason; }

private:
    struct shared {
        std::mutex mtx;
        std::condition_variable cv;
        std::vector<call> calls;
    };
    std::shared_ptr<shared> state_ = std::make_shared<shared>();
};

/// An io_context run by `threads` threads, with an acceptor on 127.0.0.1:0.
///
/// serve(): each accepted socket is handed, with its request head (read up to the blank line),
/// to the handler, on an I/O thread. accept(): each accepted socket is handed as it is.
///
/// Declare what holds the server's sockets (emitters) after the server, so that it goes before
/// the io_context does; then set the handler with serve() or accept().
class server {
public:
    using handler = std::function<void(asio::ip::tcp::socket, std::string head)>;
    using accept_handler = std::function<void(asio::ip::tcp::socket)>;

    explicit server(int threads = 1) : acceptor_(io_, {asio::ip::make_address("127.0.0.1"), 0})
    {
        accept_next();
        for (int i = 0; i < threads; ++i)
            threads_.emplace_back([this] { io_.run(); });
    }

    explicit server(handler on_request, int threads = 1) : server(threads) { serve(std::move(on_request)); }

    ~server() { stop(); }

    server(const server&) = delete;
    server& operator=(const server&) = delete;

    void serve(handler on_request)
    {
        std::lock_guard lock(mtx_);
        on_request_ = std::move(on_request);
    }

    void accept(accept_handler on_accept)
    {
        std::lock_guard lock(mtx_);
        on_accept_ = std::move(on_accept);
    }

    void stop()
    {
        work_.reset();
        asio::post(io_, [this] { acceptor_.close(); });
        io_.stop();
        for (auto& t : threads_)
            if (t.joinable())
                t.join();
    }

    asio::ip::port_type port() const { return port_; }
    asio::io_context& io() { return io_; }

private:
    void accept_next()
    {
        acceptor_.async_accept([this](ssepp::error_code ec, asio::ip::tcp::socket s) {
            if (ec)
                return;
            accept_next();
            accept_handler on_accept;
            {
                std::lock_guard lock(mtx_);
                on_accept = on_accept_;
            }
            if (on_accept) {
                on_accept(std::move(s));
                return;
            }
            auto sock = std::make_shared<asio::ip::tcp::socket>(std::move(s));
            auto head = std::make_shared<std::string>();
            asio::async_read_until(*sock, asio::dynamic_buffer(*head, 16384), "\r\n\r\n",
                                   [this, sock, head](ssepp::error_code ec, std::size_t n) {
                                       handler on_request;
                                       {
                                           std::lock_guard lock(mtx_);
                                           on_request = on_request_;
                                       }
                                       if (!ec && on_request)
                                           on_request(std::move(*sock), head->substr(0, n));
                                   });
        });
    }

    std::mutex mtx_;
    handler on_request_;
    accept_handler on_accept_;
    asio::io_context io_;
    asio::executor_work_guard<asio::io_context::executor_type> work_ = asio::make_work_guard(io_);
    asio::ip::tcp::acceptor acceptor_;
    asio::ip::port_type port_ = acceptor_.local_endpoint().port();
    std::vector<std::thread> threads_;
};

/// What a counting_transport saw.
struct write_stats {
    std::atomic<int> calls{0};          // async_write_some calls
    std::atomic<int> in_flight{0};      // started, not yet completed
    std::atomic<int> max_in_flight{0};  // the most in flight at once
    std::atomic<std::uint64_t> bytes{0};
};

/// A transport that is not an Asio socket: a TCP connection behind exactly what
/// ssepp::transport asks (get_executor, async_write_some, close), so the emitter has no peer
/// watch on it. Counts writes and how many are in flight at once.
class counting_transport {
public:
    using executor_type = asio::ip::tcp::socket::executor_type;

    counting_transport(asio::ip::tcp::socket s, std::shared_ptr<write_stats> stats)
        : socket_(std::move(s)), stats_(std::move(stats))
    {
    }

    executor_type get_executor() { return socket_.get_executor(); }

    template <class ConstBuffers, class Handler>
    void async_write_some(const ConstBuffers& buffers, Handler&& handler)
    {
        ++stats_->calls;
        const int now = ++stats_->in_flight;
        for (int m = stats_->max_in_flight; now > m && !stats_->max_in_flight.compare_exchange_weak(m, now);) {
        }
        socket_.async_write_some(buffers, [stats = stats_, h = std::forward<Handler>(handler)](
                                              ssepp::error_code ec, std::size_t n) mutable {
            --stats->in_flight;
            stats->bytes += n;
            h(ec, n);
        });
    }

    void close(ssepp::error_code& ec) { socket_.close(ec); }

private:
    asio::ip::tcp::socket socket_;
    std::shared_ptr<write_stats> stats_;
};

/// One received event.
struct received {
    std::string type;
    std::string data;
    std::string id;
    friend bool operator==(const received&, const received&) = default;
};

/// Takes the bytes of an HTTP response carrying an event stream: splits off the head, removes
/// chunked coding when the head says so (strictly: a malformed chunk is an error), and parses
/// the body with ssepp::parser.
class sse_reader {
public:
    /// `with_head`: the bytes start with an HTTP response head (false: body only).
    explicit sse_reader(bool with_head = true, bool chunked = false)
        : head_done_(!with_head), chunked_(chunked)
    {
    }

    std::string head;        // the response head, up to and including the blank line
    std::string body;        // the body bytes, chunked coding removed
    std::string raw;         // every byte received, head and chunk framing included
    std::vector<received> events;
    std::vector<std::string> comments;
    std::vector<std::chrono::milliseconds> retries;
    std::vector<std::size_t> chunk_sizes;  // the size of each chunk, the last 0 included
    ssepp::parser parser;
    bool chunk_terminated = false;
    ssepp::error_code parse_error;  // the first one
    std::string framing_error;    // malformed chunked coding, or bytes after the last chunk

    bool head_done() const { return head_done_; }

    void on_bytes(std::string_view bytes)
    {
        raw.append(bytes);
        feed(bytes);
    }

private:
    void feed(std::string_view bytes)
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
        chunked_ = head.find("\r\nTransfer-Encoding: chunked\r\n") != std::string::npos;
        auto rest = pending_.substr(end + 4);
        pending_.clear();
        feed(rest);
    }

    void on_chunked(std::string_view bytes)
    {
        pending_.append(bytes);
        while (!pending_.empty()) {
            if (chunk_terminated) {
                framing_error = "bytes after the last chunk";
                pending_.clear();
                return;
            }
            if (chunk_left_ == 0 && !in_crlf_) {
                const auto eol = pending_.find("\r\n");
                if (eol == std::string::npos)
                    return;
                const auto line = pending_.substr(0, eol);
                if (line.empty() || line.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos) {
                    framing_error = "bad chunk size line: " + line;
                    pending_.clear();
                    return;
                }
                chunk_left_ = std::stoul(line, nullptr, 16);
                chunk_sizes.push_back(chunk_left_);
                pending_.erase(0, eol + 2);
                in_crlf_ = true;
                if (chunk_left_ == 0)
                    last_chunk_ = true;
                continue;
            }
            if (chunk_left_ > 0) {
                const auto n = std::min(chunk_left_, pending_.size());
                on_body(std::string_view(pending_).substr(0, n));
                pending_.erase(0, n);
                chunk_left_ -= n;
                continue;
            }
            // The CRLF after a chunk's data (or after the last chunk).
            if (pending_.size() < 2)
                return;
            if (pending_.compare(0, 2, "\r\n") != 0) {
                framing_error = "chunk data not followed by CRLF";
                pending_.clear();
                return;
            }
            pending_.erase(0, 2);
            in_crlf_ = false;
            if (last_chunk_)
                chunk_terminated = true;
        }
    }

    void on_body(std::string_view bytes)
    {
        body.append(bytes);
        struct handler {
            sse_reader& c;
            void on_event(const ssepp::message& m)
            {
                c.events.push_back({std::string(m.type), std::string(m.data), std::string(m.last_event_id)});
            }
            void on_comment(std::string_view s) { c.comments.emplace_back(s); }
            void on_retry(std::chrono::milliseconds ms) { c.retries.push_back(ms); }
        };
        if (auto ec = parser.feed(bytes, handler{*this}); ec && !parse_error)
            parse_error = ec;
    }

    std::string pending_;
    std::size_t chunk_left_ = 0;
    bool in_crlf_ = false;
    bool last_chunk_ = false;
    bool head_done_;
    bool chunked_;
};

/// Owns the client side's io_context; a base so that it is built before the stream.
struct client_context {
    asio::io_context io_;
};

/// A blocking SSE client over any Asio stream with async_read_some (a socket, an SSL stream, a
/// local socket). Each read runs the client's own io_context for a bounded time; a read that
/// did not complete stays outstanding for the next call, so nothing is lost and no operation is
/// cancelled half way.
template <class Stream>
class stream_client : protected client_context, public sse_reader {
public:
    template <class... Args>
    explicit stream_client(bool with_head, Args&&... args)
        : sse_reader(with_head), stream_(io_, std::forward<Args>(args)...)
    {
    }

    Stream& stream() { return stream_; }

    /// Reads until pred() holds or the stream ends; false on timeout or end before pred().
    template <class Pred>
    bool read_until(Pred pred, std::chrono::milliseconds timeout = 5s)
    {
        const auto deadline = clock::now() + timeout;
        while (!pred()) {
            if (eof_)
                return false;
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now());
            if (left.count() <= 0)
                return pred();
            read_some(left);
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

    bool eof() const { return eof_; }
    /// Why the stream ended (eof, a reset, TLS stream_truncated...).
    ssepp::error_code end_error() const { return end_ec_; }
    std::uint64_t bytes_read() const { return raw.size(); }

protected:
    /// Runs the client's io_context until the outstanding operations are done or `timeout`.
    bool run_for(std::chrono::milliseconds timeout)
    {
        io_.restart();
        io_.run_for(timeout);
        return io_.stopped();
    }

    void read_some(std::chrono::milliseconds timeout)
    {
        if (!reading_) {
            reading_ = true;
            stream_.async_read_some(asio::buffer(buf_), [this](ssepp::error_code ec, std::size_t n) {
                reading_ = false;
                if (n > 0)
                    on_bytes(std::string_view(buf_.data(), n));
                if (ec) {
                    eof_ = true;
                    end_ec_ = ec;
                }
            });
        }
        run_for(timeout);
    }

    Stream stream_;

private:
    std::array<char, 65536> buf_{};
    ssepp::error_code end_ec_;
    bool reading_ = false;
    bool eof_ = false;
};

/// An SSE client over TCP: connects to 127.0.0.1:port and sends a GET request.
class client : public stream_client<asio::ip::tcp::socket> {
public:
    /// `receive_buffer`: SO_RCVBUF set before connecting (0: the system's default, which grows
    /// to megabytes). A small one makes a client that stops reading back the server up after a
    /// few KiB, and it reads at full speed again as soon as it reads.
    explicit client(asio::ip::port_type port, std::string path = "/events", std::string extra_headers = "",
                    int receive_buffer = 0)
        : stream_client(true)
    {
        stream_.open(asio::ip::tcp::v4());
        if (receive_buffer > 0)
            stream_.set_option(asio::socket_base::receive_buffer_size(receive_buffer));
        stream_.connect({asio::ip::make_address("127.0.0.1"), port});
        const auto request = "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
                             + extra_headers + "\r\n";
        asio::write(stream_, asio::buffer(request));
    }

    /// Stops reading, and shrinks the receive buffer so the server's writes back up quickly.
    /// Shrinking below the window already advertised makes the kernel drop segments, so reading
    /// again is slow (retransmission backoff): prefer `receive_buffer` at construction.
    void stall() { stream_.set_option(asio::socket_base::receive_buffer_size(4096)); }

    /// Closes with RST (SO_LINGER 0) instead of FIN: an abrupt disconnect.
    void reset()
    {
        stream_.set_option(asio::socket_base::linger(true, 0));
        stream_.close();
    }

    void close() { stream_.close(); }
    asio::ip::tcp::socket& socket() { return stream_; }
};

} // namespace test
