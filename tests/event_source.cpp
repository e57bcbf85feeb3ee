// Test that the header is self-contained.
#include <ssepp/event_source.hpp>

#include "catch.hpp"

#include <chrono>
#include <cmath>
#include <limits>
#include <ostream>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

using namespace std::string_literals;
using namespace std::string_view_literals;
using std::chrono::milliseconds;

namespace {

struct ev {
    std::string type;
    std::string data;
    std::string id;
    friend bool operator==(const ev&, const ev&) = default;
};

std::ostream& operator<<(std::ostream& os, const ev& e)
{
    return os << "[" << e.type << "|" << e.data << "|" << e.id << "]";
}

using events = std::vector<ev>;
using headers = std::vector<std::pair<std::string, std::string>>;

// Feeds `chunk` and returns the events it delivered.
events feed(ssepp::event_source& es, std::string_view chunk, std::error_code* ec = nullptr)
{
    events out;
    const auto e = es.feed(chunk, [&](const ssepp::message& m) {
        out.push_back({std::string(m.type), std::string(m.data), std::string(m.last_event_id)});
    });
    if (ec)
        *ec = e;
    else
        CHECK(!e);
    return out;
}

// No jitter: delays are exact.
ssepp::event_source_options exact(milliseconds retry = milliseconds(3000))
{
    ssepp::event_source_options o;
    o.retry = retry;
    o.jitter = 0;
    return o;
}

void open(ssepp::event_source& es)
{
    const auto a = es.on_response(200, "text/event-stream");
    REQUIRE(a.open);
    REQUIRE(a.reason == ssepp::event_source::stop_reason::none);
    REQUIRE(es.state() == ssepp::event_source::ready_state::open);
}

ssepp::reconnect_decision reconnect(milliseconds ms) { return {true, ms}; }
const ssepp::reconnect_decision stop{false, milliseconds(0)};

const std::error_code refused = std::make_error_code(std::errc::connection_refused);

} // namespace

TEST_CASE("is_event_stream reads the MIME type's essence", "[event_source]")
{
    for (auto ok : {"text/event-stream"sv, "TEXT/Event-Stream"sv,
             "text/event-stream; charset=utf-8"sv, "text/event-stream;charset=UTF-8"sv,
             "text/event-stream ; x=y"sv, " \ttext/event-stream \t"sv, "text/event-stream;"sv,
             "text/event-stream; charset=latin1"sv}) {
        INFO(ok);
        CHECK(ssepp::is_event_stream(ok));
    }
    for (auto bad : {""sv, " "sv, "text/plain"sv, "text/event-stream-x"sv, "text/event-streams"sv,
                     "text /event-stream"sv, "text/ event-stream"sv, "text/eventstream"sv,
                     "application/event-stream"sv, "text/event-stream,text/plain"sv,
                     "event-stream"sv, "text/event-stream\0"sv}) {
        INFO(bad);
        CHECK(!ssepp::is_event_stream(bad));
    }
}

TEST_CASE("a new source is connecting and asks for an event stream", "[event_source]")
{
    ssepp::event_source es;
    CHECK(es.state() == ssepp::event_source::ready_state::connecting);
    CHECK(es.reason() == ssepp::event_source::stop_reason::none);
    CHECK(es.last_event_id().empty());
    CHECK(es.retry() == milliseconds(3000));
    // No Last-Event-ID while the last event id is empty, as EventSource.
    CHECK(es.request_headers()
        == headers{{"Accept", "text/event-stream"}, {"Cache-Control", "no-cache"}});
}

TEST_CASE("200 with text/event-stream opens, parameters and case do not matter", "[event_source]")
{
    for (auto type :
        {"text/event-stream"sv, "text/event-stream; charset=utf-8"sv, "Text/Event-Stream"sv}) {
        ssepp::event_source es;
        const auto a = es.on_response(200, type);
        CHECK(a.open);
        CHECK(a.reason == ssepp::event_source::stop_reason::none);
        CHECK(es.state() == ssepp::event_source::ready_state::open);
    }
}

