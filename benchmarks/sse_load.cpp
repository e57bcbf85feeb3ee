// sse_load: opens N event streams at a bounded connect rate, parses every one with
// ssepp::parser, and prints one JSON object: connected, failed, events/s delivered,
// publish-to-receive latency percentiles (from the CLOCK_MONOTONIC stamp that starts each
// event's data) and duration. Loopback only; bounded in connections and time.
// With --publish-url it also POSTs stamped events (for servers published to over HTTP: nchan).
// Several servers (the nodes of a cluster): --url takes a comma-separated list, connection i
// goes to URL i mod n; "{key}" in a URL's path becomes i mod --keys (one stream per user).
#include "bench_front.hpp"

#include <ssepp/parser.hpp>

#include <array>
#include <bit>
#include <cmath>
#include <mutex>

namespace {

struct settings {
    std::string url = "http://127.0.0.1:8080/events";
    std::size_t connections = 1000;
    std::size_t connect_rate = 2000;
    int duration_s = 10;
    int threads = 1;
    std::size_t stall = 0;
    int connect_timeout_s = 60;
    std::uint16_t source_port_base = 0;
    std::string publish_url;
    std::string publish_rate = "100";
    std::size_t publishers = 1;
    std::size_t payload = 64;
    std::size_t keys = 0;
};

struct url_parts {
    std::string host;
    std::uint16_t port = 80;
    std::string path = "/";
};

url_parts parse_url(std::string_view url)
{
    url_parts u;
    if (url.starts_with("http://"))
        url.remove_prefix(7);
    const auto slash = url.find('/');
    auto authority = url.substr(0, slash);
    if (slash != std::string_view::npos)
        u.path = std::string(url.substr(slash));
    const auto colon = authority.find(':');
    u.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos)
        u.port = static_cast<std::uint16_t>(std::stoi(std::string(authority.substr(colon + 1))));
    return u;
}

std::vector<url_parts> parse_urls(std::string_view list)
{
    std::vector<url_parts> out;
    while (!list.empty()) {
        const auto comma = list.find(',');
        out.push_back(parse_url(list.substr(0, comma)));
        list.remove_prefix(comma == std::string_view::npos ? list.size() : comma + 1);
    }
    return out;
}

std::atomic<bool> in_window{false};
std::atomic<std::size_t> connected{0}, failed{0}, closed_early{0};
std::atomic<std::uint64_t> published{0};  // POSTs answered

class worker {
public:
    worker(const settings& s, const std::vector<url_parts>& urls, std::size_t first, std::size_t count)
        : s_(s), urls_(urls), first_(first), count_(count), timer_(io_)
    {
    }

    void start()
    {
        tick();
        thread_ = std::thread([this] {
            auto guard = asio::make_work_guard(io_);
            io_.run();
        });
    }
    void stop()
    {
        io_.stop();
        if (thread_.joinable())
            thread_.join();
    }

    bench::histogram latency;
    std::uint64_t events = 0;  // in the window

private:
    struct conn {
        explicit conn(asio::io_context& io) : socket(io) {}
        asio::ip::tcp::socket socket;
        std::string request;
        ssepp::parser parser;
        std::string head;
        std::string chunk_line;
        std::size_t chunk_left = 0;  // body bytes left in the current chunk, + 2 for its CRLF
        bool head_done = false, chunked = false, stalled = false;
    };

    // Connects this worker's share at its share of the connect rate, 10 ms at a time.
    void tick()
    {
        const auto per_tick = std::max<std::size_t>(1, s_.connect_rate / std::size_t(std::max(1, s_.threads)) / 100);
        for (std::size_t i = 0; i < per_tick && next_ < count_; ++i, ++next_)
            connect(first_ + next_);
        if (next_ < count_) {
            timer_.expires_after(std::chrono::milliseconds(10));
            timer_.async_wait([this](std::error_code ec) {
                if (!ec)
                    tick();
            });
        }
    }

    void connect(std::size_t index)
    {
        auto& c = *conns_.emplace_back(std::make_unique<conn>(io_));
        c.stalled = index < s_.stall;
        const auto& u = urls_[index % urls_.size()];
        const asio::ip::tcp::endpoint endpoint(asio::ip::make_address(u.host), u.port);
        auto path = u.path;
        if (const auto at = path.find("{key}"); at != std::string::npos)
            path.replace(at, 5, std::to_string(s_.keys ? index % s_.keys : index));
        c.request = "GET " + path + " HTTP/1.1\r\nHost: " + u.host + "\r\nAccept: text/event-stream\r\n\r\n";
        std::error_code ec;
        c.socket.open(asio::ip::tcp::v4(), ec);
        c.socket.set_option(asio::socket_base::reuse_address(true), ec);
        if (c.stalled)
            c.socket.set_option(asio::socket_base::receive_buffer_size(4096), ec);
        // Past ~14k connections from one address, the kernel's ephemeral port search makes
        // connect() crawl: give each connection its own source port.
        const auto port = s_.source_port_base + index;
        if (s_.source_port_base && port < 65535)
            c.socket.bind({endpoint.address(), static_cast<std::uint16_t>(port)}, ec);
        c.socket.async_connect(endpoint, [this, &c](std::error_code ec) {
            if (ec) {
                ++failed;
                return;
            }
            asio::async_write(c.socket, asio::buffer(c.request), [this, &c](std::error_code ec, std::size_t) {
                if (ec) {
                    ++failed;
                    return;
                }
                ++connected;
                c.socket.non_blocking(true, ec);
                wait(c);
            });
        });
    }

