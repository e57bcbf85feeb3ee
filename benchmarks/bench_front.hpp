// benchmarks/bench_front.hpp
// What fanout_server and ideal_server share, so that they differ only in how they deliver:
// flags, the minimal HTTP front (GET /events subscribes, POST /publish broadcasts its body),
// and the publisher that stamps each event with its CLOCK_MONOTONIC publish time.
#pragma once

#include "common/server_main.hpp"

#include <asio.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <charconv>
#include <cmath>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace bench {

struct options : common::server_flags {
    std::string rate = "0";  // events/s, "max", or 0 (publish only on POST /publish)
    std::size_t payload = 64;
    std::uint64_t events = 0;  // the publisher stops after this many; 0: when the process does
    std::size_t batch = 16;    // events the publisher hands over at once at --rate max, where it can

    options() : server_flags{.port = 0, .threads = 1} {}

    /// The flags above and the server's, on `args` (a server with flags of its own adds them).
    common::cli& add_flags(common::cli& args)
    {
        return add_to(args)
            .flag("--rate", rate, "events/s to broadcast; max = as fast as the server takes them; 0 = none")
            .flag("--payload", payload, "data bytes per event (timestamp, space, padding)")
            .flag("--events", events, "the publisher stops after this many events (0: no bound but the process's life)")
            .flag("--batch", batch, "events handed to the server at once at --rate max, if it takes batches (1: one by one)");
    }

    void parse(const char* program, int argc, char** argv)
    {
        common::cli args(program);
        add_flags(args).parse(argc, argv);
    }
};

// Latency histogram: exact below 64 ns, then 64 buckets per power of two (error < 1.6 %).
struct histogram {
    static constexpr int sub_bits = 6;
    std::array<std::uint64_t, 64 * 58> counts{};
    std::int64_t max = 0;

    static std::size_t index(std::uint64_t v)
    {
        if (v < 64)
            return v;
        const int e = 63 - std::countl_zero(v);  // >= 6
        return static_cast<std::size_t>((e - sub_bits + 1) * 64) + ((v >> (e - sub_bits)) & 63);
    }
    static std::uint64_t value(std::size_t i)
    {
        if (i < 64)
            return i;
        const auto e = static_cast<int>(i / 64) + sub_bits - 1;
        return (std::uint64_t(64 + i % 64)) << (e - sub_bits);
    }
    void add(std::int64_t ns)
    {
        const auto v = static_cast<std::uint64_t>(std::max<std::int64_t>(0, ns));
        ++counts[std::min(index(v), counts.size() - 1)];
        max = std::max(max, ns);
    }
    void merge(const histogram& o)
    {
        for (std::size_t i = 0; i < counts.size(); ++i)
            counts[i] += o.counts[i];
        max = std::max(max, o.max);
    }
    double percentile_us(double q) const
    {
        std::uint64_t total = 0;
        for (auto c : counts)
            total += c;
        if (total == 0)
            return 0;
        const auto rank = static_cast<std::uint64_t>(std::ceil(q * double(total)));
        std::uint64_t seen = 0;
        for (std::size_t i = 0; i < counts.size(); ++i)
            if ((seen += counts[i]) >= rank)
                return double(value(i)) / 1000.0;
        return double(max) / 1000.0;
    }
};

