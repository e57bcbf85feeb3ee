// Test that the header is self-contained.
#include <ssepp/emitter.hpp>

#include "catch.hpp"
#include "support/loopback.hpp"

#include "support/asio.hpp"

#include <malloc.h>
#include <poll.h>

#include <algorithm>
#include <atomic>
#include <future>
#include <map>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using tcp = asio::ip::tcp;

namespace {

/// How an sse_server makes its emitters.
struct config {
    ssepp::emitter_options options{};
    int threads = 1;
    bool autostart = true;
    /// Shrinks the accepted socket's send buffer so a client that stops reading backs the
    /// writes up after a few KiB instead of megabytes.
    bool small_send_buffer = false;
    /// Runs on the I/O thread before start(): queue events, add handlers...
    std::function<void(ssepp::emitter&)> before_start{};
};

/// One accepted connection: its emitter, its on_close calls, its request head.
struct conn {
    std::shared_ptr<ssepp::emitter> em;
    test::close_log closes;
    std::string head;
};

/// A server whose every connection gets an emitter (started at once unless `autostart` is
/// false), handed to the test in accept order.
class sse_server {
public:
    explicit sse_server(config cfg = {}) : srv_(cfg.threads)
    {
        srv_.serve([this, cfg](tcp::socket s, std::string head) {
            if (cfg.small_send_buffer)
                s.set_option(asio::socket_base::send_buffer_size(4096));
            conn c;
            c.em = ssepp::make_emitter(ssepp::http_body(std::move(s)), cfg.options);
            c.em->on_close(c.closes.handler());
            c.head = std::move(head);
            if (cfg.before_start)
                cfg.before_start(*c.em);
            if (cfg.autostart)
                c.em->start();
            conns_.push(std::move(c));
        });
    }

    conn at(std::size_t i) { return conns_.at(i); }
    asio::ip::port_type port() const { return srv_.port(); }
    asio::io_context& io() { return srv_.io(); }

private:
    test::server srv_;
    test::collector<conn> conns_;  // after srv_: the emitters go before the io_context does
};

using test::quiet;

/// The stream of `c` ended once, for `reason`, and stays ended: nothing more is called, a
/// handler added now is told the same, sends are refused.
void check_closed_once(sse_server& srv, conn& c, ssepp::close_reason reason)
{
    REQUIRE(c.closes.wait(1, 5s));
    // Twice through the (single) I/O thread: whatever was queued behind the close has run.
    REQUIRE(test::run_on(srv.io().get_executor(), [] {}));
    REQUIRE(test::run_on(srv.io().get_executor(), [] {}));
    CHECK(c.closes.count() == 1);
    CHECK(c.closes.reason() == reason);
    CHECK_FALSE(c.em->is_open());
    CHECK(c.em->queued_bytes() == 0);
    test::close_log late;
    c.em->on_close(late.handler());
    REQUIRE(late.wait(1, 5s));
    CHECK(late.reason() == reason);
    CHECK(test::send_ec(*c.em, {.data = "after the end"}) == ssepp::errc::closed);
    CHECK(test::send_ec(*c.em, ssepp::make_raw_frame("data: raw\n\n")) == ssepp::errc::closed);
    c.em->complete();
    c.em->abort();
    c.em->start();
    REQUIRE(test::run_on(srv.io().get_executor(), [] {}));
    CHECK(c.closes.count() == 1);
    CHECK(late.count() == 1);
}

std::string payload(std::size_t n, char fill = 'x') { return std::string(n, fill); }

} // namespace

TEST_CASE("emitter writes head, retry hint and events to a real socket", "[emitter]")
{
    sse_server srv({.before_start = [](ssepp::emitter& em) { em.send({.event = "a", .data = "1"}); }});
    test::client c(srv.port());
    auto s = srv.at(0);
    CHECK(s.head.starts_with("GET /events HTTP/1.1\r\n"));
    CHECK(test::send_ec(*s.em, {.id = "7", .data = "two\nlines"}).value() == 0);
    s.em->complete();
    REQUIRE(c.read_to_eof());
    CHECK(c.head == "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache, no-transform\r\n"
                    "X-Accel-Buffering: no\r\n\r\n");
    CHECK(c.body == "retry: 5000\n\nevent: a\ndata: 1\n\nid: 7\ndata: two\ndata: lines\n\n");
    REQUIRE(c.events.size() == 2);
    CHECK(c.events[0] == test::received{"a", "1", ""});
    CHECK(c.events[1] == test::received{"message", "two\nlines", "7"});
    CHECK(c.retries == std::vector{5000ms});
    CHECK(s.em->bytes_written() == c.raw.size() - c.head.size());
    check_closed_once(srv, s, ssepp::close_reason::completed);
}

TEST_CASE("the retry hint is configurable and can be left out", "[emitter]")
{
    auto custom = quiet();
    custom.retry_hint = 1234ms;
    auto none = quiet();
    none.retry_hint = std::nullopt;
    for (const auto& [options, expected] :
         {std::pair{custom, std::string("retry: 1234\n\ndata: x\n\n")}, std::pair{none, std::string("data: x\n\n")}}) {
        sse_server srv({.options = options});
        test::client c(srv.port());
        auto s = srv.at(0);
        test::complete_ec(*s.em, {.data = "x"});
        REQUIRE(c.read_to_eof());
        CHECK(c.body == expected);
    }
    auto negative = quiet();
    negative.retry_hint = -1ms;
    asio::io_context io;
    CHECK_THROWS_AS(ssepp::make_emitter(ssepp::http_body(tcp::socket(io)), negative), std::invalid_argument);
}

TEST_CASE("an invalid event is refused and leaves no trace on the wire", "[emitter]")
{
    sse_server srv({.options = quiet()});
    test::client c(srv.port());
    auto s = srv.at(0);
    REQUIRE(c.read_until([&] { return c.retries.size() == 1; }));
    // The client has the bytes; the server may not have seen its write complete yet.
    REQUIRE(test::eventually([&] { return s.em->queued_bytes() == 0; }));
    const auto before = s.em->queued_bytes();
    CHECK(test::send_ec(*s.em, {.id = "a\nb", .data = "x"}) == ssepp::errc::invalid_id);
    CHECK(test::send_ec(*s.em, {.event = "a\rb", .data = "x"}) == ssepp::errc::invalid_event_name);
    CHECK(test::send_ec(*s.em, {.retry = -5ms}) == ssepp::errc::invalid_retry);
    CHECK(test::send_ec(*s.em, ssepp::event{}) == ssepp::errc::empty_event);
    CHECK(test::send_ec(*s.em, ssepp::shared_frame{}).value() == 0);  // nothing to write: nothing queued
    CHECK(test::send_ec(*s.em, ssepp::make_raw_frame("")).value() == 0);
    CHECK(s.em->queued_bytes() == before);
    CHECK(s.em->is_open());
    test::complete_ec(*s.em, {.data = "ok"});
    REQUIRE(c.read_to_eof());
    CHECK(c.body == "retry: 5000\n\ndata: ok\n\n");
    check_closed_once(srv, s, ssepp::close_reason::completed);
}

