// Test that the header is self-contained.
#include <ssepp/registry.hpp>

#include "catch.hpp"
#include "support/registry_support.hpp"

#include <algorithm>
#include <atomic>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "support/asio.hpp"

// Socket-free tests: the registry over test::fake_emitter, which records the frames it is
// queued. The loopback tests are in registry_loopback.cpp.

using namespace std::chrono_literals;
using test::fake;
using test::fake_registry;
using strings = std::vector<std::string>;

namespace {

std::vector<std::string> keys(std::initializer_list<const char*> ks)
{
    return {ks.begin(), ks.end()};
}

ssepp::event data(std::string d) { return {.data = std::move(d)}; }

// The registries whose generated ids a test checks use this epoch: "e-<position>".
std::string id(int n) { return "e-" + std::to_string(n); }

} // namespace

TEST_CASE("registry fans an event out to every connection of its key, formatted once", "[registry]")
{
    fake_registry reg({.id_epoch = "e"});
    auto t1 = fake(), t2 = fake(), t3 = fake(), other = fake();
    reg.attach("u1", t1);
    reg.attach("u1", t2);
    reg.attach("u1", t3);
    reg.attach("u2", other);
    CHECK(reg.size() == 4);
    CHECK(reg.size("u1") == 3);
    CHECK(reg.size("u2") == 1);
    CHECK(reg.size("nobody") == 0);
    for (auto& e : {t1, t2, t3, other})
        CHECK(e->starts() == 1);

    auto r = test::send(reg, "u1", data("hello"));
    REQUIRE(r);
    CHECK(r.connections == 3);
    CHECK(r.id == id(1));
    REQUIRE(t1->frames().size() == 1);
    REQUIRE(t2->frames().size() == 1);
    REQUIRE(t3->frames().size() == 1);
    CHECK(other->frames().empty());
    // One formatted frame, the same object queued to all three.
    CHECK(t1->frames()[0] == t2->frames()[0]);
    CHECK(t1->frames()[0] == t3->frames()[0]);
    CHECK(*t1->frames()[0] == "id: e-1\ndata: hello\n\n");

    auto b = test::broadcast(reg, data("all"));
    REQUIRE(b);
    CHECK(b.connections == 4);
    CHECK(b.id == id(2));
    const auto f = other->frames().at(0);
    for (auto& e : {t1, t2, t3})
        CHECK(e->frames().at(1) == f);
    CHECK(t1->data() == strings{"hello", "all"});
    CHECK(other->data() == strings{"all"});

    // A key nobody listens to: retained, reaches no one.
    auto n = test::send(reg, "u3", data("later"));
    CHECK(n);
    CHECK(n.connections == 0);
    CHECK(reg.contains("u3"));
}

TEST_CASE("registry: a connection under several keys gets each event once", "[registry]")
{
    fake_registry reg;
    auto both = fake(), a_only = fake();
    const auto ks = keys({"a", "b", "a"});  // a key given twice counts once
    reg.attach(std::span<const std::string>(ks), both);
    reg.attach("a", a_only);
    CHECK(reg.size() == 2);
    CHECK(reg.size("a") == 2);
    CHECK(reg.size("b") == 1);

    CHECK(test::send(reg, "a", data("a1")).connections == 2);
    CHECK(test::send(reg, "b", data("b1")).connections == 1);
    CHECK(test::send(reg, "c", data("c1")).connections == 0);
    CHECK(test::send(reg, "a", data("a2")).connections == 2);
    CHECK(both->data() == strings{"a1", "b1", "a2"});
    CHECK(a_only->data() == strings{"a1", "a2"});

    // Replay merges the keys' histories in the one order, each event once.
    auto late = fake();
    auto r = reg.attach(std::span<const std::string>(ks), late);
    CHECK(r.replayed == 3);
    CHECK(late->data() == strings{"a1", "b1", "a2"});

    // Leaving removes it from every key once.
    both->close();
    late->close();
    CHECK(reg.size() == 1);
    CHECK(reg.size("a") == 1);
    CHECK(reg.size("b") == 0);
    CHECK(test::send(reg, "b", data("b2")).connections == 0);
    CHECK(test::send(reg, "a", data("a3")).connections == 1);
}

TEST_CASE("registry: ids, the application's own ids, and invalid events", "[registry]")
{
    fake_registry reg({.id_epoch = "e"});
    auto c = fake();
    reg.attach("k", c);
    CHECK(test::send(reg, "k", data("1")).id == id(1));
    auto own = test::send(reg, "k", {.id = "order-17", .data = "2"});
    CHECK(own.id == "order-17");
    CHECK(test::send(reg, "k", data("3")).id == id(3));  // the own-id event took position 2
    CHECK(test::broadcast(reg, data("4")).id == id(4));

    SECTION("an invalid event is rejected: nothing sent, retained, or numbered")
    {
        const auto before = c->frames().size();
        auto bad = test::send(reg, "k", {.id = "bad\nid", .data = "x"});
        CHECK(!bad);
        CHECK(bad.error == ssepp::errc::invalid_id);
        CHECK(bad.connections == 0);
        CHECK(!test::broadcast(reg, {.event = "a\nb", .data = "x"}));
        CHECK(test::broadcast(reg, {}).error == ssepp::errc::empty_event);  // not made valid by an id
        CHECK(c->frames().size() == before);
        CHECK(test::send(reg, "k", data("5")).id == id(5));  // positions not consumed
        auto late = fake();
        reg.attach("k", late);
        CHECK(late->data() == strings{"1", "2", "3", "4", "5"});
        CHECK(late->events()[1].id == "order-17");
    }
    SECTION("an invalid event to an unknown key leaves no entry behind")
    {
        CHECK(!test::send(reg, "fresh", {.id = "a\rb", .data = "x"}));
        CHECK(!reg.contains("fresh"));
        CHECK(!test::finish(reg, "fresh2", {.id = "a\nb", .data = "x"}));
        CHECK(!reg.contains("fresh2"));
        CHECK(!reg.finished("fresh2"));
        CHECK(test::send(reg, "fresh2", data("ok")));  // not finished
    }
    SECTION("last_id, first_id, keys")
    {
        CHECK(reg.last_id("k") == id(3));
        CHECK(reg.last_id("none") == std::nullopt);
        CHECK(reg.first_id("k") == id(1));
        CHECK(reg.first_id("none") == std::nullopt);
        CHECK(reg.keys() == strings{"k"});
    }
}