TEST_CASE("204 fails the connection without reconnecting", "[event_source]")
{
    ssepp::event_source es;
    const auto a = es.on_response(204, "text/event-stream");
    CHECK(!a.open);
    CHECK(a.reason == ssepp::event_source::stop_reason::no_content);
    CHECK(es.state() == ssepp::event_source::ready_state::closed);
    CHECK(es.reason() == ssepp::event_source::stop_reason::no_content);
    CHECK(es.on_end() == stop);
    CHECK(es.on_end(refused) == stop);
}

TEST_CASE("a status other than 200 fails the connection without reconnecting", "[event_source]")
{
    for (int status : {201, 206, 299, 301, 304, 400, 401, 404, 500, 503, 0}) {
        INFO(status);
        ssepp::event_source es;
        const auto a = es.on_response(status, "text/event-stream");
        CHECK(!a.open);
        CHECK(a.reason == ssepp::event_source::stop_reason::bad_status);
        CHECK(es.state() == ssepp::event_source::ready_state::closed);
        CHECK(es.on_end() == stop);
    }
}

TEST_CASE("another content type fails the connection without reconnecting", "[event_source]")
{
    for (auto type : {""sv, "text/plain"sv, "text/html; charset=utf-8"sv, "application/json"sv}) {
        INFO(type);
        ssepp::event_source es;
        const auto a = es.on_response(200, type);
        CHECK(!a.open);
        CHECK(a.reason == ssepp::event_source::stop_reason::bad_content_type);
        CHECK(es.on_end() == stop);
    }
    // The status is judged first: a 204 or 404 with a wrong type says so.
    ssepp::event_source es;
    CHECK(es.on_response(404, "text/html").reason == ssepp::event_source::stop_reason::bad_status);
}

TEST_CASE("feed delivers the events of an open stream only", "[event_source]")
{
    ssepp::event_source es;
    std::error_code ec;
    CHECK(feed(es, "data: early\n\n", &ec).empty());
    CHECK(ec == ssepp::errc::closed);

    open(es);
    CHECK(feed(es, "data: a\n\nid: 1\nevent: t\ndata: b\ndata: c\n\n")
          == events{{"message", "a", ""}, {"t", "b\nc", "1"}});
    CHECK(es.last_event_id() == "1");
    CHECK(es.request_headers().back() == std::pair<std::string, std::string>{"Last-Event-ID", "1"});
}

TEST_CASE("a handler object gets retries and comments too", "[event_source]")
{
    struct recorder {
        std::vector<std::string> seen;
        void on_event(const ssepp::message& m) { seen.push_back("event " + std::string(m.data)); }
        void on_retry(milliseconds r) { seen.push_back("retry " + std::to_string(r.count())); }
        void on_comment(std::string_view c) { seen.push_back("comment " + std::string(c)); }
    } r;
    ssepp::event_source es;
    open(es);
    CHECK(!es.feed(": hi\nretry: 50\ndata: x\n\n", r));
    CHECK(r.seen == std::vector<std::string>{"comment hi", "retry 50", "event x"});
    CHECK(es.retry() == milliseconds(50));
}

TEST_CASE("the end of an open stream reconnects after the reconnection time", "[event_source]")
{
    ssepp::event_source es(exact());
    open(es);
    CHECK(es.on_end() == reconnect(milliseconds(3000)));
    CHECK(es.state() == ssepp::event_source::ready_state::connecting);
    // A network error after the stream opened is the same.
    open(es);
    CHECK(es.on_end(std::make_error_code(std::errc::connection_reset))
        == reconnect(milliseconds(3000)));
    CHECK(es.last_transport_error() == std::errc::connection_reset);
    // The default reconnection time is the options'.
    ssepp::event_source fast(exact(milliseconds(250)));
    open(fast);
    CHECK(fast.on_end() == reconnect(milliseconds(250)));
}

