// examples/common/http.cpp
// One connection = one request_parser, one read buffer, an ordered write queue and one
// deadline timer, all on the connection's strand. A request is dispatched when the parser
// returns it whole; pipelined bytes wait their turn. Each phase of a connection has its own
// deadline, set when the phase begins and never pushed back by a lone byte: waiting for a
// request (idle_timeout), its head (head_timeout from its first byte), its body (body_timeout,
// extended only by bytes at min_body_rate, and never more than body_timeout past its last
// byte), its response being read (idle_timeout).
#include "common/http.hpp"

#include <asio/bind_executor.hpp>
#include <asio/post.hpp>
#include <asio/steady_timer.hpp>
#include <asio/strand.hpp>
#include <asio/write.hpp>
#include <fmt/format.h>

#include <array>
#include <atomic>
#include <deque>
#include <mutex>
#include <set>

namespace common::http {

class connection;

struct server::state {
    asio::io_context& io;
    // On a strand: the accept loop's handlers, the retry timer and stop()'s close never run at
    // once.
    asio::ip::tcp::acceptor acceptor;
    server::handler on_request;
    server::head_check check;
    server_options options;
    std::mutex mtx;
    std::set<std::weak_ptr<connection>, std::owner_less<>> connections;
    std::atomic<std::size_t> open{0}; // connections in HTTP, against max_connections
    bool stopped = false;
    asio::steady_timer retry; // accept again after an error

    state(asio::io_context& io, const asio::ip::tcp::endpoint& ep, server::handler h, server::head_check c,
          server_options o)
        : io(io), acceptor(asio::make_strand(io), ep), on_request(std::move(h)), check(std::move(c)), options(o),
          retry(acceptor.get_executor())
    {
    }

    void accept(std::shared_ptr<state> self);
    void refuse(asio::ip::tcp::socket socket);
};

class connection : public std::enable_shared_from_this<connection> {
public:
    using clock = std::chrono::steady_clock;

    connection(asio::ip::tcp::socket socket, std::shared_ptr<server::state> srv)
        : socket_(std::move(socket)), timer_(socket_.get_executor()), srv_(std::move(srv)),
          parser_({.max_head_bytes = srv_->options.max_head_bytes, .max_body_bytes = srv_->options.max_body_bytes},
                  srv_->check)
    {
        srv_->open.fetch_add(1, std::memory_order_relaxed);
        // Each response goes out in one write: Nagle would only hold the answers to pipelined
        // requests back until the client's (delayed) ACK, some 40 ms each.
        std::error_code ignored;
        socket_.set_option(asio::ip::tcp::no_delay(true), ignored);
    }

    ~connection() { release(); }

    void start()
    {
        expect(clock::now() + srv_->options.idle_timeout, on_expiry::close);
        read();
    }

    void close()
    {
        asio::post(socket_.get_executor(), [self = shared_from_this()] {
            std::error_code ec;
            self->finish();
            self->socket_.close(ec);
        });
    }

private:
    enum class on_expiry { close, answer_408 };
    enum class phase { idle, head, body, responding, closing };

    // No handler of this connection runs any more (closed, or the socket was taken): the
    // pending wait ends, and with it the timer's hold on the connection.
    void finish()
    {
        done_ = true;
        timer_.cancel();
        parser_.drop_request();  // what a request in progress holds goes with the connection
        release();
    }

    // Gives the connection's place back, once (an event stream no longer counts).
    void release()
    {
        if (counted_) {
            counted_ = false;
            srv_->open.fetch_sub(1, std::memory_order_relaxed);
        }
    }

    // The one deadline in force: an earlier one than the timer's cancels its wait (the
    // handler then waits again for the new one); a later one is found when the wait ends.
    void expect(clock::time_point deadline, on_expiry what)
    {
        const bool earlier = deadline < deadline_;
        deadline_ = deadline;
        expiry_ = what;
        if (!waiting_)
            wait();
        else if (earlier)
            timer_.cancel();
    }

    void wait()
    {
        waiting_ = true;
        timer_.expires_at(deadline_);
        timer_.async_wait([self = shared_from_this()](std::error_code) {
            self->waiting_ = false;
            if (self->done_)
                return;
            if (clock::now() < self->deadline_) {
                self->wait();
                return;
            }
            self->expired();
        });
    }

    void expired()
    {
        if (expiry_ == on_expiry::answer_408) {
            const bool head = phase_ == phase::head;
            phase_ = phase::closing;
            reading_mode_ = mode::discard;
            parser_.drop_request();  // refused: its body (and what it reserved) goes now
            send(response::error(408, head ? fmt::format("request head not complete within {} ms",
                                                         srv_->options.head_timeout.count())
                                           : std::string("request body not arriving fast enough")),
                 true);
            return;
        }
        std::error_code ignored;
        socket_.close(ignored);
        finish();
    }

    enum class mode { parse, discard };

