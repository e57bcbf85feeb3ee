// tests/support/registry_support.hpp
// What the registry tests need beyond loopback.hpp: a fake emitter that records the frames it
// is given (for exhaustive, socket-free tests of ordering and replay), a registry served over
// loopback sockets whose request target picks keys and replay policy, and a pool of
// non-blocking clients driven by one poll() loop, for a thousand connections without a
// thousand threads.
#pragma once

#include <ssepp/emitter.hpp>
#include <ssepp/parser.hpp>
#include <ssepp/registry.hpp>
#include <ssepp/request.hpp>

#include "loopback.hpp"

#include "asio.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>

#include <cerrno>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace test {

/// Parses the concatenation of whole frames as a client would.
inline std::vector<received> parse_events(std::string_view bytes)
{
    std::vector<received> out;
    ssepp::parser p;
    p.feed(bytes, [&](const ssepp::message& m) {
        out.push_back({std::string(m.type), std::string(m.data), std::string(m.last_event_id)});
    });
    return out;
}

/// The datas of `events`, in order.
inline std::vector<std::string> datas(const std::vector<received>& events)
{
    std::vector<std::string> out;
    for (const auto& e : events)
        out.push_back(e.data);
    return out;
}

/// A registry call's result and error together, for assertions: the error_code overloads.
struct sent : ssepp::send_result {
    ssepp::error_code error;
    explicit operator bool() const noexcept { return !error; }
};
template <class Registry>
sent send(Registry& reg, const typename Registry::key_type& key, ssepp::event e)
{
    sent r;
    static_cast<ssepp::send_result&>(r) = reg.send(key, std::move(e), r.error);
    return r;
}
template <class Registry>
sent broadcast(Registry& reg, ssepp::event e)
{
    sent r;
    static_cast<ssepp::send_result&>(r) = reg.broadcast(std::move(e), r.error);
    return r;
}
template <class Registry>
sent finish(Registry& reg, const typename Registry::key_type& key, ssepp::event e)
{
    sent r;
    static_cast<ssepp::send_result&>(r) = reg.finish(key, std::move(e), r.error);
    return r;
}

/// An Emitter for basic_registry that records what it is given. Thread-safe. Close handlers
/// run only when the test calls close(), never inside a registry call (as with the real one).
class fake_emitter {
public:
    using close_handler = std::function<void(ssepp::close_reason, ssepp::error_code)>;

    void start()
    {
        std::lock_guard lock(mtx_);
        ++starts_;
    }

    /// Every frame queued counts as written at once (written_seq()), unless hold() was
    /// called: then frames stay queued until drain(), and a frame that would pass the bound
    /// overflows and closes the fake, as overflow_policy::close does.
    void enqueue(ssepp::shared_frame frame, std::uint64_t seq, ssepp::error_code& ec)
    {
        ec = {};
        std::lock_guard lock(mtx_);
        if (closed_ || completed_) {
            ec = ssepp::errc::closed;
            return;
        }
        if (frame->size() > bound_) {
            ec = ssepp::errc::event_too_large;
            return;
        }
        if (held_ && queued_ + frame->size() > bound_) {
            closed_ = overflowed_ = true;
            ec = ssepp::errc::overflow;
            return;
        }
        if (starts_ == 0)
            ++sent_before_start_;
        if (held_) {
            queued_ += frame->size();
            queued_seqs_.push_back(seq);
        } else if (seq) {
            written_seq_ = seq;
        }
        frames_.push_back(std::move(frame));
    }

    bool is_open() const
    {
        std::lock_guard lock(mtx_);
        return !closed_ && !completed_;
    }
    std::size_t queued_bytes() const
    {
        std::lock_guard lock(mtx_);
        return queued_;
    }
    std::size_t max_queued_bytes() const
    {
        std::lock_guard lock(mtx_);
        return bound_;
    }
    std::uint64_t written_seq() const
    {
        std::lock_guard lock(mtx_);
        return written_seq_;
    }
    /// Kept until drain() or poll() finds the queue at most `threshold`; they run it on the
    /// test's thread, never inside a registry call.
    template <class Handler>
    void async_wait_drained(std::size_t threshold, Handler h)
    {
        std::lock_guard lock(mtx_);
        ++drain_requests_;
        drained_threshold_ = threshold;
        drained_ = std::move(h);
    }