TEST_CASE(
    "retry: sets the reconnection time, which persists across reconnections", "[event_source]")
{
    ssepp::event_source es(exact());
    open(es);
    feed(es, "retry: 1500\n\n");
    CHECK(es.retry() == milliseconds(1500));
    CHECK(es.on_end() == reconnect(milliseconds(1500)));
    open(es);
    CHECK(es.retry() == milliseconds(1500));
    CHECK(es.on_end() == reconnect(milliseconds(1500)));
    // An invalid retry: changes nothing; a later valid one wins.
    open(es);
    feed(es, "retry: 12x\nretry:\nretry: -5\n\n");
    CHECK(es.on_end() == reconnect(milliseconds(1500)));
    open(es);
    feed(es, "retry: 0\n");
    CHECK(es.on_end() == reconnect(milliseconds(0)));
}

TEST_CASE("a network error before the stream opens reconnects, with back-off", "[event_source]")
{
    ssepp::event_source es(exact());
    // The very first attempt failing waits the reconnection time, then each failure doubles.
    CHECK(es.on_end(refused) == reconnect(milliseconds(3000)));
    CHECK(es.on_end(refused) == reconnect(milliseconds(6000)));
    CHECK(es.on_end(refused) == reconnect(milliseconds(12000)));
    CHECK(es.on_end(refused) == reconnect(milliseconds(24000)));
    // Capped at max_backoff (30 s by default).
    CHECK(es.on_end(refused) == reconnect(milliseconds(30000)));
    CHECK(es.on_end(refused) == reconnect(milliseconds(30000)));
    CHECK(es.attempts() == 6);
    for (int i = 0; i < 100; ++i)
        CHECK(es.on_end(refused) == reconnect(milliseconds(30000)));
    CHECK(es.state() == ssepp::event_source::ready_state::connecting);
    // A response ending before it was judged (the server hung up) counts as a failure too.
    CHECK(es.on_end() == reconnect(milliseconds(30000)));
}

TEST_CASE("a successful open resets the back-off", "[event_source]")
{
    ssepp::event_source es(exact());
    open(es);
    CHECK(es.on_end() == reconnect(milliseconds(3000)));
    CHECK(es.on_end(refused) == reconnect(milliseconds(6000)));
    CHECK(es.on_end(refused) == reconnect(milliseconds(12000)));
    open(es);
    CHECK(es.attempts() == 0);
    CHECK(es.on_end() == reconnect(milliseconds(3000)));
    CHECK(es.on_end(refused) == reconnect(milliseconds(6000)));
}

TEST_CASE("the back-off cap is configurable, a larger retry: still wins", "[event_source]")
{
    auto o = exact(milliseconds(1000));
    o.max_backoff = milliseconds(5000);
    ssepp::event_source es(o);
    CHECK(es.on_end(refused) == reconnect(milliseconds(1000)));
    CHECK(es.on_end(refused) == reconnect(milliseconds(2000)));
    CHECK(es.on_end(refused) == reconnect(milliseconds(4000)));
    CHECK(es.on_end(refused) == reconnect(milliseconds(5000)));

    open(es);
    feed(es, "retry: 60000\n");
    CHECK(es.on_end() == reconnect(milliseconds(60000)));
    CHECK(es.on_end(refused) == reconnect(milliseconds(60000)));
    CHECK(es.on_end(refused) == reconnect(milliseconds(60000)));
}

TEST_CASE("back-off after a tiny retry: starts at min_backoff", "[event_source]")
{
    ssepp::event_source es(exact());
    open(es);
    feed(es, "retry: 0\n");
    CHECK(es.on_end() == reconnect(milliseconds(0)));
    CHECK(es.on_end(refused) == reconnect(milliseconds(1000)));
    CHECK(es.on_end(refused) == reconnect(milliseconds(2000)));
    CHECK(es.on_end(refused) == reconnect(milliseconds(4000)));

    auto o = exact(milliseconds(100));
    o.min_backoff = milliseconds(50);
    ssepp::event_source small(o);
    CHECK(small.on_end(refused) == reconnect(milliseconds(100)));
    CHECK(small.on_end(refused) == reconnect(milliseconds(200)));
    CHECK(small.on_end(refused) == reconnect(milliseconds(400)));
}