    void read()
    {
        if (reading_)
            return;
        reading_ = true;
        socket_.async_read_some(asio::buffer(buf_), [self = shared_from_this()](std::error_code ec, std::size_t n) {
            self->reading_ = false;
            if (ec || self->done_) {
                std::error_code ignored;
                self->socket_.close(ignored);
                self->finish();
                return;
            }
            if (self->reading_mode_ == mode::discard) {
                self->read();
                return;
            }
            self->feed(std::string_view(self->buf_.data(), n));
        });
    }

    // Feeds bytes to the parser until they are used up (then reads more) or a request is ready.
    void feed(std::string_view bytes)
    {
        for (;;) {
            const auto [what, used] = parser_.feed(bytes);
            bytes.remove_prefix(used);
            switch (what) {
            case request_parser::event::need_more:
                follow_phase();
                read();
                return;
            case request_parser::event::expect_continue:
                write("HTTP/1.1 100 Continue\r\n\r\n", after_write::nothing);
                continue;
            case request_parser::event::request:
                leftover_.assign(bytes);
                dispatch();
                return;
            case request_parser::event::error:
                // The rest of the request was not read, so the connection cannot carry another.
                phase_ = phase::closing;
                reading_mode_ = mode::discard;
                send(parser_.rejection(), true);
                return;
            }
        }
    }

    // A head's deadline runs from its first byte; a body's from its head, extended by what
    // arrives of it at the minimum rate, but never past body_timeout after its last byte: a
    // client that sent fast would otherwise have earned the right to stall for hours (holding
    // what it sent).
    void follow_phase()
    {
        const auto& o = srv_->options;
        const auto now = clock::now();
        switch (parser_.where()) {
        case request_parser::phase::idle:
            break;
        case request_parser::phase::head:
            if (phase_ != phase::head) {
                phase_ = phase::head;
                expect(now + o.head_timeout, on_expiry::answer_408);
            }
            break;
        case request_parser::phase::body: {
            if (phase_ != phase::body) {
                phase_ = phase::body;
                body_start_ = now;
                body_seen_ = 0;
                body_moved_ = now;
            }
            if (parser_.body_bytes() != body_seen_) {
                body_seen_ = parser_.body_bytes();
                body_moved_ = now;
            }
            auto allowed = o.body_timeout;
            if (o.min_body_rate > 0)
                allowed += std::chrono::milliseconds(parser_.body_bytes() * 1000 / o.min_body_rate);
            expect(std::min(body_start_ + allowed, body_moved_ + o.body_timeout), on_expiry::answer_408);
            break;
        }
        }
    }

    void dispatch()
    {
        phase_ = phase::responding;
        // The client has idle_timeout to read the answer.
        expect(clock::now() + srv_->options.idle_timeout, on_expiry::close);
        const bool keep_alive = parser_.keep_alive();
        req_ = parser_.take_request();
        reply r = [&]() -> reply {
            try {
                return srv_->on_request(req_);
            } catch (const std::exception& e) {
                return response::error(500, e.what());
            }
        }();
        // Answered: nothing of the request is kept meanwhile (its body, what it holds).
        req_ = request{};
        if (auto* stream = std::get_if<take_socket>(&r)) {
            finish();
            stream->handler(std::move(socket_));
            return;
        }
        send(std::move(std::get<response>(r)), !keep_alive);
    }

    void send(const response& res, bool close_after)
    {
        std::string out = fmt::format("HTTP/1.1 {} {}\r\n", res.status, reason_phrase(res.status));
        if (!res.content_type.empty())
            out += fmt::format("Content-Type: {}\r\n", res.content_type);
        if (res.status >= 200 && res.status != 204 && res.status != 304)
            out += fmt::format("Content-Length: {}\r\n", res.body.size());
        for (const auto& [k, v] : res.headers)
            out += fmt::format("{}: {}\r\n", k, v);
        if (close_after) {
            out += "Connection: close\r\n";
            // A client that does not read its last answer does not hold the connection.
            expect(clock::now() + linger, on_expiry::close);
        }
        out += "\r\n";
        out += res.body;
        write(std::move(out), close_after ? after_write::close : after_write::next_request);
    }

    enum class after_write { nothing, next_request, close };

    // Writes go out one at a time in order: a 100 Continue may still be in flight when the
    // final response is ready.
    void write(std::string bytes, after_write then)
    {
        writes_.emplace_back(std::move(bytes), then);
        if (writes_.size() == 1)
            write_front();
    }

    void write_front()
    {
        asio::async_write(socket_, asio::buffer(writes_.front().first),
                          [self = shared_from_this()](std::error_code ec, std::size_t) {
                              const auto then = self->writes_.front().second;
                              self->writes_.pop_front();
                              if (ec || self->done_) {
                                  std::error_code ignored;
                                  self->socket_.close(ignored);
                                  self->finish();
                                  return;
                              }
                              if (!self->writes_.empty())
                                  self->write_front();
                              if (then == after_write::close) {
                                  std::error_code ignored;
                                  self->socket_.shutdown(asio::socket_base::shutdown_send, ignored);
                                  self->drain_then_close();
                              } else if (then == after_write::next_request) {
                                  self->next_request();
                              }
                          });
    }