TEST_CASE("an event larger than the queue bound is refused, the stream stays open", "[emitter]")
{
    auto options = quiet();
    options.max_queued_bytes = 1024;
    sse_server srv({.options = options});
    test::client c(srv.port());
    auto s = srv.at(0);
    CHECK(test::send_ec(*s.em, {.data = payload(2000)}) == ssepp::errc::event_too_large);
    CHECK(s.em->is_open());
    CHECK(s.em->queued_bytes() <= options.max_queued_bytes);
    test::complete_ec(*s.em, {.data = "after"});
    REQUIRE(c.read_to_eof());
    REQUIRE(c.events.size() == 1);
    CHECK(c.events[0].data == "after");
    check_closed_once(srv, s, ssepp::close_reason::completed);
}

TEST_CASE("send() returns at once from another thread while the client reads nothing", "[emitter]")
{
    auto options = quiet();
    options.max_queued_bytes = 64 << 20;
    sse_server srv({.options = options, .small_send_buffer = true});
    test::client c(srv.port(), "/events", "", 4096);  // and it reads nothing for a while
    auto s = srv.at(0);
    constexpr int n = 2000;
    const auto frame = payload(4096);
    std::atomic<int> sent{0};
    std::atomic<bool> all_ok{true};
    std::thread sender([&] {
        for (int i = 0; i < n; ++i) {
            if (test::send_ec(*s.em, {.data = frame}))
                all_ok = false;
            ++sent;
        }
    });
    // 8 MiB cannot fit in the socket buffers: a send() that waited for the wire never returns.
    const bool finished = test::eventually([&] { return sent == n; }, 5s);
    CHECK(finished);
    CHECK(all_ok);
    CHECK(s.em->queued_bytes() > (4u << 20));  // most of it is still queued: the client stalls
    s.em->abort();  // (also unblocks a send() that waited on the wire, so the join is bounded)
    sender.join();
    check_closed_once(srv, s, ssepp::close_reason::aborted);
}

TEST_CASE("events queued before start() go out in order, coalesced, one write at a time", "[emitter]")
{
    auto stats = std::make_shared<test::write_stats>();
    test::server srv;
    test::collector<std::shared_ptr<ssepp::basic_emitter<ssepp::http_body<test::counting_transport>>>> ems;
    srv.serve([&](tcp::socket s, std::string) {
        auto em = ssepp::make_emitter(ssepp::http_body(test::counting_transport(std::move(s), stats)), quiet());
        for (int i = 0; i < 1000; ++i)
            test::send_ec(*em, {.data = std::to_string(i)});
        em->start();
        em->complete();
        ems.push(em);
    });
    test::client c(srv.port());
    REQUIRE(c.read_to_eof());
    REQUIRE(c.events.size() == 1000);
    for (int i = 0; i < 1000; ++i)
        REQUIRE(c.events[static_cast<std::size_t>(i)].data == std::to_string(i));
    // 1002 buffers (head, retry hint, 1000 frames) at most 64 to a write: 16 writes, plus a
    // few if the kernel took a batch in parts; one write per event would be 1000.
    CHECK(stats->calls >= 16);
    CHECK(stats->calls <= 40);
    CHECK(stats->max_in_flight == 1);
    CHECK(stats->bytes == c.raw.size());
    CHECK(ems.at(0)->bytes_written() == c.raw.size() - c.head.size());
}

TEST_CASE("an idle stream gets heartbeat comments, none when disabled", "[emitter]")
{
    auto beating = quiet();
    beating.heartbeat = 50ms;
    sse_server srv({.options = beating});
    test::client c(srv.port());
    const auto t0 = test::clock::now();
    REQUIRE(c.read_until([&] { return c.comments.size() >= 3; }, 3s));
    CHECK(test::clock::now() - t0 >= 100ms);  // paced, not a burst
    CHECK(std::all_of(c.comments.begin(), c.comments.end(), [](auto& s) { return s.empty(); }));
    CHECK(c.body.starts_with("retry: 5000\n\n:\n\n"));
    CHECK(c.events.empty());
    // Events still flow between heartbeats.
    auto s = srv.at(0);
    test::send_ec(*s.em, {.data = "between"});
    REQUIRE(c.read_events(1));
    CHECK(c.events[0].data == "between");

    sse_server silent({.options = quiet()});
    test::client d(silent.port());
    REQUIRE(d.read_until([&] { return d.retries.size() == 1; }));
    CHECK_FALSE(d.read_until([&] { return !d.comments.empty(); }, 300ms));
}

TEST_CASE("the stream lifetime ends it with close_reason::timeout", "[emitter]")
{
    auto options = quiet();
    options.lifetime = 100ms;
    sse_server srv({.options = options});
    const auto t0 = test::clock::now();
    test::client c(srv.port());
    auto s = srv.at(0);
    REQUIRE(c.read_to_eof(3s));
    CHECK(test::clock::now() - t0 >= 100ms);
    check_closed_once(srv, s, ssepp::close_reason::timeout);
    CHECK(s.closes.at(0).ec == ssepp::errc::timeout);
}

TEST_CASE("a write making no progress ends the stream (write-stall timeout)", "[emitter]")
{
    auto options = quiet();
    options.write_timeout = 150ms;
    options.max_queued_bytes = 64 << 20;
    sse_server srv({.options = options, .small_send_buffer = true});
    test::client c(srv.port(), "/events", "", 4096);  // and it reads nothing for a while
    auto s = srv.at(0);
    const auto frame = payload(16384);
    std::size_t most = 0;
    for (int i = 0; i < 256 && most < (1u << 20); ++i) {
        if (test::send_ec(*s.em, {.data = frame}))
            break;  // closed already: the stall outlasted the timeout while we were queueing
        most = std::max(most, s.em->queued_bytes());
    }
    CHECK(most > (256u << 10));  // the writes really backed up
    check_closed_once(srv, s, ssepp::close_reason::timeout);
    CHECK(s.closes.at(0).ec == ssepp::errc::timeout);
}

TEST_CASE("a steady reader is not timed out by the write-stall timeout", "[emitter]")
{
    auto options = quiet();
    options.write_timeout = 150ms;
    sse_server srv({.options = options});
    test::client c(srv.port());
    auto s = srv.at(0);
    // Each write completes, so no single write stalls for 150 ms even though the stream lives
    // for several times that.
    const auto t0 = test::clock::now();
    int i = 0;
    while (test::clock::now() - t0 < 500ms && i < 10000) {
        REQUIRE(test::send_ec(*s.em, {.data = std::to_string(i)}).value() == 0);
        ++i;
        REQUIRE(c.read_events(static_cast<std::size_t>(i)));
    }
    CHECK(s.em->is_open());
    CHECK(s.closes.count() == 0);
}