    void wait(conn& c)
    {
        c.socket.async_wait(asio::socket_base::wait_read, [this, &c](std::error_code ec) {
            if (!ec)
                readable(c);
        });
    }

    void readable(conn& c)
    {
        static thread_local std::array<char, 65536> buf;
        for (;;) {
            std::error_code ec;
            const auto n = c.socket.read_some(asio::buffer(buf), ec);
            if (ec == asio::error::would_block)
                break;
            if (ec) {
                ++closed_early;
                return;
            }
            received(c, std::string_view(buf.data(), n));
            if (c.stalled && c.head_done)
                return;  // a slow consumer: reads its head, then nothing more
        }
        wait(c);
    }

    void received(conn& c, std::string_view bytes)
    {
        if (!c.head_done) {
            c.head.append(bytes);
            const auto end = c.head.find("\r\n\r\n");
            if (end == std::string::npos)
                return;
            c.head_done = true;
            c.chunked = c.head.find("chunked") != std::string::npos;
            const std::string rest = c.head.substr(end + 4);
            c.head.clear();
            c.head.shrink_to_fit();
            if (!rest.empty())
                received(c, rest);
            return;
        }
        if (!c.chunked) {
            body(c, bytes);
            return;
        }
        while (!bytes.empty()) {
            if (c.chunk_left == 0) {
                const auto eol = bytes.find('\n');
                c.chunk_line.append(bytes.substr(0, eol));
                if (eol == std::string_view::npos)
                    return;
                bytes.remove_prefix(eol + 1);
                c.chunk_left = std::stoul(c.chunk_line, nullptr, 16) + 2;
                c.chunk_line.clear();
            }
            const auto n = std::min(c.chunk_left, bytes.size());
            const auto data = c.chunk_left > 2 ? std::min(n, c.chunk_left - 2) : 0;
            body(c, bytes.substr(0, data));
            bytes.remove_prefix(n);
            c.chunk_left -= n;
        }
    }

    void body(conn& c, std::string_view bytes)
    {
        const auto now = bench::now_ns();
        const bool counting = in_window.load(std::memory_order_relaxed);
        (void)c.parser.feed(bytes, [&](const ssepp::message& m) {
            if (!counting)
                return;
            std::int64_t stamp = 0;
            const auto [p, ec] = std::from_chars(m.data.data(), m.data.data() + m.data.size(), stamp);
            if (ec != std::errc() || p == m.data.data())
                return;
            ++events;
            latency.add(now - stamp);
        });
    }

    const settings& s_;
    const std::vector<url_parts>& urls_;
    std::size_t first_, count_, next_ = 0;
    asio::io_context io_{1};
    asio::steady_timer timer_;
    std::vector<std::unique_ptr<conn>> conns_;
    std::thread thread_;
};

// POSTs stamped events over one kept-alive connection until stopped, at `rate` (or max).
void publish_loop(const settings& s, const std::string& publish_rate, std::stop_token st)
{
    const auto u = parse_url(s.publish_url);
    asio::io_context io;
    asio::ip::tcp::socket sock(io);
    const auto connect = [&] {
        sock = asio::ip::tcp::socket(io);
        sock.connect({asio::ip::make_address(u.host), u.port});
        sock.set_option(asio::ip::tcp::no_delay(true));
    };
    connect();
    const bool max = publish_rate == "max";
    const double rate = max ? 0 : std::stod(publish_rate);
    const auto start = std::chrono::steady_clock::now();
    std::string in;
    for (std::uint64_t i = 0; !st.stop_requested(); ++i) {
        if (!max)
            std::this_thread::sleep_until(start + std::chrono::nanoseconds(static_cast<std::int64_t>(1e9 * double(i) / rate)));
        const auto body = bench::stamped_payload(s.payload);
        const auto req = fmt::format("POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{}",
                                     u.path, u.host, body.size(), body);
        try {
            asio::write(sock, asio::buffer(req));
            // Read one response: head, then Content-Length bytes.
            std::size_t end;
            while ((end = in.find("\r\n\r\n")) == std::string::npos) {
                char buf[4096];
                in.append(buf, sock.read_some(asio::buffer(buf)));
            }
            std::size_t length = 0;
            for (auto name : {"Content-Length: ", "content-length: "})
                if (auto at = in.find(name); at != std::string::npos && at < end)
                    std::from_chars(in.data() + at + 16, in.data() + end, length);
            while (in.size() < end + 4 + length) {
                char buf[4096];
                in.append(buf, sock.read_some(asio::buffer(buf)));
            }
            in.erase(0, end + 4 + length);
            ++published;
        } catch (const std::system_error&) {
            // The server ended the kept-alive connection (nginx does after keepalive_requests):
            // the event may be lost with it; carry on over a new connection.
            in.clear();
            connect();
        }
    }
}

} // namespace