TEST_CASE("nonsense options do not give negative delays", "[event_source]")
{
    auto o = exact(milliseconds(-5));
    o.min_backoff = milliseconds(-1);
    o.max_backoff = milliseconds(-1);
    ssepp::event_source es(o);
    CHECK(es.on_end(refused) == reconnect(milliseconds(0)));
    CHECK(es.on_end(refused) == reconnect(milliseconds(0)));
    o.jitter = std::nan("");
    o.retry = milliseconds(10);
    ssepp::event_source nan_jitter(o);
    CHECK(nan_jitter.on_end(refused) == reconnect(milliseconds(10)));
    // Found by fuzz_event_source: delay * 1e308 is infinite, times a random 0 was NaN (UB when
    // converted). A random 0 draws no jitter; any other saturates.
    for (double jitter : {1e308, std::numeric_limits<double>::infinity()}) {
        o.jitter = jitter;
        o.random = [] { return 0.0; };
        ssepp::event_source zero(o);
        CHECK(zero.on_end(refused) == reconnect(milliseconds(10)));
        o.random = [] { return 0.5; };
        ssepp::event_source half(o);
        CHECK(half.on_end(refused) == reconnect(milliseconds::max()));
    }
}

TEST_CASE("an absurd retry: saturates instead of overflowing", "[event_source]")
{
    constexpr auto max = milliseconds::max();
    for (double jitter : {0.0, 0.25, 1.0}) {
        auto o = exact();
        o.jitter = jitter;
        o.random = [] { return 0.9; };
        ssepp::event_source es(o);
        open(es);
        feed(es, "retry: 99999999999999999999999\n");
        CHECK(es.retry() == max);
        CHECK(es.on_end() == reconnect(max));
        CHECK(es.on_end(refused) == reconnect(max));
        CHECK(es.on_end(refused) == reconnect(max));
    }
    // Half the maximum: doubling must saturate too.
    auto o = exact();
    o.max_backoff = max;
    ssepp::event_source es(o);
    open(es);
    feed(es, "retry: " + std::to_string(max.count() / 2 + 1) + "\n");
    CHECK(es.on_end() == reconnect(milliseconds(max.count() / 2 + 1)));
    CHECK(es.on_end(refused) == reconnect(max));
    CHECK(es.on_end(refused) == reconnect(max));
}

TEST_CASE("jitter adds a random fraction of the delay, never subtracts", "[event_source]")
{
    double r = 0.5;
    ssepp::event_source_options o;
    o.jitter = 0.5;
    o.random = [&r] { return r; };
    ssepp::event_source es(o);
    CHECK(es.on_end(refused) == reconnect(milliseconds(3000 + 750)));
    r = 0;
    CHECK(es.on_end(refused) == reconnect(milliseconds(6000)));
    r = 0.9999;
    CHECK(es.on_end(refused) == reconnect(milliseconds(12000 + 5999))); // floored
    // The jitter is on top of the cap.
    r = 0.5;
    CHECK(es.on_end(refused) == reconnect(milliseconds(24000 + 6000)));
    CHECK(es.on_end(refused) == reconnect(milliseconds(30000 + 7500)));
    // A broken source adds nothing rather than shortening or blowing up the delay.
    for (double bad : {-0.5, 1.0, 7.0, std::nan(""), std::numeric_limits<double>::infinity()}) {
        r = bad;
        CHECK(es.on_end(refused) == reconnect(milliseconds(30000)));
    }
}

TEST_CASE("the built-in jitter is deterministic for a seed and within bounds", "[event_source]")
{
    const auto delays = [](std::uint64_t seed) {
        ssepp::event_source_options o;
        o.seed = seed;
        o.jitter = 0.25;
        ssepp::event_source es(o);
        std::vector<milliseconds::rep> out;
        for (int i = 0; i < 50; ++i) {
            open(es);
            const auto d = es.on_end();
            CHECK(d.reconnect);
            CHECK(d.delay >= milliseconds(3000));
            CHECK(d.delay < milliseconds(3750));
            out.push_back(d.delay.count());
        }
        return out;
    };
    const auto a = delays(42);
    CHECK(a == delays(42));
    CHECK(a != delays(43));
    // Spread, not constant.
    CHECK(std::set<milliseconds::rep>(a.begin(), a.end()).size() > 10);
    // Unseeded sources work too (seeded from std::random_device).
    ssepp::event_source es;
    const auto d = es.on_end(refused);
    CHECK(d.delay >= milliseconds(3000));
    CHECK(d.delay < milliseconds(3750));
}