TEST_CASE("registry: the overloads without an error_code throw what the others report", "[registry]")
{
    fake_registry reg({.id_epoch = "e"});
    reg.attach("k", fake());
    CHECK(reg.send("k", data("1")).id == id(1));
    CHECK(reg.broadcast(data("2")).connections == 1);
    const auto throws = [](auto&& f, ssepp::errc expected) {
        try {
            f();
        } catch (const ssepp::system_error& e) {
            return e.code() == expected;
        }
        return false;
    };
    CHECK(throws([&] { reg.send("k", {.id = "a\nb", .data = "x"}); }, ssepp::errc::invalid_id));
    CHECK(throws([&] { reg.broadcast({}); }, ssepp::errc::empty_event));
    CHECK(reg.finish("k", data("end")).id == id(3));
    CHECK(throws([&] { reg.send("k", data("late")); }, ssepp::errc::closed));
    CHECK(throws([&] { reg.finish("k", data("again")); }, ssepp::errc::closed));
    CHECK(reg.last_id("k") == id(3));  // nothing refused was retained
}

TEST_CASE("registry: async_send completes once no connection of the key is over half its bound", "[registry]")
{
    fake_registry reg({.max_event_bytes = 1000});
    asio::io_context io;  // the handler's executor: completions run only when the test polls it
    auto slow = fake();
    auto fast = fake();
    auto other = fake();
    slow->hold(1000);
    other->hold(1000);
    reg.attach("k", slow);
    reg.attach("k", fast);
    reg.attach("other", other);
    const auto event = data(std::string(290, 'x'));  // a 300-byte frame
    std::vector<std::pair<ssepp::error_code, ssepp::send_result>> done;
    const auto send = [&](const std::string& key) {
        reg.async_send(key, event, asio::bind_executor(io, [&](ssepp::error_code ec, ssepp::send_result r) {
                           done.emplace_back(ec, std::move(r));
                       }));
        io.restart();
        io.poll();
    };
    send("k");  // 300 of 1000 queued on the slow one: not behind
    REQUIRE(done.size() == 1);
    CHECK(!done[0].first);
    CHECK(done[0].second.connections == 2);
    send("k");  // 600: past half
    CHECK(done.size() == 1);
    send("other");  // another key's connection is not waited for, and this key's are not its
    CHECK(done.size() == 2);
    slow->poll();  // still 600 queued
    io.restart();
    io.poll();
    CHECK(done.size() == 2);
    slow->drain();  // written: the wait is over
    io.restart();
    io.poll();
    REQUIRE(done.size() == 3);
    CHECK(!done[2].first);
    CHECK(done[2].second.id == reg.last_id("k"));
    CHECK(slow->data().size() == 2);
    CHECK(fast->data().size() == 2);

    SECTION("a refused event completes at once with its error")
    {
        reg.async_send("k", {.id = "a\nb", .data = "x"}, asio::bind_executor(io, [&](ssepp::error_code ec, ssepp::send_result) {
                           done.emplace_back(ec, ssepp::send_result{});
                       }));
        io.restart();
        io.poll();
        REQUIRE(done.size() == 4);
        CHECK(done[3].first == ssepp::errc::invalid_id);
    }
    SECTION("a connection that closes is not behind any more")
    {
        send("k");
        send("k");  // 600 queued on the slow one again
        REQUIRE(done.size() == 4);
        slow->close();  // its wait completes with errc::closed, as a real emitter's does
        io.restart();
        io.poll();
        REQUIRE(done.size() == 5);
        CHECK(!done[4].first);  // the send itself succeeded
    }
}

TEST_CASE("registry: send_batch queues several events as one frame, numbered and retained one by one",
          "[registry]")
{
    fake_registry reg({.max_event_bytes = 100, .id_epoch = "e"});
    auto c = fake();
    auto small = fake();
    small->limit(100);  // a bound smaller than the batch: it gets the frames one by one
    reg.attach("k", c);
    reg.attach("k", small);
    test::send(reg, "k", data("0"));
    std::vector<ssepp::event> batch;
    for (int i = 1; i <= 5; ++i)
        batch.push_back(data(std::string(20, char('a' + i))));
    batch[2].id = "own";
    ssepp::error_code ec;
    const auto r = reg.send_batch("k", batch, ec);
    REQUIRE(!ec);
    CHECK(r.connections == 2);
    CHECK(r.id == id(6));
    CHECK(c->frames().size() == 2);  // the single event, then the whole batch
    REQUIRE(c->events().size() == 6);
    CHECK(c->events()[3].id == "own");
    CHECK(c->events()[5].id == id(6));
    CHECK(c->written_seq() == 6);  // tagged with the batch's last position
    CHECK(small->frames().size() == 6);
    CHECK(small->data() == c->data());
    // The history holds them one by one: a resume from inside the batch starts after that event.
    auto late = fake();
    reg.attach("k", late, {.last_event_id = "own"});
    CHECK(late->data() == strings{std::string(20, 'e'), std::string(20, 'f')});

    SECTION("an invalid event refuses the whole batch: nothing sent, retained or numbered")
    {
        batch[4].event = "bad\nname";
        const auto before = c->frames().size();
        reg.send_batch("k", batch, ec);
        CHECK(ec == ssepp::errc::invalid_event_name);
        CHECK(c->frames().size() == before);
        CHECK(reg.last_id("k") == id(6));
        CHECK(test::send(reg, "k", data("next")).id == id(7));
    }
    SECTION("broadcast_batch reaches every connection, and a finished key refuses a batch")
    {
        auto other = fake();
        reg.attach("other", other);
        reg.broadcast_batch(std::span(batch).first(2), ec);
        REQUIRE(!ec);
        CHECK(other->data().size() == 2);
        CHECK(c->data().size() == 8);
        test::finish(reg, "other", data("end"));
        reg.send_batch("other", batch, ec);
        CHECK(ec == ssepp::errc::closed);
    }
}

