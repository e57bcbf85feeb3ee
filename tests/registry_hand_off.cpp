// The registry with a hand-off executor (issue 15), over real sockets on 127.0.0.1: send()
// returns before any connection is queued, the executor queues everything sent since the last
// hand-off in the order sent, and nothing that overtakes a hand-off (attach, finish, complete,
// a connection leaving, the registry's end) loses or repeats an event. The registry's other
// guarantees are checked in both modes by registry_loopback.cpp.
#include <ssepp/registry.hpp>

#include "catch.hpp"
#include "support/registry_support.hpp"

using namespace std::chrono_literals;
using test::target;

namespace {

ssepp::event data(std::string d) { return {.data = std::move(d)}; }

std::vector<std::string> datas(const test::client& c)
{
    std::vector<std::string> out;
    for (const auto& e : c.events)
        out.push_back(e.data);
    return out;
}

// A registry whose hand-off executor is an io_context the test runs by hand, so that what
// is pending between hand-offs can be seen; the connections are served by `srv`.
struct manual_hand_off {
    asio::io_context hand;
    test::server srv;
    std::optional<ssepp::registry> reg;
    test::collector<std::shared_ptr<ssepp::emitter>> emitters;

    explicit manual_hand_off(ssepp::history_options h = {.id_epoch = "e"})
    {
        reg.emplace(hand.get_executor(), h);
        srv.serve([this](asio::ip::tcp::socket s, std::string head) {
            const auto line = std::string_view(head).substr(0, head.find("\r\n"));
            const auto sp = line.find(' ');
            const auto tgt = line.substr(sp + 1, line.rfind(' ') - sp - 1);
            ssepp::attach_options ao;
            ao.last_event_id = ssepp::last_event_id(head);
            if (ssepp::query_parameter(tgt, "replay").value_or("all") == "undelivered")
                ao.otherwise = ssepp::replay::undelivered;
            auto em = ssepp::make_emitter(ssepp::http_body(std::move(s)), test::quiet());
            reg->attach(test::split_keys(ssepp::query_parameter(tgt, "keys").value_or("")), em, ao);
            emitters.push(em);
        });
    }

    // Runs the hand-offs posted so far.
    std::size_t hand_off()
    {
        hand.restart();
        return hand.poll();
    }
};

} // namespace

TEST_CASE("hand-off: send returns before any connection is queued, one hand-off queues everything sent since, in order",
          "[registry][hand_off]")
{
    manual_hand_off h;
    test::client c(h.srv.port(), target("k"));
    REQUIRE(h.emitters.wait(1));
    const auto em = h.emitters.at(0);
    REQUIRE(test::eventually([&] { return em->queued_bytes() == 0; }));  // the head and retry hint are out

    for (int i = 1; i <= 3; ++i) {
        const auto r = test::send(*h.reg, "k", data(std::to_string(i)));
        CHECK(r.connections == 1);
        CHECK(r.id == "e-" + std::to_string(i));
    }
    test::broadcast(*h.reg, data("all"));
    // Formatted and retained, queued to no connection yet: the sender did O(1) work.
    CHECK(em->queued_bytes() == 0);
    CHECK(h.reg->last_id("k") == "e-3");
    CHECK(h.reg->queued_bytes() > 0);  // counts what waits for the hand-off
    CHECK(h.reg->backlog() > 0);

    CHECK(h.hand_off() == 1);  // one handler for the four events
    REQUIRE(c.read_events(4));
    CHECK(datas(c) == std::vector<std::string>{"1", "2", "3", "all"});
    CHECK(c.events.back().id == "e-4");
    REQUIRE(test::eventually([&] { return em->written_seq() == 4; }));
    CHECK(h.hand_off() == 0);  // nothing was posted since
}

TEST_CASE("hand-off: a connection under several keys gets its keys' events and the broadcasts in the order sent",
          "[registry][hand_off]")
{
    manual_hand_off h;
    test::client both(h.srv.port(), target("a,b")), only_a(h.srv.port(), target("a"));
    REQUIRE(h.emitters.wait(2));
    test::send(*h.reg, "a", data("a1"));
    test::send(*h.reg, "b", data("b1"));
    test::broadcast(*h.reg, data("x"));
    test::send(*h.reg, "a", data("a2"));
    test::send(*h.reg, "a", data("a3"));
    test::send(*h.reg, "c", data("nobody"));  // retained, no connection
    test::send(*h.reg, "b", data("b2"));
    h.hand_off();
    REQUIRE(both.read_events(6));
    CHECK(datas(both) == std::vector<std::string>{"a1", "b1", "x", "a2", "a3", "b2"});
    REQUIRE(only_a.read_events(4));
    CHECK(datas(only_a) == std::vector<std::string>{"a1", "x", "a2", "a3"});
    // Ids follow the one order: "nobody" took position 6.
    CHECK(both.events.back().id == "e-7");
}