TEST_CASE("complete() flushes everything queued then closes, complete(event) sends it last", "[emitter]")
{
    sse_server srv({.options = quiet()});
    test::client c(srv.port());
    auto s = srv.at(0);
    for (int i = 0; i < 200; ++i)
        test::send_ec(*s.em, {.id = std::to_string(i), .data = payload(1000)});
    CHECK(test::complete_ec(*s.em, {.event = "end", .data = "bye"}).value() == 0);
    CHECK_FALSE(s.em->is_open());
    CHECK(test::send_ec(*s.em, {.data = "too late"}) == ssepp::errc::closed);
    REQUIRE(c.read_to_eof());
    REQUIRE(c.events.size() == 201);
    for (std::size_t i = 0; i < 200; ++i)
        CHECK(c.events[i].id == std::to_string(i));
    CHECK(c.events.back() == test::received{"end", "bye", "199"});
    CHECK(c.body.ends_with("event: end\ndata: bye\n\n"));
    check_closed_once(srv, s, ssepp::close_reason::completed);
}

TEST_CASE("complete() before start() writes the head and queue, then closes", "[emitter]")
{
    sse_server srv({.options = quiet(), .autostart = false, .before_start = [](ssepp::emitter& em) {
                        em.send({.data = "early"});
                        em.complete();
                    }});
    test::client c(srv.port());
    auto s = srv.at(0);
    CHECK(s.closes.count() == 0);  // nothing happens before start()
    s.em->start();
    REQUIRE(c.read_to_eof());
    CHECK(c.head.starts_with("HTTP/1.1 200 OK\r\n"));
    REQUIRE(c.events.size() == 1);
    CHECK(c.events[0].data == "early");
    check_closed_once(srv, s, ssepp::close_reason::completed);
}

TEST_CASE("abort() ends the stream at once, dropping the queue", "[emitter]")
{
    auto options = quiet();
    options.max_queued_bytes = 64 << 20;
    sse_server srv({.options = options, .small_send_buffer = true});
    test::client c(srv.port(), "/events", "", 4096);  // and it reads nothing for a while
    auto s = srv.at(0);
    for (int i = 0; i < 200; ++i)
        test::send_ec(*s.em, {.data = payload(16384)});
    s.em->abort();
    CHECK_FALSE(s.em->is_open());
    check_closed_once(srv, s, ssepp::close_reason::aborted);
    REQUIRE(c.read_to_eof());
    CHECK(c.raw.size() < 200u * 16384);
}

TEST_CASE("a client that closes or resets is noticed without any send", "[emitter]")
{
    sse_server srv({.options = quiet()});  // no heartbeat, no write timeout: only the peer watch
    test::client fin(srv.port());
    test::client rst(srv.port());
    REQUIRE(fin.read_until([&] { return fin.retries.size() == 1; }));
    REQUIRE(rst.read_until([&] { return rst.retries.size() == 1; }));
    auto a = srv.at(0);
    auto b = srv.at(1);
    fin.close();
    rst.reset();
    check_closed_once(srv, a, ssepp::close_reason::client_gone);
    check_closed_once(srv, b, ssepp::close_reason::client_gone);
}

TEST_CASE("bytes a client sends after its request are discarded, not mistaken for a close", "[emitter]")
{
    sse_server srv({.options = quiet()});
    test::client c(srv.port());
    REQUIRE(c.read_until([&] { return c.retries.size() == 1; }));
    auto s = srv.at(0);
    const std::string junk(100000, 'j');
    asio::write(c.socket(), asio::buffer(junk));
    // Once the server has drained it all, the watch has run several times.
    test::send_ec(*s.em, {.data = "still here"});
    REQUIRE(c.read_events(1));
    CHECK(c.events[0].data == "still here");
    CHECK(s.em->is_open());
    CHECK(s.closes.count() == 0);
    s.em->complete();
    REQUIRE(c.read_to_eof());
    check_closed_once(srv, s, ssepp::close_reason::completed);
}

TEST_CASE("slow consumer, overflow_policy::close: closes with overflow, memory bounded", "[emitter]")
{
    auto options = quiet();
    options.max_queued_bytes = 64 << 10;
    sse_server srv({.options = options, .small_send_buffer = true});
    test::client c(srv.port(), "/events", "", 4096);  // and it reads nothing for a while
    auto s = srv.at(0);
    ssepp::error_code last;
    std::size_t most = 0;
    int sends = 0;
    for (; sends < 20000 && !last; ++sends) {
        last = test::send_ec(*s.em, {.data = payload(1000)});
        if (!last)
            most = std::max(most, s.em->queued_bytes());
    }
    CHECK(last == ssepp::errc::overflow);
    CHECK(most <= options.max_queued_bytes);
    CHECK(sends < 20000);
    check_closed_once(srv, s, ssepp::close_reason::overflow);
    CHECK(s.closes.at(0).ec == ssepp::errc::overflow);
}

TEST_CASE("slow consumer, overflow_policy::drop_oldest: stays open, bounded, newest delivered", "[emitter]")
{
    auto options = quiet();
    options.max_queued_bytes = 64 << 10;
    options.overflow = ssepp::overflow_policy::drop_oldest;
    sse_server srv({.options = options, .small_send_buffer = true});
    test::client c(srv.port(), "/events", "", 4096);  // and it reads nothing for a while
    auto s = srv.at(0);
    constexpr int n = 3000;
    const auto filler = payload(1000);
    std::size_t most = 0;
    std::size_t biggest_frame = 0;
    for (int i = 0; i < n; ++i) {
        const ssepp::event e{.id = std::to_string(i), .data = filler};
        biggest_frame = std::max(biggest_frame, ssepp::format(e).size());
        REQUIRE(test::send_ec(*s.em, e).value() == 0);
        most = std::max(most, s.em->queued_bytes());
    }
    CHECK(s.em->is_open());
    CHECK(s.em->dropped() > 0);
    // The bound, passed by at most the newest event while a write is stuck.
    CHECK(most <= options.max_queued_bytes + biggest_frame);
    // The client reads again: what was not dropped arrives, in order, ending with the newest.
    s.em->complete();
    REQUIRE(c.read_to_eof());
    REQUIRE(!c.events.empty());
    CHECK(c.events.back().id == std::to_string(n - 1));
    bool increasing = true;
    for (std::size_t i = 1; i < c.events.size(); ++i)
        increasing = increasing && std::stoi(c.events[i - 1].id) < std::stoi(c.events[i].id);
    CHECK(increasing);
    // Every event was either delivered or counted as dropped: nothing else is lost.
    CHECK(c.events.size() + s.em->dropped() == n);
    check_closed_once(srv, s, ssepp::close_reason::completed);
}