TEST_CASE("registry: generated ids never repeat across registries, foreign and duplicate ids lose nothing",
          "[registry]")
{
    SECTION("each registry (a process, a restart) draws its own epoch")
    {
        fake_registry a, b;
        CHECK(a.id_epoch().size() == 8);
        CHECK(a.id_epoch() != b.id_epoch());
        CHECK(test::send(a, "k", data("x")).id == a.id_epoch() + "-1");
        CHECK(fake_registry({.id_epoch = "node7"}).send("k", data("x")).id == "node7-1");
        CHECK_THROWS_AS(fake_registry({.id_epoch = "a\nb"}), std::invalid_argument);
    }
    SECTION("an id from before a restart is a gap: the whole history follows, nothing skipped")
    {
        std::string before_restart;
        {
            fake_registry old;
            for (int i = 1; i <= 5; ++i)
                before_restart = test::send(old, "k", data("old" + std::to_string(i))).id;
        }
        fake_registry now;  // the restarted process, same kind of ids, same positions
        for (int i = 1; i <= 7; ++i)
            test::send(now, "k", data("new" + std::to_string(i)));
        auto c = fake();
        auto r = now.attach("k", c, {.last_event_id = before_restart});
        CHECK(r.gap);
        CHECK(!r.resumed);
        CHECK(c->data().size() == 7);
    }
    SECTION("an application id \"5\" does not meet the registry's own fifth")
    {
        fake_registry reg;
        test::send(reg, "k", {.id = "5", .data = "app"});  // position 1
        for (int i = 2; i <= 6; ++i)
            test::send(reg, "k", data("gen" + std::to_string(i)));
        auto c = fake();
        auto r = reg.attach("k", c, {.last_event_id = "5"});
        CHECK(r.resumed);
        CHECK(c->data() == strings{"gen2", "gen3", "gen4", "gen5", "gen6"});
    }
    SECTION("duplicate application ids: the replay starts after the oldest (a duplicate, not a loss)")
    {
        fake_registry reg;
        test::send(reg, "k", {.id = "dup", .data = "first"});
        test::send(reg, "k", data("between"));
        test::send(reg, "k", {.id = "dup", .data = "second"});
        test::send(reg, "k", data("after"));
        auto c = fake();
        auto r = reg.attach("k", c, {.last_event_id = "dup"});
        CHECK(r.resumed);
        CHECK(c->data() == strings{"between", "second", "after"});
    }
}

TEST_CASE("registry: an event over max_event_bytes is rejected, an emitter that could not queue one "
          "is refused at attach",
          "[registry]")
{
    fake_registry reg({.max_event_bytes = 100});
    auto c = fake();
    reg.attach("k", c);
    auto big = test::send(reg, "k", data(std::string(200, 'x')));
    CHECK(big.error == ssepp::errc::event_too_large);
    CHECK(big.connections == 0);
    CHECK(!test::broadcast(reg, data(std::string(200, 'x'))));
    CHECK(c->frames().empty());
    CHECK(!reg.contains("other"));
    CHECK(test::send(reg, "k", data("small")));
    CHECK(c->data() == strings{"small"});  // positions not consumed, the stream still open

    asio::io_context io;
    ssepp::registry real;  // max_event_bytes 64 KiB by default
    ssepp::http_body body(asio::ip::tcp::socket(io, asio::ip::tcp::v4()));  // open: GCC 12 warns on moving a never-opened socket
    auto tiny = ssepp::make_emitter(std::move(body), {.max_queued_bytes = 16 << 10});
    CHECK_THROWS_AS(real.attach("k", tiny), std::invalid_argument);
    CHECK(real.size() == 0);
}

TEST_CASE("registry: history_options::max_age drops old events from replays", "[registry]")
{
    fake_registry reg({.max_age = 100ms});
    test::send(reg, "k", data("old"));
    test::broadcast(reg, data("old broadcast"));
    const auto sent = test::clock::now();
    // Wait until the first events are past their age (a bound, not a guess: the clock decides).
    REQUIRE(test::eventually([&] { return test::clock::now() - sent > 150ms; }, 2s, 10ms));
    test::send(reg, "k", data("new"));
    auto c = fake();
    auto r = reg.attach("k", c);
    CHECK(c->data() == strings{"new"});
    CHECK(r.replayed == 1);
    auto resumed = fake();
    CHECK(reg.attach("k", resumed, {.last_event_id = reg.last_id("k")}).resumed);
}

TEST_CASE("registry: attach_options::prefix goes out after on_gap, before the replay and live events",
          "[registry]")
{
    fake_registry reg;
    test::send(reg, "k", data("local1"));
    auto c = fake();
    std::vector<ssepp::shared_frame> prefix{ssepp::make_raw_frame("data: shared1\n\n"), nullptr,
                                            ssepp::make_raw_frame("data: shared2\n\n")};
    auto r = reg.attach("k", c,
                        {.last_event_id = "unknown", .on_gap = ssepp::event{.data = "gap"}, .prefix = prefix});
    CHECK(r.gap);
    CHECK(r.replayed == 1);
    test::send(reg, "k", data("live"));
    CHECK(c->data() == strings{"gap", "shared1", "shared2", "local1", "live"});
}

TEST_CASE("registry: a replay beyond the queue bound is fed as the connection drains", "[registry]")
{
    fake_registry reg({.max_events = 100, .max_bytes = 1 << 20, .max_event_bytes = 1000});
    const std::string payload(290, 'x');  // frames of 300 bytes ("data: " + 290 + "\n\n" + ...)
    for (int i = 0; i < 10; ++i)
        test::send(reg, "k", data(std::to_string(i) + payload.substr(1)));
    const auto frame_size = ssepp::format({.id = reg.last_id("k"), .data = "0" + payload.substr(1)}).size();

    SECTION("in order, a bound at a time, the live events after it, one drain request per drain")
    {
        auto c = fake();
        c->hold(1000);
        auto r = reg.attach("k", c);
        CHECK(r.replayed == 10);
        const auto per_bound = 1000 / frame_size;
        CHECK(c->frames().size() == per_bound);
        CHECK(c->queued_bytes() <= 1000);
        test::send(reg, "k", data("live1"));  // behind the replay
        int drains = 0;
        while (c->frames().size() < 11 && drains < 20) {
            c->drain();
            ++drains;
            CHECK(c->queued_bytes() <= 1000);
        }
        CHECK(c->drain_requests() <= drains + 1);  // attach, the live send, one per drain: no busy loop
        test::send(reg, "k", data("live2"));            // caught up: straight to the connection
        const auto d = c->data();
        REQUIRE(d.size() == 12);
        for (int i = 0; i < 10; ++i)
            CHECK(d[std::size_t(i)].front() == char('0' + i));
        CHECK(d[10] == "live1");
        CHECK(d[11] == "live2");
        CHECK(!c->overflowed());
    }
    SECTION("frames over half the bound: one request per frame, not one per write")
    {
        fake_registry big({.max_event_bytes = 1000});
        for (int i = 0; i < 4; ++i)
            test::send(big, "k", data(std::string(600, 'y')));
        auto c = fake();
        c->hold(1000);
        big.attach("k", c);
        CHECK(c->frames().size() == 1);
        c->poll();  // 600 queued: more than the 400 the next frame needs
        CHECK(c->frames().size() == 1);
        for (int i = 0; i < 3; ++i)
            c->drain();
        CHECK(c->frames().size() == 4);
        // Three for room, and one more: 600 bytes are still queued, over half the bound.
        CHECK(c->drain_requests() == 4);
        // So a live event still goes through the feed instead of overflowing a client that
        // keeps up (found in CI: a live send right after the replay met the overflow policy).
        CHECK(test::send(big, "k", data(std::string(600, 'l'))).connections == 1);
        CHECK(!c->overflowed());
        c->drain();
        CHECK(c->frames().size() == 5);
        CHECK(!c->overflowed());
    }
    SECTION("live events behind a stalled replay: at most one bound, then the overflow policy")
    {
        auto c = fake();
        c->hold(1000);
        reg.attach("k", c);
        int taken = 0;
        while (taken < 100 && test::send(reg, "k", data(payload)).connections == 1)
            ++taken;
        CHECK(taken * frame_size <= 1000 + frame_size);
        CHECK(c->overflowed());
    }
    SECTION("a prefix frame larger than the bound is left out, and a gap reported")
    {
        auto c = fake();
        c->hold(1000);
        auto r = reg.attach("k", c, {.prefix = {ssepp::make_raw_frame("data: " + std::string(2000, 'z') + "\n\n"),
                                                ssepp::make_raw_frame("data: small\n\n")}});
        CHECK(r.gap);
        for (int i = 0; i < 20 && c->frames().size() < 11; ++i)
            c->drain();
        const auto d = c->data();
        REQUIRE(d.size() == 11);
        CHECK(d[0] == "small");
    }
}