TEST_CASE("hand-off: a connection attached while events are pending gets each once, an earlier one gets them first",
          "[registry][hand_off]")
{
    manual_hand_off h;
    test::client early(h.srv.port(), target("k"));
    REQUIRE(h.emitters.wait(1));
    test::send(*h.reg, "k", data("1"));
    test::send(*h.reg, "k", data("2"));
    // The attach hands off what is pending first, then replays the history: "1" and "2" reach
    // the early connection live and the late one by its replay, once each.
    test::client late(h.srv.port(), target("k"));
    REQUIRE(h.emitters.wait(2));
    REQUIRE(early.read_events(2));
    test::send(*h.reg, "k", data("3"));
    h.hand_off();
    REQUIRE(early.read_events(3));
    REQUIRE(late.read_events(3));
    CHECK(datas(early) == std::vector<std::string>{"1", "2", "3"});
    CHECK(datas(late) == std::vector<std::string>{"1", "2", "3"});
    CHECK(!late.read_events(4, 100ms));  // and no duplicate after
}

TEST_CASE("hand-off: finish, complete and the registry's end deliver what is pending before completing",
          "[registry][hand_off]")
{
    manual_hand_off h;
    test::client f(h.srv.port(), target("job")), c(h.srv.port(), target("user")), d(h.srv.port(), target("other"));
    REQUIRE(h.emitters.wait(3));

    test::send(*h.reg, "job", data("progress"));
    test::finish(*h.reg, "job", {.event = "complete", .data = "done"});
    REQUIRE(f.read_to_eof());
    CHECK(datas(f) == std::vector<std::string>{"progress", "done"});

    test::send(*h.reg, "user", data("last words"));
    CHECK(h.reg->complete("user") == 1);
    REQUIRE(c.read_to_eof());
    CHECK(datas(c) == std::vector<std::string>{"last words"});

    test::send(*h.reg, "other", data("before the end"));
    h.reg.reset();  // completes every connection; the posted hand-off then finds it gone
    REQUIRE(d.read_to_eof());
    CHECK(datas(d) == std::vector<std::string>{"before the end"});
    h.hand_off();
}

TEST_CASE("hand-off: an event pending when its only connection leaves is replayed as undelivered to the next",
          "[registry][hand_off]")
{
    manual_hand_off h;
    {
        test::client first(h.srv.port(), target("u", "undelivered"));
        REQUIRE(h.emitters.wait(1));
        test::send(*h.reg, "u", data("seen"));
        h.hand_off();
        REQUIRE(first.read_events(1));
        REQUIRE(test::eventually([&] { return h.emitters.at(0)->written_seq() == 1; }));
        test::send(*h.reg, "u", data("pending"));
    }
    // The client left with "pending" not handed off; its close handler hands it to nobody.
    REQUIRE(test::eventually([&] { return h.reg->size() == 0; }));
    h.hand_off();
    CHECK(h.reg->delivered_id("u") == "e-1");
    test::client second(h.srv.port(), target("u", "undelivered"));
    REQUIRE(second.read_events(1));
    CHECK(datas(second) == std::vector<std::string>{"pending"});
    CHECK(!second.read_events(2, 100ms));
}

TEST_CASE("hand-off: backlog() follows the connection furthest behind, and falls as it reads",
          "[registry][hand_off]")
{
    test::registry_server srv({.emitter = {.max_queued_bytes = 8 << 20}, .hand_off = true});
    auto& reg = srv.reg();
    test::client reader(srv.port(), target("k")), stalled(srv.port(), target("k", "all", false, 4096), "", 4096);
    REQUIRE(test::eventually([&] { return reg.size() == 2; }));
    REQUIRE(test::eventually([&] { return reg.backlog() == 0; }));  // the retry hints are out

    const std::string payload(1000, 'p');
    constexpr int n = 2000;
    for (int i = 0; i < n; ++i)
        test::send(reg, "k", data(payload));
    REQUIRE(reader.read_events(n, 10s));
    // The stalled client's kernel buffers hold a few hundred KiB at most: the rest is queued.
    REQUIRE(test::eventually([&] { return reg.backlog() > 512u * 1024; }));
    REQUIRE(stalled.read_events(n, 20s));
    REQUIRE(test::eventually([&] { return reg.backlog() == 0; }));
}