TEST_CASE("one slow client never slows or blocks the others", "[emitter]")
{
    auto options = quiet();
    options.max_queued_bytes = 64 << 20;  // the slow one stays open, its queue growing
    sse_server srv({.options = options, .small_send_buffer = true});  // one I/O thread for both
    test::client slow(srv.port(), "/events", "", 4096);  // reads nothing
    auto a = srv.at(0);
    test::client fast(srv.port());
    auto b = srv.at(1);
    constexpr int n = 2000;
    const auto filler = payload(1000);
    std::thread publisher([&] {
        for (int i = 0; i < n; ++i) {
            test::send_ec(*a.em, {.id = std::to_string(i), .data = filler});
            test::send_ec(*b.em, {.id = std::to_string(i), .data = filler});
        }
    });
    const bool all = fast.read_events(n, 5s);
    publisher.join();
    REQUIRE(all);
    for (std::size_t i = 0; i < n; ++i)
        REQUIRE(fast.events[i].id == std::to_string(i));
    CHECK(a.em->is_open());
    CHECK(a.em->queued_bytes() > (1u << 20));  // the slow one really is stuck
    a.em->abort();
    b.em->abort();
    check_closed_once(srv, a, ssepp::close_reason::aborted);
    check_closed_once(srv, b, ssepp::close_reason::aborted);
}

TEST_CASE("a client vanishing mid-write causes no use-after-free", "[emitter]")
{
    // Run under AddressSanitizer: large writes are in flight and sends keep coming from another
    // thread when the client resets the connection.
    for (int round = 0; round < 12; ++round) {
        auto options = quiet();
        options.max_queued_bytes = 64 << 20;
        sse_server srv({.options = options, .threads = 1 + round % 2});
        test::client c(srv.port());
        auto s = srv.at(0);
        std::atomic<bool> stop{false};
        std::thread sender([&] {
            const auto big = payload(256 << 10);
            for (int i = 0; i < 64 && !stop; ++i)
                if (test::send_ec(*s.em, {.data = big}) == ssepp::errc::closed)
                    break;
        });
        // Read a varying amount first, so the reset lands at different points of the writes.
        const auto want = static_cast<std::size_t>(round) * (96 << 10);
        const bool read = c.read_until([&] { return c.raw.size() >= want; });
        c.reset();
        const bool closed = s.closes.wait(1, 5s);
        stop = true;
        sender.join();
        REQUIRE(read);
        REQUIRE(closed);
        CHECK(s.closes.count() == 1);
        CHECK(s.closes.reason() == ssepp::close_reason::client_gone);
        CHECK(test::send_ec(*s.em, {.data = "x"}) == ssepp::errc::closed);
    }
}

TEST_CASE("two I/O threads, four senders: every event exactly once, in per-thread order", "[emitter]")
{
    sse_server srv({.options = quiet(), .threads = 2});
    test::client c(srv.port());
    auto s = srv.at(0);
    constexpr int senders = 4, per = 500;
    std::vector<std::thread> threads;
    for (int t = 0; t < senders; ++t)
        threads.emplace_back([&, t] {
            for (int i = 0; i < per; ++i)
                test::send_ec(*s.em, {.data = std::to_string(t) + ":" + std::to_string(i)});
        });
    const bool all = c.read_events(senders * per, 10s);
    for (auto& t : threads)
        t.join();
    REQUIRE(all);
    std::map<int, int> next;
    for (const auto& e : c.events) {
        const auto colon = e.data.find(':');
        const int t = std::stoi(e.data.substr(0, colon));
        const int i = std::stoi(e.data.substr(colon + 1));
        REQUIRE(i == next[t]);  // exactly once and in order: each thread's next expected one
        ++next[t];
    }
    for (int t = 0; t < senders; ++t)
        CHECK(next[t] == per);
    s.em->complete();
    REQUIRE(c.read_to_eof());
    CHECK(c.events.size() == senders * per);
    REQUIRE(s.closes.wait(1, 5s));
    CHECK(s.closes.reason() == ssepp::close_reason::completed);
}

TEST_CASE("two I/O threads, four senders: at most one write in flight", "[emitter]")
{
    auto stats = std::make_shared<test::write_stats>();
    test::server srv(2);
    test::collector<std::shared_ptr<ssepp::basic_emitter<ssepp::http_body<test::counting_transport>>>> ems;
    srv.serve([&](tcp::socket s, std::string) {
        auto em = ssepp::make_emitter(ssepp::http_body(test::counting_transport(std::move(s), stats)), quiet());
        em->start();
        ems.push(em);
    });
    test::client c(srv.port());
    auto em = ems.at(0);
    constexpr int senders = 4, per = 500;
    std::vector<std::thread> threads;
    for (int t = 0; t < senders; ++t)
        threads.emplace_back([&] {
            for (int i = 0; i < per; ++i)
                test::send_ec(*em, {.data = payload(100)});
        });
    for (auto& t : threads)
        t.join();
    em->complete();
    REQUIRE(c.read_to_eof());
    CHECK(c.events.size() == senders * per);
    CHECK(stats->max_in_flight == 1);
    CHECK(stats->bytes == c.raw.size());
}

TEST_CASE("idle emitters share one sweeper, which empties as they close, and run() then returns", "[emitter]")
{
    using local = asio::local::stream_protocol::socket;
    asio::io_context io;
    asio::io_context peers_io;  // never run: the peers are read synchronously
    constexpr std::size_t n = 200;
    std::vector<local> peers;
    std::vector<std::shared_ptr<ssepp::basic_emitter<ssepp::http_body<local>>>> ems;
    std::vector<test::close_log> logs(n);
    auto options = quiet();
    options.heartbeat = 50ms;
    for (std::size_t i = 0; i < n; ++i) {
        local mine(io);
        peers.emplace_back(peers_io);
        asio::local::connect_pair(mine, peers.back());
        ems.push_back(ssepp::make_emitter(ssepp::http_body(std::move(mine)), options));
        ems.back()->on_close(logs[i].handler());
        ems.back()->start();
    }
    auto& sweeper = asio::use_service<ssepp::detail::stream_service>(io);
    CHECK(sweeper.swept() == n);
    test::run_in_background ran(io);  // stopped at the end of the scope, whatever fails

    // Heartbeats reach the first and the last: the one shared timer drives them all.
    const auto read_heartbeat = [](local& p) {
        std::string got;
        const auto deadline = test::clock::now() + 3s;
        while (got.find(":\n\n") == std::string::npos && test::clock::now() < deadline) {
            pollfd fd{p.native_handle(), POLLIN, 0};
            if (::poll(&fd, 1, 100) <= 0)
                continue;
            char buf[4096];
            ssepp::error_code ec;
            const auto k = p.read_some(asio::buffer(buf), ec);
            if (ec)
                break;
            got.append(buf, k);
        }
        return got.find(":\n\n") != std::string::npos;
    };
    CHECK(read_heartbeat(peers.front()));
    CHECK(read_heartbeat(peers.back()));
    CHECK(sweeper.swept() == n);

    // Half close from this side, half because the peer went away.
    for (std::size_t i = 0; i < n; i += 2)
        ems[i]->abort();
    for (std::size_t i = 1; i < n; i += 2)
        peers[i].close();
    CHECK(test::eventually([&] { return sweeper.swept() == 0; }, 5s));
    // Nothing is left to run: no per-connection timer, and the shared one stops.
    REQUIRE(ran.wait_for(3s) == std::future_status::ready);
    for (std::size_t i = 0; i < n; ++i) {
        REQUIRE(logs[i].count() == 1);
        CHECK(logs[i].reason()
              == (i % 2 == 0 ? ssepp::close_reason::aborted : ssepp::close_reason::client_gone));
    }
}