TEST_CASE("registry: history is bounded by count and by bytes", "[registry]")
{
    SECTION("count")
    {
        fake_registry reg({.max_events = 3});
        for (int i = 1; i <= 5; ++i)
            test::send(reg, "k", data(std::to_string(i)));
        for (int i = 1; i <= 5; ++i)
            test::broadcast(reg, data("b" + std::to_string(i)));
        auto c = fake();
        auto r = reg.attach("k", c);
        CHECK(r.replayed == 6);
        CHECK(!r.gap);  // replay::all reports no gap
        CHECK(c->data() == strings{"3", "4", "5", "b3", "b4", "b5"});
    }
    SECTION("bytes, counted as formatted")
    {
        // "id: N\ndata: " + 90 bytes + "\n\n": 104 bytes each; three fit in 350.
        fake_registry reg({.max_events = 100, .max_bytes = 350});
        for (int i = 1; i <= 6; ++i)
            test::send(reg, "k", {.id = std::to_string(i), .data = std::string(90, 'x')});
        auto c = fake();
        reg.attach("k", c);
        const auto ev = c->events();
        REQUIRE(ev.size() == 3);
        CHECK(ev[0].id == "4");
        CHECK(ev[2].id == "6");
    }
    SECTION("an event larger than max_bytes is still kept, alone")
    {
        fake_registry reg({.max_events = 100, .max_bytes = 64});
        test::send(reg, "k", data("small"));
        test::send(reg, "k", data(std::string(200, 'y')));
        auto c = fake();
        reg.attach("k", c);
        REQUIRE(c->data().size() == 1);
        CHECK(c->data()[0].size() == 200);
    }
    SECTION("max_events 0 keeps nothing, and no empty key entry")
    {
        fake_registry reg({.max_events = 0});
        test::send(reg, "k", data("1"));
        CHECK(!reg.contains("k"));
        auto c = fake();
        reg.attach("k", c);
        CHECK(c->frames().empty());
        test::send(reg, "k", data("2"));
        CHECK(c->data() == strings{"2"});
        c->close();
        CHECK(!reg.contains("k"));
        CHECK(reg.size() == 0);
    }
}

TEST_CASE("registry: Last-Event-ID resumes after that event, merged across keys", "[registry]")
{
    fake_registry reg({.max_events = 4, .id_epoch = "e"});
    const auto ab = keys({"a", "b"});
    test::send(reg, "a", data("a1"));               // 1
    test::send(reg, "b", data("b1"));               // 2
    test::broadcast(reg, data("x1"));               // 3
    test::send(reg, "a", {.id = "own", .data = "a2"});  // 4
    test::send(reg, "c", data("c1"));               // 5 (another key)
    test::send(reg, "b", data("b2"));               // 6

    SECTION("from the middle, then live")
    {
        auto c = fake();
        auto r = reg.attach(std::span<const std::string>(ab), c, {.last_event_id = id(1)});
        CHECK(r.resumed);
        CHECK(!r.gap);
        CHECK(r.replayed == 4);
        test::send(reg, "a", data("a3"));
        test::send(reg, "c", data("c2"));
        CHECK(c->data() == strings{"b1", "x1", "a2", "b2", "a3"});
        // ids as sent: assigned positions, the application's own kept
        const auto ev = c->events();
        CHECK(ev[2].id == "own");
        CHECK(ev[3].id == id(6));
    }
    SECTION("an application id is found by value")
    {
        auto c = fake();
        auto r = reg.attach(std::span<const std::string>(ab), c, {.last_event_id = "own"});
        CHECK(r.resumed);
        CHECK(!r.gap);
        CHECK(c->data() == strings{"b2"});
    }
    SECTION("from the newest: nothing to replay, Last-Event-ID wins over replay::all")
    {
        auto c = fake();
        auto r = reg.attach("b", c, {.last_event_id = id(6)});
        CHECK(r.resumed);
        CHECK(r.replayed == 0);
        CHECK(c->frames().empty());
    }
    SECTION("Last-Event-ID wins over replay::none")
    {
        auto c = fake();
        auto r = reg.attach("b", c, {.last_event_id = id(2), .otherwise = ssepp::replay::none});
        CHECK(r.resumed);
        CHECK(c->data() == strings{"x1", "b2"});
    }
    SECTION("an unknown id: gap, on_gap first, then the whole retained history")
    {
        auto c = fake();
        auto r = reg.attach(std::span<const std::string>(ab), c,
                            {.last_event_id = "nope",
                             .otherwise = ssepp::replay::none,
                             .on_gap = ssepp::event{.event = "reset", .data = "gap"}});
        CHECK(r.gap);
        CHECK(!r.resumed);
        const auto ev = c->events();
        REQUIRE(ev.size() == 6);
        CHECK(ev[0].type == "reset");
        CHECK(c->data() == strings{"gap", "a1", "b1", "x1", "a2", "b2"});
    }
    SECTION("an id of another key is not this connection's: gap")
    {
        auto c = fake();
        auto r = reg.attach("a", c, {.last_event_id = id(5)});
        CHECK(r.gap);
        CHECK(c->data() == strings{"a1", "x1", "a2"});
    }
    SECTION("an evicted id: gap")
    {
        for (int i = 0; i < 4; ++i)
            test::send(reg, "a", data("more"));  // evicts a1 (id 1) and own (4)
        auto c = fake();
        auto r = reg.attach("a", c, {.last_event_id = id(1), .on_gap = ssepp::event{.data = "gap"}});
        CHECK(r.gap);
        CHECK(c->data() == strings{"gap", "x1", "more", "more", "more", "more"});
    }
    SECTION("the id is retained in one key but events after it were evicted from another: gap")
    {
        for (int i = 0; i < 4; ++i)
            test::send(reg, "b", data("b" + std::to_string(i + 3)));  // b: 7..10; b2 (6) evicted
        auto c = fake();
        auto r = reg.attach(std::span<const std::string>(ab), c,
                            {.last_event_id = "own", .on_gap = ssepp::event{.data = "gap"}});
        CHECK(r.resumed);
        CHECK(r.gap);
        CHECK(c->data() == strings{"gap", "b3", "b4", "b5", "b6"});
    }
    SECTION("evictions before the id are no gap")
    {
        for (int i = 0; i < 4; ++i)
            test::send(reg, "a", data("a" + std::to_string(i + 3)));  // evicts a1 (1) and own (4)
        auto c = fake();
        auto r = reg.attach(std::span<const std::string>(ab), c, {.last_event_id = id(6)});
        CHECK(r.resumed);
        CHECK(!r.gap);
        CHECK(c->data() == strings{"a3", "a4", "a5", "a6"});
    }
}

