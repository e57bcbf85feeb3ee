// baseline_server: the strongest simple broadcaster we know how to write, without ssepp: the
// honest upper bound for fanout_server (issue 15). Same flags, paths and event bytes (id and
// data) as fanout_server and ideal_server.
//
// - Each event is formatted once and appended to one open buffer per shard; the shard's I/O
//   thread seals that buffer into a batch (every event published since its last pickup) and
//   appends the batch to a ring. Every socket of the shard writes the same batch bytes.
// - A subscriber is a socket and its position in the ring (a batch sequence number and a byte
//   offset): nothing is queued or allocated per subscriber per event, and nothing is locked
//   per subscriber. Delivering a batch is one non-blocking sendmsg (a gather of every batch
//   the socket has not written yet) per socket; only a socket whose kernel buffer is full
//   waits for writability (asio's reactor, async_wait), and it catches up in one gather.
// - Flow control: the publisher (bench::publisher, at --rate max) waits while the slowest
//   subscriber is more than 256 KiB behind, which bounds the ring. A subscriber more than
//   1 MiB behind (as ssepp's default max_queued_bytes, overflow_policy::close) or whose full
//   socket takes nothing for 5 s is closed, so one that stops reading holds nobody back.
// - `--threads N`: sockets are sharded over N io_contexts, one thread each; a shard's sockets,
//   ring and counters are touched only by its thread, except the open buffer (one mutex per
//   shard, taken once per event by the publisher and once per batch by the shard).
#include "bench_front.hpp"

#include <deque>
#include <mutex>

#include <sys/socket.h>
#include <sys/uio.h>

namespace {

using socket_type = asio::basic_stream_socket<asio::ip::tcp, asio::io_context::executor_type>;

constexpr std::string_view head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache, no-transform\r\n"
                                  "X-Accel-Buffering: no\r\n\r\nretry: 5000\n\n";
constexpr std::uint64_t max_lag = std::uint64_t(1) << 20;  // bytes a subscriber may fall behind
constexpr std::uint32_t stall_ticks = 5;  // seconds a full socket may take nothing
constexpr std::size_t max_iov = 128;      // batches per sendmsg

struct subscriber {
    explicit subscriber(socket_type s) : socket(std::move(s)) {}
    socket_type socket;
    std::uint64_t next = 0;  // sequence number of the first batch not wholly written
    std::uint64_t pos = 0;   // bytes of the shard's stream written (batch `next` holds byte `pos`)
    std::uint32_t progress = 0;  // the shard's tick at its last write
    std::uint16_t head_left = static_cast<std::uint16_t>(head.size());
    bool waiting = false;  // an async_wait for writability is pending
    bool dead = false;
};

struct batch {
    std::string bytes;
    std::uint64_t start;   // offset of its first byte in the shard's stream
    std::uint32_t readers;  // live subscribers whose `next` is this batch
};

struct shard {
    asio::io_context io{1};

    // Only on this shard's thread.
    std::vector<std::unique_ptr<subscriber>> subs;
    std::deque<batch> ring;      // references stay valid across push_back/pop_front
    std::uint64_t base = 0;      // sequence number of ring.front()
    std::uint64_t end = 0;       // bytes sealed so far: the stream's length
    std::uint32_t at_end = 0;    // live subscribers that have written everything sealed
    std::uint32_t tick = 0;      // seconds, for the stall check
    std::vector<std::string> spare;  // sealed buffers back from the ring, capacity kept
    asio::steady_timer ticker{io};

    // Read by the publisher's flow control, written only by this shard's thread: how far the
    // slowest live subscriber is behind (to the start of its batch), so the ring's length.
    alignas(64) std::atomic<std::int64_t> slowest{0};

    // The publisher's side.
    alignas(64) std::mutex m;
    std::string open;
    bool pickup_posted = false;
    std::atomic<std::int64_t> open_bytes{0};

    std::uint64_t end_seq() const { return base + ring.size(); }
    std::uint32_t& readers(std::uint64_t seq) { return seq == end_seq() ? at_end : ring[seq - base].readers; }

    /// The publisher's thread (or the front's): appends one formatted event.
    void append(std::string_view bytes)
    {
        bool post = false;
        {
            std::lock_guard lock(m);
            open.append(bytes);
            open_bytes.fetch_add(static_cast<std::int64_t>(bytes.size()), std::memory_order_relaxed);
            post = !std::exchange(pickup_posted, true);
        }
        if (post)
            asio::post(io, [this] { pickup(); });
    }

    void pickup()
    {
        std::string b;
        if (!spare.empty()) {
            b = std::move(spare.back());
            spare.pop_back();
        }
        {
            std::lock_guard lock(m);
            b.swap(open);
            pickup_posted = false;
            open_bytes.fetch_sub(static_cast<std::int64_t>(b.size()), std::memory_order_relaxed);
        }
        if (!b.empty())
            seal(std::move(b));
    }

    void seal(std::string b)
    {
        const auto size = b.size();
        ring.push_back({std::move(b), end, std::exchange(at_end, 0)});
        end += size;
        for (std::size_t i = 0; i < subs.size();) {
            auto& s = *subs[i];
            if (s.dead && !s.waiting) {  // no handler refers to it any more
                subs[i] = std::move(subs.back());
                subs.pop_back();
                continue;
            }
            if (!s.dead) {
                if (!s.waiting)
                    flush(s);
                else if (end - s.pos > max_lag)
                    kill(s);
            }
            ++i;
        }
        trim();
    }