namespace {

/// A transport driven by hand: each async_write_some is held until the test completes it,
/// with the error and byte count it chooses. Run its io_context with poll() on the test thread.
// quiet(), and nothing but the events: no head, no retry hint (the manual transport's tests).
ssepp::emitter_options bare_options()
{
    auto options = quiet();
    options.retry_hint = std::nullopt;
    return options;
}

struct manual_state {
    std::function<void(ssepp::error_code, std::size_t)> handler;  // the write in flight, if any
    std::size_t offered = 0;  // bytes offered to that write
    std::string written;      // bytes the test let through
    std::vector<asio::const_buffer> buffers;
    int calls = 0;
    int continuations = 0;  // writes whose handler tells Asio it continues the caller's work
    bool closed = false;
};

class manual_transport {
public:
    using executor_type = asio::io_context::executor_type;

    manual_transport(asio::io_context& io, std::shared_ptr<manual_state> s) : ex_(io.get_executor()), s_(std::move(s)) {}

    executor_type get_executor() { return ex_; }

    template <class ConstBuffers, class Handler>
    void async_write_some(const ConstBuffers& buffers, Handler&& handler)
    {
        ++s_->calls;
        using asio::asio_handler_is_continuation;  // the default, found when the handler has none
        s_->continuations += asio_handler_is_continuation(std::addressof(handler)) ? 1 : 0;
        s_->buffers.assign(asio::buffer_sequence_begin(buffers), asio::buffer_sequence_end(buffers));
        s_->offered = asio::buffer_size(buffers);
        s_->handler = std::forward<Handler>(handler);
    }

    void close(ssepp::error_code&) { s_->closed = true; }

private:
    executor_type ex_;
    std::shared_ptr<manual_state> s_;
};

/// Runs what is ready on `io` (again: poll() leaves it stopped once it runs out of work).
void pump(asio::io_context& io)
{
    io.restart();
    io.poll();
}

/// Lets the first `n` offered bytes through and completes the write in flight.
void complete_write(manual_state& s, std::size_t n, ssepp::error_code ec = {})
{
    REQUIRE(s.handler);
    std::size_t left = n;
    for (const auto& b : s.buffers) {
        const auto k = std::min(left, b.size());
        s.written.append(static_cast<const char*>(b.data()), k);
        left -= k;
    }
    auto h = std::move(s.handler);
    s.handler = nullptr;
    h(ec, n);
}

} // namespace

TEST_CASE("a write failing before the posted close does not change the close reason", "[emitter]")
{
    for (const bool overflow : {true, false}) {
        asio::io_context io;
        auto st = std::make_shared<manual_state>();
        auto options = quiet();
        options.max_queued_bytes = 4096;
        auto em = ssepp::make_emitter(ssepp::http_body(manual_transport(io, st)), options);
        test::close_log closes;
        em->on_close(closes.handler());
        em->start();
        pump(io);
        REQUIRE(st->handler);  // the head is being written
        if (overflow)
            CHECK(test::send_ec(*em, {.data = payload(4080)}) == ssepp::errc::overflow);  // past 4096 with the retry hint in flight
        else
            em->abort();
        // The write fails now, before the close posted by send()/close() has run.
        complete_write(*st, 0, asio::error::connection_reset);
        pump(io);
        REQUIRE(closes.count() == 1);
        CHECK(closes.reason() == (overflow ? ssepp::close_reason::overflow : ssepp::close_reason::aborted));
        CHECK(st->closed);
    }
}

TEST_CASE("a write that fails without the peer leaving closes with close_reason::error", "[emitter]")
{
    const std::pair<ssepp::error_code, ssepp::close_reason> cases[] = {
        {asio::error::no_buffer_space, ssepp::close_reason::error},
        {std::make_error_code(std::errc::protocol_error), ssepp::close_reason::error},
        {asio::error::broken_pipe, ssepp::close_reason::client_gone},
        {asio::error::eof, ssepp::close_reason::client_gone},
    };
    for (const auto& [failure, expected] : cases) {
        asio::io_context io;
        auto st = std::make_shared<manual_state>();
        auto em = ssepp::make_emitter(ssepp::http_body(manual_transport(io, st)), quiet());
        test::close_log closes;
        em->on_close(closes.handler());
        em->start();
        pump(io);
        REQUIRE(st->handler);
        complete_write(*st, 0, failure);
        pump(io);
        REQUIRE(closes.count() == 1);
        CHECK(closes.reason() == expected);
        CHECK(st->closed);
        CHECK(test::send_ec(*em, {.data = "late"}) == ssepp::errc::closed);
    }
}

TEST_CASE("written_seq tracks the last tagged frame the transport took, async_wait_drained completes once below "
          "its threshold",
          "[emitter]")
{
    asio::io_context io;
    auto st = std::make_shared<manual_state>();
    auto options = bare_options();
    auto em = ssepp::make_emitter(manual_transport(io, st), options);
    em->start();
    CHECK(em->written_seq() == 0);
    test::send_ec(*em, ssepp::make_raw_frame("data: 1\n\n"), 7);
    pump(io);
    REQUIRE(st->handler);  // frame 7 in flight, alone
    test::send_ec(*em, ssepp::make_raw_frame("data: 2\n\n"), 9);
    test::send_ec(*em, ssepp::make_raw_frame(": untagged\n\n"));
    int drained = 0;
    em->async_wait_drained(12, [&](ssepp::error_code ec) { drained += !ec; });
    pump(io);
    CHECK(drained == 0);  // 32 bytes queued
    complete_write(*st, 4);  // part of frame 7: not written yet
    pump(io);
    CHECK(em->written_seq() == 0);
    complete_write(*st, st->offered);  // the rest of 7; then 9 and the comment start
    pump(io);
    CHECK(em->written_seq() == 7);
    CHECK(drained == 0);  // 22 bytes still queued
    complete_write(*st, st->offered);
    pump(io);
    CHECK(em->written_seq() == 9);  // the untagged comment leaves the tag as it was
    CHECK(drained == 1);
    em->async_wait_drained(100, [&](ssepp::error_code ec) { drained += !ec; });  // already below: posted at once
    pump(io);
    CHECK(drained == 2);
    em->abort();
    pump(io);
}