TEST_CASE("registry: replay policies without Last-Event-ID", "[registry]")
{
    fake_registry reg;
    using ssepp::replay;

    SECTION("all: a late subscriber gets everything retained")
    {
        test::send(reg, "job", data("10%"));
        test::send(reg, "job", data("50%"));
        auto c = fake();
        auto r = reg.attach("job", c, {.otherwise = replay::all});
        CHECK(r.replayed == 2);
        CHECK(!r.resumed);
        CHECK(c->data() == strings{"10%", "50%"});
    }
    SECTION("none: live events only")
    {
        test::send(reg, "ticker", data("old"));
        test::broadcast(reg, data("old broadcast"));
        auto c = fake();
        auto r = reg.attach("ticker", c, {.otherwise = replay::none});
        CHECK(r.replayed == 0);
        test::send(reg, "ticker", data("new"));
        CHECK(c->data() == strings{"new"});
    }
    SECTION("undelivered: what was sent while the user was offline, once")
    {
        const ssepp::attach_options undelivered{.otherwise = replay::undelivered};
        test::send(reg, "user", data("n1"));
        test::send(reg, "user", data("n2"));
        auto c1 = fake();
        auto r = reg.attach("user", c1, undelivered);
        CHECK(r.replayed == 2);
        CHECK(!r.gap);
        CHECK(c1->data() == strings{"n1", "n2"});
        test::send(reg, "user", data("n3"));  // delivered live
        c1->close();
        test::send(reg, "user", data("n4"));  // offline
        test::send(reg, "other", data("o1"));
        auto c2 = fake();
        reg.attach("user", c2, undelivered);
        CHECK(c2->data() == strings{"n4"});
        // A second tab opening while the first is online gets nothing old.
        auto c3 = fake();
        CHECK(reg.attach("user", c3, undelivered).replayed == 0);
        test::send(reg, "user", data("n5"));
        CHECK(c2->data() == strings{"n4", "n5"});
        CHECK(c3->data() == strings{"n5"});
        // Nor does the next connection after everyone left.
        c2->close();
        c3->close();
        auto c4 = fake();
        CHECK(reg.attach("user", c4, undelivered).replayed == 0);
    }
    SECTION("undelivered: an event a completing connection refused is not delivered")
    {
        const ssepp::attach_options undelivered{.otherwise = replay::undelivered};
        auto c1 = fake();
        reg.attach("user", c1, undelivered);
        test::send(reg, "user", data("n1"));
        CHECK(reg.complete("user") == 1);  // c1 completes: it refuses what follows
        CHECK(test::send(reg, "user", data("n2")).connections == 0);
        c1->close();
        auto c2 = fake();
        auto r = reg.attach("user", c2, undelivered);
        CHECK(!r.gap);
        CHECK(c2->data() == strings{"n2"});
    }
    SECTION("undelivered: per key, for a connection under several keys")
    {
        const ssepp::attach_options undelivered{.otherwise = replay::undelivered};
        auto a_tab = fake();
        reg.attach("a", a_tab, undelivered);
        test::send(reg, "b", data("b1"));  // b offline
        test::send(reg, "a", data("a1"));  // delivered to a_tab, after b1
        const auto ab = keys({"a", "b"});
        auto c = fake();
        auto r = reg.attach(std::span<const std::string>(ab), c, undelivered);
        CHECK(r.replayed == 1);
        CHECK(c->data() == strings{"b1"});
    }
    SECTION("undelivered: broadcasts sent while offline arrive, broadcasts received do not again")
    {
        const ssepp::attach_options undelivered{.otherwise = replay::undelivered};
        test::send(reg, "user", data("own"));  // the key has a history, so it is remembered
        auto c1 = fake();
        reg.attach("user", c1, undelivered);
        test::broadcast(reg, data("while online"));
        c1->close();
        test::broadcast(reg, data("while offline"));
        auto c2 = fake();
        reg.attach("user", c2, undelivered);
        CHECK(c2->data() == strings{"while offline"});
    }
    SECTION("undelivered: a key with nothing retained is forgotten; its next connection gets every "
            "retained broadcast, a duplicate rather than a loss")
    {
        const ssepp::attach_options undelivered{.otherwise = replay::undelivered};
        auto c1 = fake();
        reg.attach("user", c1, undelivered);
        test::broadcast(reg, data("while online"));
        c1->close();
        CHECK(!reg.contains("user"));
        CHECK(reg.key_count() == 0);
        test::broadcast(reg, data("while offline"));
        auto c2 = fake();
        reg.attach("user", c2, undelivered);
        CHECK(c2->data() == strings{"while online", "while offline"});
    }
    SECTION("undelivered: an undelivered event already evicted is a gap")
    {
        fake_registry small({.max_events = 2});
        for (int i = 1; i <= 4; ++i)
            test::send(small, "user", data("n" + std::to_string(i)));
        auto c = fake();
        auto r = small.attach("user", c,
                              {.otherwise = replay::undelivered, .on_gap = ssepp::event{.data = "gap"}});
        CHECK(r.gap);
        CHECK(c->data() == strings{"gap", "n3", "n4"});
        // Evictions of what was delivered are no gap.
        test::send(small, "user", data("n5"));
        test::send(small, "user", data("n6"));
        test::send(small, "user", data("n7"));
        c->close();
        auto c2 = fake();
        auto r2 = small.attach("user", c2, {.otherwise = replay::undelivered});
        CHECK(!r2.gap);
        CHECK(c2->frames().empty());
    }
}