    // Frees the batches every live subscriber has written.
    void trim()
    {
        while (!ring.empty() && ring.front().readers == 0) {
            auto& f = ring.front().bytes;
            if (spare.size() < 8 && f.capacity() <= (std::size_t(1) << 20)) {
                f.clear();
                spare.push_back(std::move(f));
            }
            ring.pop_front();
            ++base;
        }
        slowest.store(ring.empty() ? 0 : static_cast<std::int64_t>(end - ring.front().start), std::memory_order_relaxed);
    }

    void kill(subscriber& s)
    {
        if (s.dead)
            return;
        s.dead = true;
        --readers(s.next);
        std::error_code ec;
        s.socket.close(ec);  // cancels a pending wait; its handler sees operation_aborted
    }

    /// Writes what the subscriber has not written yet, in gathers of up to max_iov batches,
    /// until it is caught up or its socket would block (then waits for writability).
    void flush(subscriber& s)
    {
        const auto first = s.next;
        for (;;) {
            std::array<iovec, max_iov + 1> iov;
            std::size_t k = 0, total = 0;
            if (s.head_left) {
                iov[k++] = {const_cast<char*>(head.data() + head.size() - s.head_left), s.head_left};
                total += s.head_left;
            }
            for (auto seq = s.next; seq < end_seq() && k < iov.size(); ++seq) {
                const auto& b = ring[seq - base];
                const auto skip = seq == s.next ? s.pos - b.start : 0;
                iov[k++] = {const_cast<char*>(b.bytes.data() + skip), b.bytes.size() - skip};
                total += b.bytes.size() - skip;
            }
            if (k == 0)
                break;
            msghdr msg{};
            msg.msg_iov = iov.data();
            msg.msg_iovlen = k;
            const auto n = ::sendmsg(s.socket.native_handle(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    wait(s);
                else
                    kill(s);
                break;
            }
            s.progress = tick;
            auto left = static_cast<std::size_t>(n);
            const auto from_head = std::min<std::size_t>(left, s.head_left);
            s.head_left = static_cast<std::uint16_t>(s.head_left - from_head);
            s.pos += left - from_head;
            while (s.next < end_seq() && s.pos >= ring[s.next - base].start + ring[s.next - base].bytes.size()) {
                --readers(s.next);
                ++readers(++s.next);
            }
            if (static_cast<std::size_t>(n) < total) {
                wait(s);  // the kernel's buffer is full
                break;
            }
        }
        if (s.next != first && first == base)
            trim();
    }

    void wait(subscriber& s)
    {
        s.waiting = true;
        s.socket.async_wait(asio::socket_base::wait_write, [this, &s](std::error_code ec) {
            s.waiting = false;
            if (s.dead)
                return;
            if (ec)
                return kill(s);
            flush(s);
        });
    }

    void attach(socket_type socket)
    {
        auto& s = *subs.emplace_back(std::make_unique<subscriber>(std::move(socket)));
        s.next = end_seq();
        s.pos = end;
        s.progress = tick;
        ++at_end;
        flush(s);  // the head
    }

    // Once a second: closes subscribers whose full socket took nothing for stall_ticks (a
    // client that stopped reading would otherwise hold a --rate max publisher back forever).
    void start_ticker()
    {
        ticker.expires_after(std::chrono::seconds(1));
        ticker.async_wait([this](std::error_code ec) {
            if (ec)
                return;
            ++tick;
            for (auto& s : subs)
                if (!s->dead && s->waiting && tick - s->progress >= stall_ticks)
                    kill(*s);
            trim();
            start_ticker();
        });
    }
};

} // namespace

int main(int argc, char** argv)
{
    bench::options o;
    o.parse("baseline_server", argc, argv);
    const auto n = static_cast<std::size_t>(std::max(1, o.threads));
    std::vector<std::unique_ptr<shard>> shards;
    for (std::size_t i = 0; i < n; ++i) {
        shards.push_back(std::make_unique<shard>());
        shards.back()->start_ticker();
    }
    std::atomic<std::uint64_t> next_shard{0};

    // Ids must reach every shard in order even when the front's POST /publish and the
    // publisher thread publish at once: one lock per event (not per subscriber).
    std::mutex publishing;
    std::uint64_t next_id = 0;
    fmt::memory_buffer formatted;
    const auto publish = [&](std::string data) {
        std::lock_guard lock(publishing);
        formatted.clear();
        fmt::format_to(std::back_inserter(formatted), "id: {}\ndata: {}\n\n", ++next_id, data);
        for (auto& sh : shards)
            sh->append({formatted.data(), formatted.size()});
    };

    bench::front front(
        shards[0]->io, o,
        [&](asio::ip::tcp::socket s) {
            auto& sh = *shards[next_shard++ % n];
            const auto fd = s.release();
            asio::post(sh.io, [&sh, fd] { sh.attach(socket_type(sh.io.get_executor(), asio::ip::tcp::v4(), fd)); });
        },
        publish);
    fmt::print("baseline_server listening on http://{}:{}/events\n", o.host, front.port());
    std::fflush(stdout);

    // The publisher waits while the slowest subscriber of any shard is more than its high
    // water behind (fanout_server and ideal_server pass the average instead: a shared ring has
    // no per-subscriber queue, and its length is set by the slowest).
    bench::publisher publisher(o, publish, [&] {
        std::int64_t worst = 0;
        for (auto& sh : shards)
            worst = std::max(worst, sh->slowest.load(std::memory_order_relaxed) + sh->open_bytes.load(std::memory_order_relaxed));
        return static_cast<std::size_t>(worst);
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