TEST_CASE("async_wait_drained completing at once still holds the emitter when its handler runs", "[emitter]")
{
    asio::io_context io;
    auto st = std::make_shared<manual_state>();
    auto options = bare_options();
    auto em = ssepp::make_emitter(manual_transport(io, st), options);
    std::weak_ptr<ssepp::basic_emitter<manual_transport>> weak = em;
    bool alive = false;
    em->async_wait_drained(100, [&](ssepp::error_code) { alive = !weak.expired(); });  // nothing queued: posted at once
    em.reset();  // the caller lets go before the handler runs
    pump(io);
    CHECK(alive);
}

TEST_CASE("one write at a time, queued_bytes counts what is not yet written, written frames are freed", "[emitter]")
{
    asio::io_context io;
    auto st = std::make_shared<manual_state>();
    auto options = bare_options();
    auto em = ssepp::make_emitter(manual_transport(io, st), options);
    em->start();
    pump(io);
    CHECK(st->calls == 0);  // nothing to write yet
    auto a = ssepp::make_raw_frame("data: a\n\n");
    auto b = ssepp::make_raw_frame("data: bb\n\n");
    test::send_ec(*em, a);
    test::send_ec(*em, b);
    pump(io);
    REQUIRE(st->calls == 1);  // a and b in one gather write
    CHECK(st->buffers.size() == 2);
    CHECK(em->queued_bytes() == a->size() + b->size());
    // The transport takes a only: a is released at once, b is still being written.
    complete_write(*st, a->size());
    CHECK(a.use_count() == 1);
    CHECK(b.use_count() == 2);
    REQUIRE(st->calls == 2);
    CHECK(st->offered == b->size());
    test::send_ec(*em, {.data = "c"});  // 9 bytes
    pump(io);
    CHECK(st->calls == 2);  // the write in flight is not joined by another
    CHECK(em->queued_bytes() == b->size() + 9);
    complete_write(*st, 3);
    CHECK(em->queued_bytes() == b->size() - 3 + 9);
    REQUIRE(st->calls == 3);
    CHECK(st->offered == b->size() - 3);  // the rest of the batch first
    complete_write(*st, st->offered);
    CHECK(b.use_count() == 1);
    REQUIRE(st->calls == 4);
    CHECK(st->offered == 9);
    complete_write(*st, 9);
    CHECK(em->queued_bytes() == 0);
    CHECK(st->written == "data: a\n\ndata: bb\n\ndata: c\n\n");
    CHECK(em->bytes_written() == st->written.size());
    CHECK(st->calls == 4);
    CHECK_FALSE(st->handler);
    // Each completion continues the write loop: Asio may then run it on the thread that
    // started the write, without waking another.
    CHECK(st->continuations == st->calls);
}

TEST_CASE("drop_oldest drops only what is not being written, keeps the newest", "[emitter]")
{
    asio::io_context io;
    auto st = std::make_shared<manual_state>();
    auto options = bare_options();
    options.max_queued_bytes = 100;
    options.overflow = ssepp::overflow_policy::drop_oldest;
    auto em = ssepp::make_emitter(manual_transport(io, st), options);
    em->start();
    test::send_ec(*em, {.id = "0", .data = payload(40)});  // 52 bytes, written at once: stuck in flight
    pump(io);
    REQUIRE(st->handler);
    for (int i = 1; i <= 10; ++i) {
        CHECK(test::send_ec(*em, {.id = std::to_string(i), .data = payload(40)}).value() == 0);
        CHECK(em->queued_bytes() <= 100 + 52);
    }
    CHECK(em->dropped() == 9);  // 1..9 went; 0 is being written, 10 is the newest
    CHECK(em->is_open());
    complete_write(*st, st->offered);
    pump(io);
    complete_write(*st, st->offered);
    pump(io);
    CHECK(st->written == ssepp::format({.id = "0", .data = payload(40)})
                             + ssepp::format({.id = "10", .data = payload(40)}));
}

TEST_CASE("an idle emitter costs little memory, its pending peer watch included", "[emitter]")
{
    // The aim is about 1 KiB of user-space memory per idle connection, everything included.
    CHECK(sizeof(ssepp::emitter) <= 512);
#if defined(__GLIBC__) && !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
    // Heap held by started, idle emitters (head written, peer watch pending), beyond their
    // sockets: the emitter with its control block, and the pending wait. The wait lasts as long
    // as the connection, so it must not sit in a recycled block sized for the larger operation
    // that ran before it on that thread.
    using local = asio::local::stream_protocol::socket;
    asio::io_context io;
    asio::io_context peers_io;
    constexpr std::size_t n = 500;
    std::vector<local> mine, peers;
    mine.reserve(n);
    peers.reserve(n);
    std::vector<std::shared_ptr<ssepp::basic_emitter<ssepp::http_body<local>>>> ems;
    ems.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
        mine.emplace_back(io);
        peers.emplace_back(peers_io);
        asio::local::connect_pair(mine.back(), peers.back());
    }
    // Warm Asio's per-thread caches and services on one emitter outside the count.
    {
        local a(io), b(peers_io);
        asio::local::connect_pair(a, b);
        auto warm = ssepp::make_emitter(ssepp::http_body(std::move(a)), quiet());
        warm->start();
        pump(io);
        warm->abort();
        pump(io);
    }
    // As an HTTP front does: read each request head with a composed operation, then hand the
    // socket to an emitter from that read's handler.
    for (auto& p : peers)
        asio::write(p, asio::buffer(std::string_view("GET /events HTTP/1.1\r\nHost: x\r\n\r\n")));
    std::vector<std::string> heads(n);
    const auto before = ::mallinfo2().uordblks;
    for (std::size_t i = 0; i < n; ++i)
        asio::async_read_until(mine[i], asio::dynamic_buffer(heads[i]), "\r\n\r\n",
                               [&, i](ssepp::error_code ec, std::size_t) {
                                   REQUIRE_FALSE(ec);
                                   ems.push_back(ssepp::make_emitter(ssepp::http_body(std::move(mine[i])), quiet()));
                                   ems.back()->start();
                               });
    pump(io);
    REQUIRE(ems.size() == n);
    const auto heads_bytes = [&] {
        std::size_t b = 0;
        for (auto& h : heads)
            b += h.capacity() + 1;
        return b;
    }();
    const auto per_emitter = double(::mallinfo2().uordblks - before - heads_bytes) / n;
    for (auto& em : ems)
        REQUIRE(em->bytes_written() > 0);  // the head went out: each is idle now, watching
    INFO("heap per idle emitter: " << per_emitter << " B");
    // 638 B here with g++ 12 and glibc 2.36 (714 B in a recycled block); 681 B with Boost.Asio,
    // whose error_code (in the emitter and in each pending operation) is 24 B, not 16.
    CHECK(per_emitter <= (test::boost_asio ? 704 : 672));
    for (auto& em : ems)
        em->abort();
    pump(io);