TEST_CASE("registry: delivered_id and mark_delivered carry what was written between processes", "[registry]")
{
    fake_registry reg;
    const ssepp::attach_options undelivered{.otherwise = ssepp::replay::undelivered};
    CHECK(!reg.delivered_id("user"));
    CHECK(!reg.mark_delivered("user", [](std::string_view) { return true; }));  // nothing retained
    for (const auto* id : {"1-0", "2-0", "3-0", "4-0"})
        test::send(reg, "user", {.id = id, .data = id});
    CHECK(!reg.delivered_id("user"));  // no connection wrote anything yet

    // Another process says its connections wrote through 2-0: undelivered starts after it.
    std::vector<std::string> asked;
    CHECK(reg.mark_delivered("user", [&](std::string_view id) {
        asked.emplace_back(id);
        return id <= "2-0";
    }));
    CHECK(asked == strings{"4-0", "3-0", "2-0"});  // newest first, up to the first accepted
    CHECK(reg.delivered_id("user") == "2-0");
    auto c = fake();
    reg.attach("user", c, undelivered);
    CHECK(c->data() == strings{"3-0", "4-0"});
    CHECK(reg.delivered_id("user") == "4-0");  // the live connection wrote them
    // A mark never goes back.
    CHECK(reg.mark_delivered("user", [](std::string_view id) { return id <= "1-0"; }));
    CHECK(reg.delivered_id("user") == "4-0");
    c->close();
    auto late = fake();
    CHECK(reg.attach("user", late, undelivered).replayed == 0);
}

TEST_CASE("registry: finish sends the outcome, completes, lingers, then forgets", "[registry]")
{
    fake_registry reg({.finished_linger = 100ms, .id_epoch = "e"});
    auto live = fake();
    reg.attach("job", live);
    test::send(reg, "job", data("50%"));
    auto r = test::finish(reg, "job", {.event = "complete", .data = "done"});
    REQUIRE(r);
    CHECK(r.connections == 1);
    CHECK(r.id == id(2));
    CHECK(live->data() == strings{"50%", "done"});
    CHECK(live->completed());
    CHECK(reg.finished("job"));
    CHECK(reg.last_id("job") == id(2));

    CHECK(test::send(reg, "job", data("late")).error == ssepp::errc::closed);
    CHECK(test::finish(reg, "job", data("again")).error == ssepp::errc::closed);
    live->close();

    // A client arriving during the linger gets the replay and the outcome, then is completed.
    auto late = fake();
    auto a = reg.attach("job", late);
    CHECK(a.finished);
    CHECK(a.replayed == 2);
    CHECK(late->events().back().type == "complete");
    CHECK(late->completed());
    late->close();
    auto resumed = fake();
    auto b = reg.attach("job", resumed, {.last_event_id = id(1)});
    CHECK(b.finished);
    CHECK(resumed->data() == strings{"done"});
    CHECK(resumed->completed());
    resumed->close();

    // After the linger the key is forgotten.
    CHECK(test::eventually([&] { return !reg.contains("job"); }, 2s));
    CHECK(!reg.finished("job"));
    CHECK(reg.last_id("job") == std::nullopt);
    auto fresh = fake();
    auto f = reg.attach("job", fresh);
    CHECK(!f.finished);
    CHECK(f.replayed == 0);
    CHECK(!fresh->completed());
    CHECK(test::send(reg, "job", data("new run")));
    CHECK(fresh->data() == strings{"new run"});
}

TEST_CASE("registry: finish retains the outcome even when no history is kept", "[registry]")
{
    fake_registry reg({.max_events = 0, .finished_linger = 10s});
    test::send(reg, "job", data("progress"));
    test::finish(reg, "job", {.event = "error", .data = "failed"});
    auto late = fake();
    auto r = reg.attach("job", late);
    CHECK(r.finished);
    CHECK(late->data() == strings{"failed"});
    CHECK(late->completed());
}

TEST_CASE("registry: finish and connections under several keys", "[registry]")
{
    fake_registry reg({.finished_linger = 50ms});
    const auto ks = keys({"job", "user"});
    auto c = fake();
    reg.attach(std::span<const std::string>(ks), c);
    test::finish(reg, "job", data("job done"));
    CHECK(!c->completed());  // still under "user"
    CHECK(test::send(reg, "user", data("hi")).connections == 1);

    SECTION("completed once its last key is finished")
    {
        test::finish(reg, "user", data("bye"));
        CHECK(c->completed());
        CHECK(c->data() == strings{"job done", "hi", "bye"});
    }
    SECTION("even when the first key's linger ran out in between")
    {
        CHECK(test::eventually([&] { return !reg.finished("job"); }, 2s));
        test::finish(reg, "user", data("bye"));
        CHECK(c->completed());
    }
    SECTION("attaching under a finished and a live key stays open")
    {
        auto d = fake();
        auto r = reg.attach(std::span<const std::string>(ks), d);
        CHECK(!r.finished);
        CHECK(!d->completed());
        CHECK(d->data() == strings{"job done", "hi"});
        test::finish(reg, "user", data("bye"));
        CHECK(d->completed());
    }
}

TEST_CASE("registry: a key finished again after erase lingers for its own time", "[registry]")
{
    const auto linger = 600ms;
    fake_registry reg({.finished_linger = linger});
    const auto t0 = test::clock::now();
    test::finish(reg, "job", data("first"));
    reg.erase("job");
    CHECK(!reg.contains("job"));
    CHECK(!reg.finished("job"));
    std::this_thread::sleep_until(t0 + linger / 2);
    const auto t2 = test::clock::now();
    test::finish(reg, "job", data("second"));
    // Past the first finish's linger, within the second's.
    std::this_thread::sleep_until(t0 + linger + 20ms);
    const bool in_window = test::clock::now() < t2 + linger;
    CHECK(in_window);
    CHECK(reg.finished("job"));
    CHECK(test::eventually([&] { return !reg.contains("job"); }, 3s));
}