int main(int argc, char** argv)
{
    settings s;
    common::cli("sse_load")
        .flag("--url", s.url, "event stream URL (loopback)")
        .flag("--connections", s.connections, "streams to open")
        .flag("--connect-rate", s.connect_rate, "connections opened per second")
        .flag("--duration", s.duration_s, "seconds of measurement after the connect phase")
        .flag("--threads", s.threads, "client threads")
        .flag("--stall", s.stall, "how many of the streams stop reading after the head (slow consumers)")
        .flag("--connect-timeout", s.connect_timeout_s, "seconds the connect phase may take")
        .flag("--source-port-base", s.source_port_base, "bind connection i to this + i (0: ephemeral); needed past ~14k connections")
        .flag("--publish-url", s.publish_url, "also POST stamped events here (e.g. nchan's publisher)")
        .flag("--publish-rate", s.publish_rate, "events/s to POST (over all publishers), or max")
        .flag("--publishers", s.publishers, "POSTing connections, each one request at a time")
        .flag("--keys", s.keys, "\"{key}\" in --url becomes connection index mod this (0: the index)")
        .flag("--payload", s.payload, "data bytes of each POSTed event")
        .parse(argc, argv);
    const auto urls = parse_urls(s.url);
    for (const auto& u : urls)
        if (u.host != "127.0.0.1" && u.host != "localhost") {
            fmt::print(stderr, "sse_load: loopback only (got host '{}')\n", u.host);
            return 2;
        }
    if (urls.empty() || s.publishers == 0 || s.publishers > 64) {
        fmt::print(stderr, "sse_load: --url needs at least one URL, --publishers 1 to 64\n");
        return 2;
    }

    const auto t = static_cast<std::size_t>(std::max(1, s.threads));
    std::vector<std::unique_ptr<worker>> workers;
    for (std::size_t i = 0; i < t; ++i) {
        const auto first = s.connections * i / t, last = s.connections * (i + 1) / t;
        workers.push_back(std::make_unique<worker>(s, urls, first, last - first));
    }
    const auto connect_start = std::chrono::steady_clock::now();
    for (auto& w : workers)
        w->start();
    const auto deadline = connect_start + std::chrono::seconds(s.connect_timeout_s);
    while (connected + failed < s.connections && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    const auto connect_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - connect_start).count();

    std::vector<std::jthread> publishers;
    const auto each_rate =
        s.publish_rate == "max" ? s.publish_rate : fmt::format("{}", std::stod(s.publish_rate) / double(s.publishers));
    for (std::size_t i = 0; !s.publish_url.empty() && i < s.publishers; ++i)
        publishers.emplace_back([&](std::stop_token st) {
            try {
                publish_loop(s, each_rate, st);
            } catch (const std::exception& e) {
                fmt::print(stderr, "sse_load: publisher: {}\n", e.what());
            }
        });
    in_window = true;
    const auto window_start = std::chrono::steady_clock::now();
    std::this_thread::sleep_for(std::chrono::seconds(s.duration_s));
    in_window = false;
    const auto window_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - window_start).count();
    for (auto& p : publishers)
        p.request_stop();
    publishers.clear();  // joins
    for (auto& w : workers)
        w->stop();

    bench::histogram all;
    std::uint64_t events = 0;
    for (auto& w : workers) {
        all.merge(w->latency);
        events += w->events;
    }
    fmt::print("{{\"connections\": {}, \"connected\": {}, \"failed\": {}, \"closed_early\": {}, \"published\": {}, \"connect_s\": {:.3f}, "
               "\"duration_s\": {:.3f}, \"events\": {}, \"events_per_s\": {:.0f}, \"latency_us\": {{\"p50\": {:.1f}, "
               "\"p90\": {:.1f}, \"p99\": {:.1f}, \"max\": {:.1f}}}}}\n",
               s.connections, connected.load(), failed.load(), closed_early.load(), published.load(), connect_s, window_s, events,
               double(events) / window_s, all.percentile_us(0.50), all.percentile_us(0.90), all.percentile_us(0.99),
               double(all.max) / 1000.0);
}