#endif
}

TEST_CASE("the sweep period follows the shortest heartbeat among the open streams", "[emitter]")
{
    using local = asio::local::stream_protocol::socket;
    asio::io_context io;
    asio::io_context peers_io;
    auto& service = asio::use_service<ssepp::detail::stream_service>(io);
    const auto open = [&](std::chrono::milliseconds heartbeat, local& peer) {
        local mine(io);
        asio::local::connect_pair(mine, peer);
        auto options = quiet();
        options.heartbeat = heartbeat;
        auto em = ssepp::make_emitter(ssepp::http_body(std::move(mine)), options);
        em->start();
        return em;
    };
    local p1(peers_io), p2(peers_io), p3(peers_io);
    auto slow = open(2s, p1);
    CHECK(service.period() == 500ms);  // a quarter of the heartbeat
    auto fast = open(20ms, p2);
    auto fast_too = open(20ms, p3);
    CHECK(service.period() == 5ms);
    fast->abort();
    pump(io);
    CHECK(service.period() == 5ms);  // another stream still wants it
    fast_too->abort();
    pump(io);
    CHECK(service.period() == 500ms);  // and back to the pace the one left asks for
    slow->abort();
    pump(io);
    CHECK(service.swept() == 0);
    CHECK(service.period() == 1s);
}

TEST_CASE("a close handler that throws leaves the other streams to close", "[emitter]")
{
    // Streams are kicked in batches; one stream's handler throwing out of run() must not leave
    // the rest of its batch waiting.
    asio::io_context io;
    auto options = bare_options();
    std::vector<std::shared_ptr<ssepp::basic_emitter<manual_transport>>> ems;
    std::vector<test::close_log> logs(3);
    for (std::size_t i = 0; i < 3; ++i) {
        ems.push_back(ssepp::make_emitter(manual_transport(io, std::make_shared<manual_state>()), options));
        if (i == 0)
            ems.back()->on_close([](ssepp::close_reason, ssepp::error_code) { throw std::runtime_error("handler"); });
        ems.back()->on_close(logs[i].handler());
        ems.back()->start();
    }
    pump(io);
    for (auto& em : ems)
        em->complete();
    int thrown = 0;
    io.restart();
    for (int rounds = 0; rounds < 10; ++rounds) {
        try {
            io.poll();
            break;
        } catch (const std::runtime_error&) {
            ++thrown;
        }
    }
    CHECK(thrown == 1);
    for (std::size_t i = 1; i < 3; ++i) {
        REQUIRE(logs[i].count() == 1);
        CHECK(logs[i].reason() == ssepp::close_reason::completed);
    }
}

TEST_CASE("a stream that is not swept may outlive its io_context (custom transport)", "[emitter]")
{
    // Its destructor must not reach the context's service, which is gone (AddressSanitizer
    // checks this in CI).
    std::shared_ptr<ssepp::basic_emitter<manual_transport>> em;
    {
        asio::io_context io;
        auto options = quiet();  // no heartbeat, no timeouts: never swept
            options.retry_hint = std::nullopt;
        em = ssepp::make_emitter(manual_transport(io, std::make_shared<manual_state>()), options);
        em->start();
        pump(io);
        em->abort();
        pump(io);
        CHECK(asio::use_service<ssepp::detail::stream_service>(io).swept() == 0);
    }
    CHECK_FALSE(em->is_open());
    em.reset();
}

TEST_CASE("sends to many streams on one io_context start their writes in batches, in order", "[emitter]")
{
    asio::io_context io;
    constexpr std::size_t n = 200;
    auto options = bare_options();
    std::vector<std::shared_ptr<manual_state>> states;
    std::vector<std::shared_ptr<ssepp::basic_emitter<manual_transport>>> ems;
    for (std::size_t i = 0; i < n; ++i) {
        states.push_back(std::make_shared<manual_state>());
        ems.push_back(ssepp::make_emitter(manual_transport(io, states.back()), options));
        ems.back()->start();
    }
    pump(io);
    const auto frame = ssepp::make_raw_frame("data: x\n\n");
    for (auto& em : ems)
        REQUIRE_FALSE(test::send_ec(*em, frame));
    const auto started = [&] {
        return std::count_if(states.begin(), states.end(), [](auto& s) { return s->calls == 1; });
    };
    CHECK(started() == 0);  // send() only queues
    io.restart();
    REQUIRE(io.poll_one() == 1);
    // One handler started many writes (not one per stream, each posted on its own), and left
    // the rest to the next handler, which another thread running the context may take.
    const auto first = started();
    CHECK(first > 1);
    CHECK(first < static_cast<std::ptrdiff_t>(n));
    for (std::ptrdiff_t i = 0; i < first; ++i)
        CHECK(states[static_cast<std::size_t>(i)]->calls == 1);  // in the order they were sent
    pump(io);
    CHECK(started() == static_cast<std::ptrdiff_t>(n));
    for (auto& s : states) {
        CHECK(s->offered == frame->size());
        complete_write(*s, s->offered);  // the held handler owns its emitter: let it go
    }
    pump(io);
}

namespace {

/// A transport on a strand that records whether each write starts inside the strand.
class strand_transport {
public:
    using executor_type = asio::strand<asio::io_context::executor_type>;

    strand_transport(executor_type ex, std::shared_ptr<std::pair<int, int>> calls_in_strand)
        : ex_(std::move(ex)), calls_(std::move(calls_in_strand))
    {
    }

    executor_type get_executor() { return ex_; }

    template <class ConstBuffers, class Handler>
    void async_write_some(const ConstBuffers& buffers, Handler&& handler)
    {
        ++calls_->first;
        calls_->second += ex_.running_in_this_thread() ? 1 : 0;
        asio::post(ex_, [h = std::forward<Handler>(handler), size = asio::buffer_size(buffers)]() mutable {
            h(ssepp::error_code{}, size);
        });
    }

    void close(ssepp::error_code&) {}

private:
    executor_type ex_;
    std::shared_ptr<std::pair<int, int>> calls_;
};

} // namespace

TEST_CASE("a stream on a strand starts every write inside its strand", "[emitter]")
{
    asio::io_context io;
    auto calls = std::make_shared<std::pair<int, int>>(0, 0);
    auto em = ssepp::make_emitter(strand_transport(asio::make_strand(io.get_executor()), calls), quiet());
    test::send_ec(*em, {.data = "queued before start"});
    em->start();
    pump(io);
    const auto after_start = calls->first;
    CHECK(after_start >= 1);
    test::send_ec(*em, {.data = "sent while idle"});
    pump(io);
    CHECK(calls->first > after_start);
    CHECK(calls->second == calls->first);
}