TEST_CASE("registry: close(key) and erase(key)", "[registry]")
{
    fake_registry reg;
    auto a1 = fake(), a2 = fake(), b = fake();
    reg.attach("a", a1);
    reg.attach("a", a2);
    reg.attach("b", b);
    test::send(reg, "a", data("1"));
    CHECK(reg.complete("a") == 2);
    CHECK(reg.complete("nobody") == 0);
    CHECK(a1->completed());
    CHECK(a2->completed());
    CHECK(!b->completed());
    a1->close(ssepp::close_reason::completed);
    a2->close(ssepp::close_reason::completed);
    CHECK(reg.size() == 1);
    // History stays after close.
    auto again = fake();
    reg.attach("a", again);
    CHECK(again->data() == strings{"1"});

    reg.erase("a");
    CHECK(again->completed());
    again->close();
    CHECK(!reg.contains("a"));
    auto after = fake();
    CHECK(reg.attach("a", after).replayed == 0);
}

TEST_CASE("registry: connections leave by themselves, empty keys disappear", "[registry]")
{
    fake_registry reg;
    auto c1 = fake(), c2 = fake(), c3 = fake();
    reg.attach("x", c1);
    reg.attach("y", c2);
    reg.attach("z", c3);
    CHECK(reg.contains("y"));
    c2->close();  // from the middle of the list
    CHECK(reg.size() == 2);
    CHECK(!reg.contains("y"));  // no connections and no history
    CHECK(test::broadcast(reg, data("b")).connections == 2);
    CHECK(c1->data() == strings{"b"});
    CHECK(c3->data() == strings{"b"});
    CHECK(c2->frames().empty());
    test::send(reg, "x", data("kept"));
    c1->close();
    CHECK(reg.contains("x"));  // history keeps it
    c3->close();
    CHECK(reg.size() == 0);
    CHECK(!reg.contains("z"));
    CHECK(test::broadcast(reg, data("to nobody")).connections == 0);
}

TEST_CASE("registry: destroyed while connections are open", "[registry]")
{
    auto c1 = fake(), c2 = fake();
    {
        fake_registry reg;
        reg.attach("a", c1);
        const auto ks = keys({"a", "b"});
        reg.attach(std::span<const std::string>(ks), c2);
        test::send(reg, "a", data("1"));
    }
    CHECK(c1->completed());
    CHECK(c2->completed());
    // Their close handlers run after the registry is gone: nothing happens (ASan watches).
    c1->close(ssepp::close_reason::completed);
    c2->close(ssepp::close_reason::completed);
    CHECK(c1->data() == strings{"1"});
}

namespace {

// A key that counts its live copies: the registry's entries for it are observable.
struct counted_key {
    std::string s;
    static inline std::atomic<int> live{0};
    counted_key(std::string v) : s(std::move(v)) { ++live; }
    counted_key(const char* v) : s(v) { ++live; }
    counted_key(const counted_key& o) : s(o.s) { ++live; }
    counted_key(counted_key&& o) noexcept : s(std::move(o.s)) { ++live; }
    counted_key& operator=(const counted_key&) = default;
    counted_key& operator=(counted_key&&) = default;
    ~counted_key() { --live; }
    friend bool operator==(const counted_key& a, const counted_key& b) { return a.s == b.s; }
};

} // namespace

template <>
struct std::hash<counted_key> {
    std::size_t operator()(const counted_key& k) const noexcept { return std::hash<std::string>()(k.s); }
};

TEST_CASE("registry: no key entry outlives its use", "[registry]")
{
    using reg_t = ssepp::basic_registry<counted_key, test::fake_emitter>;
    REQUIRE(counted_key::live == 0);
    reg_t reg({.max_events = 2, .finished_linger = 20ms});
    const ssepp::attach_options undelivered{.otherwise = ssepp::replay::undelivered};

    SECTION("connections come and go")
    {
        for (int i = 0; i < 50; ++i) {
            auto c = fake();
            reg.attach(counted_key("user" + std::to_string(i)), c, undelivered);
            test::send(reg, "user" + std::to_string(i % 7), data("x"));  // some keys get a history
            c->close();
        }
        CHECK(counted_key::live == 7);  // the seven keys with history
        for (int i = 0; i < 7; ++i)
            reg.erase("user" + std::to_string(i));
        CHECK(counted_key::live == 0);
    }
    SECTION("retained broadcasts keep no key alive (issue 16: 100k keys once stayed forever)")
    {
        test::broadcast(reg, data("retained"));
        for (int i = 0; i < 2000; ++i) {
            auto c = fake();
            reg.attach(counted_key("user" + std::to_string(i)), c, undelivered);
            test::broadcast(reg, data("b"));
            c->close();
        }
        CHECK(reg.key_count() == 0);
        CHECK(counted_key::live == 0);
        CHECK(reg.size() == 0);
    }
    SECTION("finished keys are forgotten after the linger")
    {
        for (int i = 0; i < 20; ++i)
            test::finish(reg, "job" + std::to_string(i), data("done"));
        CHECK(counted_key::live == 40);  // entries and linger queue
        CHECK(test::eventually([&] { return !reg.contains("job19"); }, 2s));
        CHECK(counted_key::live == 0);
    }
    SECTION("a rejected event leaves nothing")
    {
        CHECK(!test::send(reg, "k", {.id = "a\nb", .data = "x"}));
        CHECK(!test::finish(reg, "k", {.id = "a\nb", .data = "x"}));
        CHECK(counted_key::live == 0);
    }
}