    // After a refusal the client may still be sending its body: read and discard it for a
    // moment so that closing does not reset the connection before the client reads our answer.
    void drain_then_close()
    {
        phase_ = phase::closing;
        reading_mode_ = mode::discard;
        expect(clock::now() + linger, on_expiry::close);
        read();
    }

    void next_request()
    {
        phase_ = phase::idle;
        expect(clock::now() + srv_->options.idle_timeout, on_expiry::close);
        auto rest = std::move(leftover_);
        leftover_.clear();
        if (rest.empty())
            read();
        else
            feed(rest);
    }

    // How long a connection that was answered and is closing may take to read the answer.
    static constexpr auto linger = std::chrono::seconds(2);

    asio::ip::tcp::socket socket_;
    asio::steady_timer timer_;
    std::shared_ptr<server::state> srv_;
    request_parser parser_;
    std::array<char, 16384> buf_{};
    request req_;
    std::string leftover_;
    std::deque<std::pair<std::string, after_write>> writes_;
    clock::time_point deadline_ = clock::time_point::max();
    clock::time_point body_start_{};
    clock::time_point body_moved_{};  // when body bytes last arrived
    std::uint64_t body_seen_ = 0;
    on_expiry expiry_ = on_expiry::close;
    phase phase_ = phase::idle;
    mode reading_mode_ = mode::parse;
    bool waiting_ = false;
    bool reading_ = false;
    bool done_ = false;
    bool counted_ = true;
};

void server::state::accept(std::shared_ptr<state> self)
{
    acceptor.async_accept(asio::make_strand(io), [self](std::error_code ec, asio::ip::tcp::socket socket) {
        {
            // After stop(), whatever the outcome: accepting again on the closed acceptor fails
            // at once (bad_descriptor), and retrying that would spin forever, keeping io.run()
            // from returning.
            std::lock_guard lock(self->mtx);
            if (self->stopped)
                return;
        }
        if (ec == asio::error::operation_aborted || ec == asio::error::bad_descriptor)
            return;
        if (ec) {
            // Out of descriptors, a connection reset before it was accepted...: try again in
            // a moment rather than at once.
            self->retry.expires_after(std::chrono::milliseconds(50));
            self->retry.async_wait([self](std::error_code wait_ec) {
                if (!wait_ec)
                    self->accept(self);
            });
            return;
        }
        // Only this strand adds connections, so the count cannot pass the cap between the check
        // and the connection's creation.
        if (self->open.load(std::memory_order_relaxed) >= self->options.max_connections) {
            self->refuse(std::move(socket));
            self->accept(self);
            return;
        }
        {
            auto c = std::make_shared<connection>(std::move(socket), self);
            {
                std::lock_guard lock(self->mtx);
                if (self->stopped)
                    return;
                // Forget connections that are gone, so the set stays the size of the live ones.
                std::erase_if(self->connections, [](const auto& w) { return w.expired(); });
                self->connections.insert(c);
            }
            c->start();
        }
        self->accept(self);
    });
}

// Past the cap: a short 503 written at once (it fits any fresh socket's send buffer, so the
// write does not block), rather than a silent close that a client cannot tell from a crash,
// and no state kept for the connection. What the client already sent is read first, so
// that the close does not reset the connection under the answer.
void server::state::refuse(asio::ip::tcp::socket socket)
{
    static const std::string body = R"({"error":"too many connections, try again shortly"})";
    static const std::string answer = fmt::format("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                                  "Content-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{}",
                                                  body.size(), body);
    std::error_code ec;
    socket.non_blocking(true, ec);
    socket.write_some(asio::buffer(answer), ec);
    std::array<char, 4096> sink;
    for (int i = 0; i < 16 && !ec; ++i)
        socket.read_some(asio::buffer(sink), ec);
    socket.shutdown(asio::socket_base::shutdown_send, ec);
    socket.close(ec);
}

server::server(asio::io_context& io, const asio::ip::tcp::endpoint& endpoint, handler on_request,
               head_check check, server_options options)
    : state_(std::make_shared<state>(io, endpoint, std::move(on_request), std::move(check), options))
{
    state_->accept(state_);
}

server::~server()
{
    stop();
}

asio::ip::tcp::endpoint server::local_endpoint() const
{
    return state_->acceptor.local_endpoint();
}

std::size_t server::connections() const
{
    return state_->open.load(std::memory_order_relaxed);
}

void server::stop()
{
    std::set<std::weak_ptr<connection>, std::owner_less<>> connections;
    {
        std::lock_guard lock(state_->mtx);
        if (state_->stopped)
            return;
        state_->stopped = true;
        connections.swap(state_->connections);
    }
    asio::post(state_->acceptor.get_executor(), [s = state_] {
        std::error_code ec;
        s->acceptor.close(ec);
    });
    for (auto& w : connections)
        if (auto c = w.lock())
            c->close();
}

} // namespace common::http