    /// max_queued_bytes() is `bound`; frames still count as written at once.
    void limit(std::size_t bound)
    {
        std::lock_guard lock(mtx_);
        bound_ = bound;
    }
    /// Frames stay queued until drain(), within `bound` bytes.
    void hold(std::size_t bound)
    {
        std::lock_guard lock(mtx_);
        held_ = true;
        bound_ = bound;
    }
    /// Writes everything queued, then runs the drained handler if it waits.
    void drain()
    {
        {
            std::lock_guard lock(mtx_);
            for (auto seq : queued_seqs_)
                if (seq)
                    written_seq_ = seq;
            queued_seqs_.clear();
            queued_ = 0;
        }
        poll();
    }
    /// Runs the drained handler if the queue is low enough.
    void poll()
    {
        std::function<void(ssepp::error_code)> h;
        {
            std::lock_guard lock(mtx_);
            if (!drained_ || queued_ > drained_threshold_)
                return;
            h = std::exchange(drained_, nullptr);
        }
        h({});
    }
    int drain_requests() const
    {
        std::lock_guard lock(mtx_);
        return drain_requests_;
    }
    bool overflowed() const
    {
        std::lock_guard lock(mtx_);
        return overflowed_;
    }

    /// Not used by the registry (it queues only frames); formats like basic_emitter.
    void send(const ssepp::event& e, ssepp::error_code& ec)
    {
        auto frame = ssepp::make_frame(e, ec);
        if (!ec)
            enqueue(std::move(frame), 0, ec);
    }

    void complete()
    {
        std::lock_guard lock(mtx_);
        ++completes_;
        completed_ = true;
    }

    void on_close(close_handler h)
    {
        std::lock_guard lock(mtx_);
        handlers_.push_back(std::move(h));
    }

    /// Ends the stream: runs the close handlers (registered so far) on this thread, and a
    /// waiting async_wait_drained() handler with errc::closed, as basic_emitter does.
    void close(ssepp::close_reason reason = ssepp::close_reason::client_gone)
    {
        std::vector<close_handler> hs;
        std::function<void(ssepp::error_code)> drained;
        {
            std::lock_guard lock(mtx_);
            closed_ = true;
            hs.swap(handlers_);
            drained = std::exchange(drained_, nullptr);
        }
        if (drained)
            drained(ssepp::errc::closed);
        for (auto& h : hs)
            h(reason, {});
    }

    std::vector<ssepp::shared_frame> frames() const
    {
        std::lock_guard lock(mtx_);
        return frames_;
    }
    std::string bytes() const
    {
        std::string out;
        for (const auto& f : frames())
            out += *f;
        return out;
    }
    std::vector<received> events() const { return parse_events(bytes()); }
    std::vector<std::string> data() const { return datas(events()); }
    bool completed() const
    {
        std::lock_guard lock(mtx_);
        return completed_;
    }
    int starts() const
    {
        std::lock_guard lock(mtx_);
        return starts_;
    }
    std::size_t handlers() const
    {
        std::lock_guard lock(mtx_);
        return handlers_.size();
    }

private:
    mutable std::mutex mtx_;
    std::vector<ssepp::shared_frame> frames_;
    std::vector<close_handler> handlers_;
    int starts_ = 0;
    int completes_ = 0;
    std::size_t sent_before_start_ = 0;
    std::uint64_t written_seq_ = 0;
    std::size_t bound_ = std::size_t(1) << 30;
    std::size_t queued_ = 0;
    std::vector<std::uint64_t> queued_seqs_;
    std::function<void(ssepp::error_code)> drained_;
    std::size_t drained_threshold_ = 0;
    int drain_requests_ = 0;
    bool held_ = false;
    bool overflowed_ = false;
    bool completed_ = false;
    bool closed_ = false;
};

using fake_registry = ssepp::basic_registry<std::string, fake_emitter>;

inline std::shared_ptr<fake_emitter> fake() { return std::make_shared<fake_emitter>(); }

/// Splits "a,b,c".
inline std::vector<std::string> split_keys(std::string_view s)
{
    std::vector<std::string> out;
    while (!s.empty()) {
        const auto comma = s.find(',');
        out.emplace_back(s.substr(0, comma));
        if (comma == std::string_view::npos)
            break;
        s.remove_prefix(comma + 1);
    }
    return out;
}