TEST_CASE("registry: random operations agree with a model", "[registry]")
{
    const auto seed = GENERATE(1u, 2u, 3u, 4u, 5u, 6u);
    CAPTURE(seed);
    std::mt19937 rng(seed);
    auto pick = [&](std::size_t n) { return std::uniform_int_distribution<std::size_t>(0, n - 1)(rng); };

    // No eviction and no purge: the model is the whole log.
    fake_registry reg({.max_events = 100000, .max_bytes = std::size_t(1) << 30, .finished_linger = 1h});
    const strings all_keys{"a", "b", "c", "d"};

    struct logged {
        std::uint64_t seq;
        std::string id;
        std::string key;  // empty: broadcast
        std::string data;
    };
    struct conn {
        std::shared_ptr<test::fake_emitter> em;
        std::set<std::string> keys;
        strings expected;
        bool attached = true;
        bool completed = false;
    };
    std::vector<logged> log;
    std::vector<conn> conns;
    std::set<std::string> finished;
    std::uint64_t seq = 0;

    auto relevant = [](const conn& c, const logged& e) { return e.key.empty() || c.keys.contains(e.key); };
    auto all_finished = [&](const conn& c) {
        return !c.keys.empty()
               && std::all_of(c.keys.begin(), c.keys.end(), [&](auto& k) { return finished.contains(k); });
    };
    auto live_count = [&](const std::string& key) {
        std::size_t n = 0;
        for (auto& c : conns)
            n += c.attached && (key.empty() || c.keys.contains(key));
        return n;
    };
    auto publish = [&](const std::string& key, bool fin) {
        const auto d = "d" + std::to_string(seq + 1);
        ssepp::event e{.data = d};
        const bool own_id = pick(4) == 0;
        if (own_id)
            e.id = "own-" + std::to_string(seq + 1);
        std::size_t expected_n = 0;  // the connections not completed take it
        for (auto& c : conns)
            expected_n += c.attached && !c.completed && (key.empty() || c.keys.contains(key));
        const auto r = key.empty() ? test::broadcast(reg, e) : fin ? test::finish(reg, key, e) : test::send(reg, key, e);
        if (!key.empty() && finished.contains(key)) {
            CHECK(r.error == ssepp::errc::closed);
            return;
        }
        REQUIRE(r);
        ++seq;
        CHECK(r.connections == expected_n);
        CHECK(r.id == (own_id ? *e.id : reg.id_epoch() + "-" + std::to_string(seq)));
        log.push_back({seq, r.id, key, d});
        for (auto& c : conns)
            if (c.attached && !c.completed && relevant(c, log.back()))
                c.expected.push_back(d);
        if (fin) {
            finished.insert(key);
            for (auto& c : conns)
                if (c.attached && !c.completed && c.keys.contains(key) && all_finished(c))
                    c.completed = true;
        }
    };

    for (int op = 0; op < 400; ++op) {
        const auto what = pick(20);
        if (what < 8) {
            publish(all_keys[pick(all_keys.size())], false);
        } else if (what < 10) {
            publish("", false);
        } else if (what < 11) {
            publish(all_keys[pick(all_keys.size())], true);
        } else if (what < 16) {
            conn c;
            c.em = fake();
            strings ks;
            const auto n = pick(3);  // 0 to 2 keys, maybe repeated
            for (std::size_t i = 0; i < n; ++i)
                ks.push_back(all_keys[pick(all_keys.size())]);
            c.keys.insert(ks.begin(), ks.end());
            ssepp::attach_options ao;
            ao.on_gap = ssepp::event{.data = "gap"};
            const auto how = pick(4);
            if (how == 0) {
                ao.otherwise = ssepp::replay::none;
            } else if (how == 1 && !log.empty()) {
                ao.last_event_id = log[pick(log.size())].id;
            } else if (how == 2) {
                ao.last_event_id = "unknown";
            }
            // Model the replay.
            bool gap = false, resumed = false;
            if (ao.last_event_id) {
                std::optional<std::uint64_t> after;
                for (auto& e : log)
                    if (e.id == *ao.last_event_id && relevant(c, e))
                        after = e.seq;
                gap = !after;
                resumed = !!after;
                if (gap)
                    c.expected.push_back("gap");
                for (auto& e : log)
                    if (relevant(c, e) && (!after || e.seq > *after))
                        c.expected.push_back(e.data);
            } else if (ao.otherwise == ssepp::replay::all) {
                for (auto& e : log)
                    if (relevant(c, e))
                        c.expected.push_back(e.data);
            }
            const auto r = reg.attach(std::span<const std::string>(ks), c.em, ao);
            CHECK(r.gap == gap);
            CHECK(r.resumed == resumed);
            c.completed = all_finished(c);
            CHECK(r.finished == c.completed);
            conns.push_back(std::move(c));
        } else {
            std::vector<std::size_t> open;
            for (std::size_t i = 0; i < conns.size(); ++i)
                if (conns[i].attached)
                    open.push_back(i);
            if (open.empty())
                continue;
            auto& c = conns[open[pick(open.size())]];
            c.em->close();
            c.attached = false;
        }
        REQUIRE(reg.size() == live_count(""));
    }
    for (const auto& k : all_keys)
        CHECK(reg.size(k) == live_count(k));
    for (std::size_t i = 0; i < conns.size(); ++i) {
        CAPTURE(i);
        CHECK(conns[i].em->data() == conns[i].expected);
        CHECK(conns[i].em->completed() == conns[i].completed);
        conns[i].em->close();
    }
    CHECK(reg.size() == 0);
}

TEST_CASE("registry: attach with Last-Event-ID races publishers without gap or duplicate", "[registry]")
{
    // Four publishers to one key while a client keeps reconnecting from the last id it saw;
    // every connection's events must continue the previous connection's exactly.
    fake_registry reg({.max_events = 100000, .max_bytes = std::size_t(1) << 30});
    constexpr int threads = 4, per_thread = 1500;
    std::atomic<int> running{threads};
    std::vector<std::thread> pubs;
    for (int t = 0; t < threads; ++t)
        pubs.emplace_back([&, t] {
            for (int i = 0; i < per_thread; ++i) {
                test::send(reg, "k", data(std::to_string(t) + ":" + std::to_string(i)));
                if (i % 64 == 0)
                    std::this_thread::yield();
            }
            --running;
        });

    std::vector<std::shared_ptr<test::fake_emitter>> conns;
    std::optional<std::string> last;
    int while_publishing = 0;
    const auto deadline = test::clock::now() + 10s;
    while (test::clock::now() < deadline) {
        const bool done = running == 0;
        auto c = fake();
        auto r = reg.attach("k", c, {.last_event_id = last});
        CHECK(!r.gap);
        CHECK(r.resumed == !!last);
        while_publishing += !done;
        std::this_thread::yield();
        c->close();
        if (const auto frames = c->frames(); !frames.empty())
            last = test::parse_events(*frames.back()).back().id;
        conns.push_back(std::move(c));
        if (done)
            break;
    }
    for (auto& p : pubs)
        p.join();
    CHECK(while_publishing >= 10);
    std::vector<test::received> seen;
    for (auto& c : conns) {
        auto ev = c->events();
        seen.insert(seen.end(), ev.begin(), ev.end());
    }

    // The whole order as the registry retained it.
    auto all = fake();
    reg.attach("k", all);
    const auto order = all->events();
    REQUIRE(order.size() == threads * per_thread);
    CHECK(seen.size() == order.size());
    CHECK(seen == order);
    std::vector<int> next(threads, 0);
    for (std::size_t i = 0; i < order.size(); ++i) {
        REQUIRE(order[i].id == reg.id_epoch() + "-" + std::to_string(i + 1));
        const auto colon = order[i].data.find(':');
        const int t = std::stoi(order[i].data.substr(0, colon));
        CHECK(std::stoi(order[i].data.substr(colon + 1)) == next[t]++);
    }
}