TEST_CASE("the last event id persists across reconnections and is sent back", "[event_source]")
{
    ssepp::event_source es(exact());
    open(es);
    CHECK(feed(es, "id: 7\ndata: a\n\n") == events{{"message", "a", "7"}});
    CHECK(es.on_end() == reconnect(milliseconds(3000)));
    CHECK(es.request_headers()
        == headers{{"Accept", "text/event-stream"}, {"Cache-Control", "no-cache"},
            {"Last-Event-ID", "7"}});
    // Also after failed attempts.
    CHECK(es.on_end(refused).reconnect);
    CHECK(es.last_event_id() == "7");
    open(es);
    CHECK(feed(es, "data: b\n\n") == events{{"message", "b", "7"}});
    // An empty id: resets it, and the header goes away.
    CHECK(feed(es, "id\ndata: c\n\n") == events{{"message", "c", ""}});
    CHECK(es.on_end().reconnect);
    CHECK(es.request_headers()
        == headers{{"Accept", "text/event-stream"}, {"Cache-Control", "no-cache"}});
}

TEST_CASE("the end of a response discards its unterminated event, id included", "[event_source]")
{
    ssepp::event_source es(exact());
    open(es);
    CHECK(feed(es, "id: 1\ndata: a\n\nid: 2\ndata: cut").size() == 1);
    CHECK(es.on_end().reconnect);
    CHECK(es.last_event_id() == "1");
    open(es);
    // The next response is a fresh stream: nothing is glued to "data: cut", and its BOM is
    // stripped.
    CHECK(feed(es, "\xEF\xBB\xBF" "data: next\n\n") == events{{"message", "next", "1"}});
}

TEST_CASE("a parser error fails the connection without reconnecting", "[event_source]")
{
    ssepp::event_source_options o = exact();
    o.limits.max_line = 16;
    ssepp::event_source es(o);
    open(es);
    std::error_code ec;
    CHECK(feed(es, "data: ok\n\ndata: 0123456789abcdef\n\n", &ec) == events{{"message", "ok", ""}});
    CHECK(ec == ssepp::errc::line_too_long);
    CHECK(es.state() == ssepp::event_source::ready_state::closed);
    CHECK(es.reason() == ssepp::event_source::stop_reason::stream_error);
    CHECK(es.stream_error() == ssepp::errc::line_too_long);
    CHECK(es.on_end() == stop);
    CHECK(feed(es, "data: more\n\n", &ec).empty());
    CHECK(ec == ssepp::errc::closed);

    o.limits = {.max_line = 1 << 20, .max_event = 8};
    ssepp::event_source big(o);
    open(big);
    CHECK(feed(big, "data: 0123456789\n\n", &ec).empty());
    CHECK(ec == ssepp::errc::event_too_large);
    CHECK(big.reason() == ssepp::event_source::stop_reason::stream_error);
    CHECK(big.on_end() == stop);
}

TEST_CASE("close() from a handler stops delivery at once", "[event_source]")
{
    ssepp::event_source es(exact());
    open(es);
    events got;
    const auto ec = es.feed(
        "data: 1\n\ndata: 2\n\nretry: 5\ndata: 3\n\n", [&](const ssepp::message& m) {
            got.push_back({std::string(m.type), std::string(m.data), std::string(m.last_event_id)});
            es.close();
        });
    CHECK(ec == ssepp::errc::closed);
    CHECK(got == events{{"message", "1", ""}});
    CHECK(es.state() == ssepp::event_source::ready_state::closed);
    CHECK(es.reason() == ssepp::event_source::stop_reason::closed);
    CHECK(es.on_end() == stop);
}