/// The request target for registry_server: `keys` comma-separated, `replay` all / none /
/// undelivered, `gap` adds an on_gap event {event: reset, data: gap}, `sndbuf` shrinks the
/// server's send buffer for this connection, `name` tags the connection for the test.
inline std::string target(std::string_view keys, std::string_view replay = "all", bool gap = false,
                          int sndbuf = 0, std::string_view name = "")
{
    std::string t = "/events?keys=" + std::string(keys) + "&replay=" + std::string(replay);
    if (gap)
        t += "&gap=1";
    if (sndbuf)
        t += "&sndbuf=" + std::to_string(sndbuf);
    if (!name.empty())
        t += "&name=" + std::string(name);
    return t;
}

inline std::string last_event_id_header(std::string_view id)
{
    return "Last-Event-ID: " + std::string(id) + "\r\n";
}

/// A registry served on 127.0.0.1: every request attaches a new emitter under the keys its
/// target names (see target()). The registry is destroyed before the io_context it uses.
struct registry_server_options {
    ssepp::history_options history{.id_epoch = "e"};
    ssepp::emitter_options emitter{};
    int threads = 1;
    /// The registry hands events to connections on the server's io_context (basic_registry's
    /// hand-off executor) instead of on the sending thread.
    bool hand_off = false;
};

class registry_server {
public:
    using options = registry_server_options;

    /// One accepted connection.
    struct connection {
        std::string name;
        std::vector<std::string> keys;
        ssepp::attach_result result;
        std::weak_ptr<ssepp::emitter> emitter;
        std::optional<ssepp::close_reason> closed;  // set by a close handler
    };

    explicit registry_server(options o = {})
        : opts_(std::move(o))
        , srv_(opts_.threads)
    {
        if (opts_.hand_off)
            reg_.emplace(srv_.io().get_executor(), opts_.history);
        else
            reg_.emplace(opts_.history);
        srv_.serve([this](asio::ip::tcp::socket s, std::string head) { on_request(std::move(s), head); });
    }

    ~registry_server()
    {
        srv_.stop();
        std::lock_guard lock(mtx_);
        reg_.reset();
        conns_.clear();
    }

    /// Use only while the registry lives (before destroy_registry()).
    ssepp::registry& reg() { return *reg_; }
    asio::ip::port_type port() const { return srv_.port(); }
    asio::io_context& io() { return srv_.io(); }

    /// Destroys the registry while the I/O threads run; later requests are dropped.
    void destroy_registry()
    {
        std::lock_guard lock(mtx_);
        reg_.reset();
    }

    std::vector<connection> connections() const
    {
        std::lock_guard lock(mtx_);
        return conns_;
    }
    std::size_t accepted() const
    {
        std::lock_guard lock(mtx_);
        return conns_.size();
    }
    std::optional<connection> find(std::string_view name) const
    {
        std::lock_guard lock(mtx_);
        for (const auto& c : conns_)
            if (c.name == name)
                return c;
        return std::nullopt;
    }

private:
    void on_request(asio::ip::tcp::socket s, const std::string& head)
    {
        const auto line = std::string_view(head).substr(0, head.find("\r\n"));
        const auto sp1 = line.find(' ');
        const auto tgt = line.substr(sp1 + 1, line.rfind(' ') - sp1 - 1);
        connection c;
        c.keys = split_keys(ssepp::query_parameter(tgt, "keys").value_or(""));
        c.name = ssepp::query_parameter(tgt, "name").value_or("");
        ssepp::attach_options ao;
        ao.last_event_id = ssepp::last_event_id(head);
        const auto replay = ssepp::query_parameter(tgt, "replay").value_or("all");
        ao.otherwise = replay == "none"          ? ssepp::replay::none
                       : replay == "undelivered" ? ssepp::replay::undelivered
                                                 : ssepp::replay::all;
        if (ssepp::query_parameter(tgt, "gap"))
            ao.on_gap = ssepp::event{.event = "reset", .data = "gap"};
        if (auto sndbuf = ssepp::query_parameter(tgt, "sndbuf"))
            s.set_option(asio::socket_base::send_buffer_size(std::stoi(*sndbuf)));

        std::lock_guard lock(mtx_);
        if (!reg_)
            return;
        // Past the registry's connection_limits: 503 with Retry-After, before any SSE byte.
        if (!reg_->admits(std::span<const std::string>(c.keys))) {
            static constexpr std::string_view refusal = "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\n"
                                                        "Content-Length: 21\r\n\r\ntoo many connections\n";
            ssepp::error_code ignored;
            asio::write(s, asio::buffer(refusal.data(), refusal.size()), ignored);
            reg_->refuse(std::span<const std::string>(c.keys));
            return;
        }
        auto em = ssepp::make_emitter(ssepp::http_body(std::move(s)), opts_.emitter);
        const auto index = conns_.size();
        em->on_close([this, index](ssepp::close_reason r, ssepp::error_code) {
            std::lock_guard l(mtx_);
            conns_[index].closed = r;
        });
        c.emitter = em;
        c.result = reg_->attach(std::span<const std::string>(c.keys), em, ao);
        conns_.push_back(std::move(c));
    }