inline std::int64_t now_ns()
{
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

/// Event data: publish time in decimal ns, a space, padding up to `payload` bytes.
inline std::string stamped_payload(std::size_t payload)
{
    auto s = fmt::format("{} ", now_ns());
    if (s.size() < payload)
        s.append(payload - s.size(), 'x');
    return s;
}

/// The HTTP front: each accepted socket's request head is read (up to 8 KiB); `GET /events`
/// hands the socket to `subscribe`, `POST /publish` reads a Content-Length body, passes it to
/// `publish` and answers 204 on a kept-alive connection; anything else gets 404.
/// `GET /events/<key>` passes `<key>` along with the socket (cluster_server's per-user keys);
/// `GET /events` passes "events".
class front {
public:
    using subscribe_fn = std::function<void(asio::ip::tcp::socket, std::string key)>;
    using publish_fn = std::function<void(std::string)>;

    front(asio::io_context& io, const options& o, subscribe_fn s, publish_fn p)
        : io_(io), acceptor_(io, o.endpoint()), subscribe_(std::move(s)),
          publish_(std::move(p))
    {
        accept();
    }

    /// For servers with one key.
    front(asio::io_context& io, const options& o, std::function<void(asio::ip::tcp::socket)> s, publish_fn p)
        : front(io, o, [s = std::move(s)](asio::ip::tcp::socket socket, std::string) { s(std::move(socket)); },
                std::move(p))
    {
    }

    std::uint16_t port() const { return acceptor_.local_endpoint().port(); }

private:
    struct conn {
        explicit conn(asio::ip::tcp::socket s) : socket(std::move(s)) {}
        asio::ip::tcp::socket socket;
        std::string buf;
    };

    void accept()
    {
        acceptor_.async_accept(asio::make_strand(io_), [this](std::error_code ec, asio::ip::tcp::socket s) {
            if (!ec) {
                s.set_option(asio::ip::tcp::no_delay(true));
                read_head(std::make_shared<conn>(std::move(s)));
            }
            accept();
        });
    }

    void read_head(std::shared_ptr<conn> c)
    {
        asio::async_read_until(c->socket, asio::dynamic_buffer(c->buf, 8192), "\r\n\r\n",
                               [this, c](std::error_code ec, std::size_t n) {
                                   if (!ec)
                                       on_head(c, n);
                               });
    }

    void on_head(std::shared_ptr<conn> c, std::size_t n)
    {
        const std::string head = c->buf.substr(0, n);
        c->buf.erase(0, n);
        if (head.starts_with("GET /events")) {
            std::string key = "events";
            if (head.starts_with("GET /events/")) {
                const auto start = sizeof "GET /events/" - 1;
                key = head.substr(start, head.find_first_of(" ?\r", start) - start);
            }
            subscribe_(std::move(c->socket), std::move(key));
            return;
        }
        if (!head.starts_with("POST /publish")) {
            asio::async_write(c->socket, asio::buffer("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", 45),
                              [c](std::error_code, std::size_t) {});
            return;
        }
        std::size_t length = 0;
        for (auto name : {"Content-Length: ", "content-length: "})
            if (auto at = head.find(name); at != std::string::npos)
                std::from_chars(head.data() + at + 16, head.data() + head.size(), length);
        const auto missing = length > c->buf.size() ? length - c->buf.size() : 0;
        asio::async_read(c->socket, asio::dynamic_buffer(c->buf), asio::transfer_exactly(missing),
                         [this, c, length](std::error_code ec, std::size_t) {
                             if (ec)
                                 return;
                             publish_(c->buf.substr(0, length));
                             c->buf.erase(0, length);
                             static constexpr std::string_view ok = "HTTP/1.1 204 No Content\r\n\r\n";
                             asio::async_write(c->socket, asio::buffer(ok), [this, c](std::error_code ec, std::size_t) {
                                 if (!ec)
                                     read_head(c);
                             });
                         });
    }

    asio::io_context& io_;
    asio::ip::tcp::acceptor acceptor_;
    subscribe_fn subscribe_;
    publish_fn publish_;
};

/// Broadcasts stamped events from its own thread: `rate` per second, or with "max" as fast as
/// `backlog()` (unwritten bytes of the subscriber furthest behind, as baseline_server and
/// ssepp's registry::backlog() measure it) stays under a high-water mark. With
/// `publish_batch`, "max" hands over `batch` events at a time, as a publisher with events at
/// hand would.
class publisher {
public:
    using batch_fn = std::function<void(std::vector<std::string>&)>;

    publisher(const options& o, std::function<void(std::string)> publish, std::function<std::size_t()> backlog,
              batch_fn publish_batch = {})
        : publish_(std::move(publish)), publish_batch_(std::move(publish_batch)), backlog_(std::move(backlog)),
          payload_(o.payload), limit_(o.events ? o.events : UINT64_MAX), batch_(std::max<std::size_t>(o.batch, 1))
    {
        if (batch_ == 1)
            publish_batch_ = nullptr;
        if (o.rate == "0")
            return;
        if (o.rate == "max") {
            thread_ = std::jthread([this](std::stop_token st) { run_max(st); });
            return;
        }
        rate_ = std::stod(o.rate);
        thread_ = std::jthread([this](std::stop_token st) { run_rate(st); });
    }

private:
    void run_rate(std::stop_token st)
    {
        const auto start = std::chrono::steady_clock::now();
        for (std::uint64_t i = 0; i < limit_ && !st.stop_requested(); ++i) {
            std::this_thread::sleep_until(start + std::chrono::nanoseconds(static_cast<std::int64_t>(1e9 * double(i) / rate_)));
            publish_(stamped_payload(payload_));
        }
    }

    void run_max(std::stop_token st)
    {
        constexpr std::size_t high_water = 256 * 1024;
        std::vector<std::string> events;
        for (std::uint64_t i = 0; i < limit_ && !st.stop_requested(); ++i) {
            // Checking may cost O(subscribers): do it once every 16 events.
            if (i % 16 == 0)
                while (backlog_() > high_water && !st.stop_requested())
                    std::this_thread::sleep_for(std::chrono::microseconds(50));
            if (!publish_batch_) {
                publish_(stamped_payload(payload_));
                continue;
            }
            events.push_back(stamped_payload(payload_));
            if (events.size() == batch_ || i + 1 == limit_) {
                publish_batch_(events);
                events.clear();
            }
        }
    }

    std::function<void(std::string)> publish_;
    batch_fn publish_batch_;
    std::function<std::size_t()> backlog_;
    std::size_t payload_;
    std::uint64_t limit_;
    std::size_t batch_;
    double rate_ = 0;
    std::jthread thread_;
};

/// Runs `io` on `threads` threads until SIGINT/SIGTERM.
inline void run(asio::io_context& io, int threads)
{
    asio::signal_set signals(io, SIGINT, SIGTERM);
    signals.async_wait([&](std::error_code, int) { io.stop(); });
    common::run(io, threads);
}

} // namespace bench
