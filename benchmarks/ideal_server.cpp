// ideal_server: ssepp's design without the library: each event is formatted once (the same
// bytes as ssepp's: id and data) and the shared bytes are queued to every socket, as a frame
// per event; each socket has at most one gather write in flight. Not an upper bound (issue
// 15): baseline_server, which shares batches of events instead, delivers several times more
// at saturation; run.sh runs this one only with --ideal. Sockets are sharded over one
// io_context per thread, so no socket is ever touched by two threads and nothing is locked:
// no registry, no history, no timers, no peer watch. Same flags and paths as fanout_server.
#include "bench_front.hpp"

#include <deque>
#include <list>

namespace {

using frame = std::shared_ptr<const std::string>;

struct subscriber {
    explicit subscriber(asio::ip::tcp::socket s) : socket(std::move(s)) {}
    asio::ip::tcp::socket socket;
    std::vector<frame> pending, writing;
    std::vector<asio::const_buffer> bufs;
    bool busy = false;
    bool dead = false;
};

// Unwritten bytes over all subscribers, and their number: the publisher's flow control.
// `unposted` counts events published but not yet queued by every shard.
std::atomic<std::int64_t> outstanding{0};
std::atomic<std::int64_t> unposted{0};
std::atomic<std::int64_t> subscribers{0};

struct shard {
    asio::io_context io{1};
    std::list<subscriber> subs;  // stable addresses; touched only on this shard's thread

    void write(subscriber& s)
    {
        s.writing.swap(s.pending);
        s.pending.clear();
        s.bufs.clear();
        for (const auto& f : s.writing)
            s.bufs.emplace_back(f->data(), f->size());
        s.busy = true;
        asio::async_write(s.socket, s.bufs, [this, &s](std::error_code ec, std::size_t n) {
            s.busy = false;
            outstanding -= static_cast<std::int64_t>(n);
            s.writing.clear();
            if (ec) {
                s.dead = true;
                for (const auto& f : s.pending)
                    outstanding -= static_cast<std::int64_t>(f->size());
                s.pending.clear();
                --subscribers;
                return;
            }
            if (!s.pending.empty())
                write(s);
        });
    }

    void deliver(const frame& f)
    {
        unposted -= static_cast<std::int64_t>(f->size());
        std::int64_t queued = 0;  // one update of the shared counter per event, not per socket
        for (auto& s : subs) {
            if (s.dead)
                continue;
            s.pending.push_back(f);
            queued += static_cast<std::int64_t>(f->size());
            if (!s.busy)
                write(s);
        }
        // The writes started above complete on this thread, after this returns.
        outstanding += queued;
    }
};

} // namespace

int main(int argc, char** argv)
{
    bench::options o;
    o.parse("ideal_server", argc, argv);
    const auto n = static_cast<std::size_t>(std::max(1, o.threads));
    std::vector<std::unique_ptr<shard>> shards;
    for (std::size_t i = 0; i < n; ++i)
        shards.push_back(std::make_unique<shard>());
    std::atomic<std::uint64_t> next_id{0}, next_shard{0};

    const auto publish = [&](std::string data) {
        const auto f = std::make_shared<const std::string>(fmt::format("id: {}\ndata: {}\n\n", ++next_id, data));
        unposted += static_cast<std::int64_t>(f->size() * shards.size());
        for (auto& sh : shards)
            asio::post(sh->io, [s = sh.get(), f] { s->deliver(f); });
    };

    bench::front front(
        shards[0]->io, o,
        [&](asio::ip::tcp::socket s) {
            auto& sh = *shards[next_shard++ % n];
            const auto fd = s.release();
            asio::post(sh.io, [&sh, fd] {
                auto& sub = sh.subs.emplace_back(asio::ip::tcp::socket(sh.io, asio::ip::tcp::v4(), fd));
                static const auto head = std::make_shared<const std::string>(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache, no-transform\r\n"
                    "X-Accel-Buffering: no\r\n\r\nretry: 5000\n\n");
                sub.pending.push_back(head);
                outstanding += static_cast<std::int64_t>(head->size());
                ++subscribers;
                sh.write(sub);
            });
        },
        publish);
    fmt::print("ideal_server listening on http://{}:{}/events\n", o.host, front.port());
    std::fflush(stdout);

    bench::publisher publisher(o, publish, [&] {
        return static_cast<std::size_t>(std::max<std::int64_t>(0, outstanding) / std::max<std::int64_t>(1, subscribers)
                                        + std::max<std::int64_t>(0, unposted) / std::int64_t(n));
    });

    asio::signal_set signals(shards[0]->io, SIGINT, SIGTERM);
    signals.async_wait([&](std::error_code, int) {
        for (auto& sh : shards)
            sh->io.stop();
    });
    std::vector<std::thread> threads;
    for (std::size_t i = 1; i < n; ++i)
        threads.emplace_back([&, i] {
            auto guard = asio::make_work_guard(shards[i]->io);
            shards[i]->io.run();
        });
    shards[0]->io.run();
    for (auto& t : threads)
        t.join();
}