TEST_CASE("run() returns promptly once the last emitter is gone, whatever the heartbeat", "[emitter]")
{
    using local = asio::local::stream_protocol::socket;
    asio::io_context io;
    asio::io_context peer_io;
    local mine(io), peer(peer_io);
    asio::local::connect_pair(mine, peer);
    auto em = ssepp::make_emitter(ssepp::http_body(std::move(mine)));  // default: 15 s heartbeat, 30 s write timeout
    em->start();
    REQUIRE(asio::use_service<ssepp::detail::stream_service>(io).swept() == 1);
    test::run_in_background ran(io);  // stopped at the end of the scope, whatever fails
    REQUIRE(ran.wait_for(50ms) == std::future_status::timeout);  // the stream keeps it running
    em->abort();
    // The sweeper's timer (armed for up to a second) is cancelled with its last target.
    CHECK(ran.wait_for(500ms) == std::future_status::ready);
}

TEST_CASE("a close while a write is in flight holds the close handlers until that write counts", "[emitter]")
{
    // The peer may read the bytes, then leave, and its leaving be seen before the write's
    // handler runs: what the write took must reach written_seq() before the handlers run, or
    // replay::undelivered would send the event again.
    for (const bool taken : {true, false}) {
        CAPTURE(taken);
        asio::io_context io;
        auto st = std::make_shared<manual_state>();
        auto em = ssepp::make_emitter(manual_transport(io, st), bare_options());
        std::uint64_t seen_in_handler = 99;
        int calls = 0;
        em->on_close([&, raw = em.get()](ssepp::close_reason, ssepp::error_code) {
            ++calls;
            seen_in_handler = raw->written_seq();
        });
        em->start();
        test::send_ec(*em, ssepp::make_raw_frame("data: 1\n\n"), 5);
        pump(io);
        REQUIRE(st->handler);
        em->abort();
        pump(io);
        CHECK(st->closed);
        CHECK(calls == 0);  // held for the write in flight
        if (taken)
            complete_write(*st, st->offered);
        else
            complete_write(*st, 0, asio::error::operation_aborted);
        pump(io);
        CHECK(calls == 1);
        CHECK(seen_in_handler == (taken ? 5u : 0u));
        CHECK(test::send_ec(*em, {.data = "late"}) == ssepp::errc::closed);
    }
}

TEST_CASE("complete_with_error flushes, then the close handlers see its error", "[emitter]")
{
    sse_server srv({.options = quiet()});
    test::client c(srv.port());
    auto s = srv.at(0);
    test::send_ec(*s.em, {.event = "error", .data = "import failed"});
    const auto why = std::make_error_code(std::errc::io_error);
    s.em->complete_with_error(why);
    CHECK(test::send_ec(*s.em, {.data = "late"}) == ssepp::errc::closed);
    REQUIRE(c.read_to_eof());
    REQUIRE(c.events.size() == 1);
    CHECK(c.events[0].data == "import failed");
    check_closed_once(srv, s, ssepp::close_reason::completed_with_error);
    CHECK(s.closes.at(0).ec == why);
    CHECK(ssepp::describe(s.closes.reason()) == "completed_with_error");
}

TEST_CASE("on_timeout may send a last event, flushed before the stream ends", "[emitter]")
{
    auto options = quiet();
    options.lifetime = 100ms;
    std::atomic<int> timeouts{0};
    sse_server srv({.options = options, .before_start = [&](ssepp::emitter& em) {
                        em.on_timeout([&timeouts, &em] {
                            ++timeouts;
                            em.send({.event = "bye", .data = "lifetime over"});
                        });
                    }});
    test::client c(srv.port());
    auto s = srv.at(0);
    REQUIRE(c.read_to_eof(5s));
    REQUIRE(c.events.size() == 1);
    CHECK(c.events[0] == test::received{"bye", "lifetime over", ""});
    check_closed_once(srv, s, ssepp::close_reason::timeout);
    CHECK(s.closes.at(0).ec == ssepp::errc::timeout);
    CHECK(timeouts == 1);
}

TEST_CASE("async_flush and async_wait_closed with asio::use_future over a socket", "[emitter]")
{
    auto options = quiet();
    sse_server srv({.options = options, .small_send_buffer = true});
    test::client c(srv.port());
    auto s = srv.at(0);
    // use_future bound to the server's context: its completion then runs there, as a handler
    // with an executor would (a bare use_future completes on Asio's system executor).
    const auto on_io = [&] { return asio::bind_executor(srv.io(), asio::use_future); };
    auto closed = s.em->async_wait_closed(on_io());
    // More than the socket buffers hold (and less than the queue bound): the flush waits for
    // the client.
    for (int i = 0; i < 32; ++i)
        test::send_ec(*s.em, {.id = std::to_string(i), .data = payload(16 * 1024)});
    auto flushed = s.em->async_flush(on_io());
    const auto queued_then = s.em->queued_bytes();
    REQUIRE(c.read_until([&] { return c.events.size() == 32; }, 10s));
    REQUIRE(flushed.wait_for(5s) == std::future_status::ready);
    flushed.get();  // no error
    CHECK(queued_then > 0);
    CHECK(s.em->queued_bytes() == 0);
    CHECK(closed.wait_for(0s) == std::future_status::timeout);
    s.em->complete();
    REQUIRE(closed.wait_for(5s) == std::future_status::ready);
    const auto [reason, ec] = closed.get();
    CHECK(reason == ssepp::close_reason::completed);
    CHECK(!ec);
    // On a stream that has ended, a flush completes at once with errc::closed.
    auto late = s.em->async_flush(on_io());
    REQUIRE(late.wait_for(5s) == std::future_status::ready);
    try {
        late.get();
        FAIL("async_flush on an ended stream succeeded");
    } catch (const ssepp::system_error& e) {
        CHECK(e.code() == ssepp::errc::closed);
    }
}

TEST_CASE("drop_oldest never drops the retry hint queued before start()", "[emitter]")
{
    // Found by CI under ASan: with the hint in the queue, a slow start let drop_oldest drop it
    // and count it as a dropped event.
    asio::io_context io;
    auto st = std::make_shared<manual_state>();
    auto options = quiet();
    options.max_queued_bytes = 110;
    options.overflow = ssepp::overflow_policy::drop_oldest;
    auto em = ssepp::make_emitter(manual_transport(io, st), options);
    for (int i = 0; i < 5; ++i)
        CHECK(test::send_ec(*em, {.id = std::to_string(i), .data = payload(30)}).value() == 0);
    CHECK(em->dropped() == 3);  // the 13-byte hint and two 44-byte events fit in 110
    em->start();
    pump(io);
    REQUIRE(st->handler);
    complete_write(*st, st->offered);
    pump(io);
    CHECK(st->written == "retry: 5000\n\nid: 3\ndata: " + payload(30) + "\n\nid: 4\ndata: " + payload(30) + "\n\n");
    em->abort();
    pump(io);
}