    options opts_;
    mutable std::mutex mtx_;
    std::optional<ssepp::registry> reg_;
    std::vector<connection> conns_;
    server srv_;
};

/// Many SSE clients on non-blocking sockets, all read by one poll() loop on the caller's
/// thread. Raw (close-delimited) bodies only.
class client_pool {
public:
    struct one {
        int fd = -1;
        std::string head;
        std::string body;
        std::string pending;
        bool head_done = false;
        bool eof = false;
        std::vector<received> events;
        ssepp::parser parser;
    };

    client_pool() = default;
    client_pool(const client_pool&) = delete;
    client_pool& operator=(const client_pool&) = delete;
    ~client_pool() { close_all(); }

    /// Opens n connections to 127.0.0.1:port and sends each the request for `path`.
    /// @returns false (with what opened kept) when a socket call fails.
    bool open(std::size_t n, asio::ip::port_type port, const std::string& path)
    {
        const auto request = "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n";
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_port = htons(port);
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        for (std::size_t i = 0; i < n; ++i) {
            const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            if (fd < 0)
                return false;
            auto c = std::make_unique<one>();
            c->fd = fd;
            clients_.push_back(std::move(c));
            if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0)
                return false;
            if (::send(fd, request.data(), request.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(request.size()))
                return false;
            ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
        }
        return true;
    }

    /// Reads every connection until pred(client) holds for all, or `timeout`.
    template <class Pred>
    bool read_until(Pred pred, std::chrono::milliseconds timeout = 5s)
    {
        const auto deadline = clock::now() + timeout;
        std::vector<pollfd> fds;
        std::vector<one*> who;
        for (;;) {
            fds.clear();
            who.clear();
            for (auto& c : clients_)
                if (!pred(*c) && !c->eof) {
                    fds.push_back({c->fd, POLLIN, 0});
                    who.push_back(c.get());
                }
            if (fds.empty())
                return all_of(pred);
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now());
            if (left.count() <= 0)
                return false;
            if (::poll(fds.data(), fds.size(), static_cast<int>(left.count())) < 0 && errno != EINTR)
                return false;
            for (std::size_t i = 0; i < fds.size(); ++i)
                if (fds[i].revents)
                    drain(*who[i]);
        }
    }

    template <class Pred>
    bool all_of(Pred pred) const
    {
        for (const auto& c : clients_)
            if (!pred(*c))
                return false;
        return true;
    }

    void close_all()
    {
        for (auto& c : clients_)
            if (c->fd >= 0) {
                ::close(c->fd);
                c->fd = -1;
            }
    }

    std::size_t size() const { return clients_.size(); }
    one& operator[](std::size_t i) { return *clients_[i]; }

private:
    static void drain(one& c)
    {
        char buf[16384];
        for (;;) {
            const auto n = ::recv(c.fd, buf, sizeof buf, 0);
            if (n > 0) {
                on_bytes(c, std::string_view(buf, static_cast<std::size_t>(n)));
                continue;
            }
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
                return;
            c.eof = true;
            return;
        }
    }

    static void on_bytes(one& c, std::string_view bytes)
    {
        if (!c.head_done) {
            c.pending.append(bytes);
            const auto end = c.pending.find("\r\n\r\n");
            if (end == std::string::npos)
                return;
            c.head = c.pending.substr(0, end + 4);
            c.head_done = true;
            const auto rest = c.pending.substr(end + 4);
            c.pending.clear();
            on_bytes(c, rest);
            return;
        }
        c.body.append(bytes);
        c.parser.feed(bytes, [&](const ssepp::message& m) {
            c.events.push_back({std::string(m.type), std::string(m.data), std::string(m.last_event_id)});
        });
    }

    std::vector<std::unique_ptr<one>> clients_;
};

} // namespace test