TEST_CASE("close() from a handler freezes the last event id and retry at the event delivered",
          "[event_source]")
{
    // Found by fuzz_event_source: the parser read the rest of the chunk after the close, so a
    // source resumed from last_event_id() would have skipped events 2 and 3.
    ssepp::event_source es(exact());
    open(es);
    const auto before = es.retry();
    const auto ec = es.feed("id: 1\ndata: a\n\nid: 2\nretry: 777\ndata: b\n\nid: 3\ndata: c\n\n",
                            [&](const ssepp::message&) { es.close(); });
    CHECK(ec == ssepp::errc::closed);
    CHECK(es.last_event_id() == "1");
    CHECK(es.retry() == before);
    CHECK(es.request_headers().back() == std::pair<std::string, std::string>{"Last-Event-ID", "1"});
}

TEST_CASE("close() is final and keeps the first reason", "[event_source]")
{
    ssepp::event_source es;
    es.close();
    CHECK(es.state() == ssepp::event_source::ready_state::closed);
    CHECK(es.on_response(200, "text/event-stream").open == false);
    CHECK(es.on_response(200, "text/event-stream").reason
        == ssepp::event_source::stop_reason::closed);
    CHECK(es.on_end(refused) == stop);

    ssepp::event_source failed;
    CHECK(failed.on_response(404, "text/html").reason
        == ssepp::event_source::stop_reason::bad_status);
    failed.close();
    CHECK(failed.reason() == ssepp::event_source::stop_reason::bad_status);
}

TEST_CASE("a handler that throws leaves the source usable", "[event_source]")
{
    ssepp::event_source es(exact());
    open(es);
    CHECK_THROWS_AS(
        es.feed("data: boom\n\n", [](const ssepp::message&) { throw std::runtime_error("x"); }),
        std::runtime_error);
    CHECK(es.state() == ssepp::event_source::ready_state::open);
    CHECK(feed(es, "data: after\n\n") == events{{"message", "after", ""}});
}

TEST_CASE("a source can resume from a given last event id", "[event_source]")
{
    auto o = exact();
    o.last_event_id = "41";
    ssepp::event_source es(o);
    CHECK(es.last_event_id() == "41");
    CHECK(
        es.request_headers().back() == std::pair<std::string, std::string>{"Last-Event-ID", "41"});
    open(es);
    // The first response is still a fresh stream (BOM stripped) and its events carry the id.
    CHECK(feed(es, "\xEF\xBB\xBF" "data: a\n\nid: 42\ndata: b\n\n")
          == events{{"message", "a", "41"}, {"message", "b", "42"}});

    // Spaces are kept; invalid UTF-8 is repaired as the stream's would be.
    o.last_event_id = " x ";
    CHECK(ssepp::event_source(o).last_event_id() == " x ");
    o.last_event_id = "a\xFF";
    CHECK(ssepp::event_source(o).last_event_id() == "a\xEF\xBF\xBD");
    // An id that cannot be a header value is refused.
    for (auto bad : {"a\nb"s, "a\rb"s, "a\0b"s}) {
        o.last_event_id = bad;
        CHECK_THROWS_AS(ssepp::event_source(o), std::system_error);
    }
    // So is one longer than the parser's line limit.
    o.last_event_id = std::string(64, 'x');
    o.limits.max_line = 32;
    CHECK_THROWS_AS(ssepp::event_source(o), std::system_error);
}

TEST_CASE("a second response without on_end starts a fresh stream", "[event_source]")
{
    ssepp::event_source es(exact());
    open(es);
    CHECK(feed(es, "data: cut").empty());
    open(es);
    CHECK(feed(es, "data: fresh\n\n") == events{{"message", "fresh", ""}});
}

TEST_CASE("every close reason has a description", "[event_source]")
{
    using r = ssepp::event_source::stop_reason;
    std::set<std::string_view> seen;
    for (auto reason :
        {r::none, r::closed, r::no_content, r::bad_status, r::bad_content_type, r::stream_error}) {
        CHECK(!describe(reason).empty());
        seen.insert(describe(reason));
    }
    CHECK(seen.size() == 6);
}
