// What the registry gives an operator (issue 14), over real sockets on 127.0.0.1: metrics and
// their Prometheus text, hooks for attach, detach, gap, overflow and refusals, connection
// limits answered before any SSE byte, and a graceful shutdown that spreads reconnects.
#include <ssepp/registry.hpp>

#include "catch.hpp"
#include "support/registry_support.hpp"

#include <regex>
#include <set>

using namespace std::chrono_literals;
using test::target;

namespace {

ssepp::event data(std::string d) { return {.data = std::move(d)}; }

std::uint64_t closed(const ssepp::metrics& m, ssepp::close_reason r) { return m.closed_total[static_cast<std::size_t>(r)]; }

// The `retry:` values of a stream's body, in order.
std::vector<long> retries(const std::string& body)
{
    std::vector<long> out;
    static const std::regex re("(^|\n)retry: ([0-9]+)\n");
    for (std::sregex_iterator it(body.begin(), body.end(), re), end; it != end; ++it)
        out.push_back(std::stol((*it)[2]));
    return out;
}

struct hook_call {
    std::string what;
    std::vector<std::string> keys;
    std::optional<ssepp::close_reason> reason{};
};

} // namespace

TEST_CASE("registry metrics: counters follow sends, replays, gaps, bytes as written and closes by reason",
          "[registry][metrics]")
{
    const bool hand_off = GENERATE(false, true);
    test::registry_server srv({.emitter = {.heartbeat = 20ms}, .hand_off = hand_off});
    auto& reg = srv.reg();
    CHECK(reg.metrics().connections == 0);

    test::client a1(srv.port(), target("a")), a2(srv.port(), target("a")), b(srv.port(), target("b"));
    REQUIRE(test::eventually([&] { return reg.size() == 3; }));
    for (int i = 0; i < 3; ++i)
        test::send(reg, "a", data("a" + std::to_string(i)));
    test::broadcast(reg, data("all"));
    REQUIRE(a1.read_events(4));
    REQUIRE(a2.read_events(4));
    REQUIRE(b.read_events(1));

    auto m = reg.metrics();
    CHECK(m.connections == 3);
    CHECK(m.keys == 2);
    CHECK(m.connections_total == 3);
    CHECK(m.events_total == 4);
    CHECK(m.connections_refused_total == 0);
    // Bytes count as the transports take them, while the streams are still open.
    REQUIRE(test::eventually([&] { return reg.metrics().bytes_written_total >= a1.body.size() + a2.body.size() + b.body.size(); }));
    {
        // Nothing counted twice: past what the clients read, only heartbeats (3 bytes each).
        const auto now = reg.metrics();
        CHECK(now.bytes_written_total <= a1.body.size() + a2.body.size() + b.body.size() + 3 * now.heartbeats_total);
    }
    REQUIRE(test::eventually([&] { return reg.metrics().heartbeats_total >= 3; }));

    // A resume replays; an unknown Last-Event-ID is a gap.
    test::client resumed(srv.port(), target("a"), test::last_event_id_header("e-1"));
    test::client lost(srv.port(), target("a"), test::last_event_id_header("nobody"));
    REQUIRE(resumed.read_events(3));
    REQUIRE(lost.read_events(4));
    m = reg.metrics();
    CHECK(m.connections_total == 5);
    CHECK(m.replayed_events_total == 3 + 4);
    CHECK(m.gaps_total == 1);

    // A client that leaves is counted by reason, and what it wrote stays counted.
    const auto before = reg.metrics().bytes_written_total;
    b.close();
    REQUIRE(test::eventually([&] { return closed(reg.metrics(), ssepp::close_reason::client_gone) == 1; }));
    m = reg.metrics();
    CHECK(m.connections == 4);
    CHECK(m.bytes_written_total >= before);
    CHECK(reg.complete("a") == 4);
    REQUIRE(test::eventually([&] { return closed(reg.metrics(), ssepp::close_reason::completed) == 4; }));
    CHECK(reg.metrics().connections == 0);
}

TEST_CASE("registry metrics: the Prometheus text has HELP and TYPE for each family, counters end in _total",
          "[registry][metrics]")
{
    ssepp::metrics m;
    m.connections = 3;
    m.events_total = 42;
    m.bytes_written_total = 1234567890123;
    m.closed_total[static_cast<std::size_t>(ssepp::close_reason::overflow)] = 2;
    const auto text = ssepp::format_prometheus(m, "sse");
    CHECK(text.find("# HELP sse_open_connections Open event streams.\n# TYPE sse_open_connections gauge\n"
                    "sse_open_connections 3\n") !=
          std::string::npos);
    CHECK(text.find("# TYPE sse_events_total counter\nsse_events_total 42\n") != std::string::npos);
    CHECK(text.find("sse_bytes_written_total 1234567890123\n") != std::string::npos);
    CHECK(text.find("sse_closed_total{reason=\"overflow\"} 2\n") != std::string::npos);
    CHECK(text.find("sse_closed_total{reason=\"client_gone\"} 0\n") != std::string::npos);
    // Every sample line belongs to a family declared just before it, counters named _total.
    std::string family, type;
    std::istringstream in(text);
    std::size_t samples = 0;
    for (std::string line; std::getline(in, line);) {
        if (line.starts_with("# HELP ")) {
            family = line.substr(7, line.find(' ', 7) - 7);
            continue;
        }
        if (line.starts_with("# TYPE ")) {
            REQUIRE(line.starts_with("# TYPE " + family + " "));
            type = line.substr(line.rfind(' ') + 1);
            CHECK((type == "counter") == family.ends_with("_total"));
            continue;
        }
        REQUIRE(line.starts_with(family));
        ++samples;
    }
    CHECK(samples == 11 + ssepp::close_reason_count);

    // Two registries shown as one.
    auto sum = m;
    sum += m;
    CHECK(sum.connections == 6);
    CHECK(sum.bytes_written_total == 2 * m.bytes_written_total);
    CHECK(sum.closed_total[static_cast<std::size_t>(ssepp::close_reason::overflow)] == 4);
}

TEST_CASE("registry hooks: attach, gap, detach with its reason, overflow and refusals, outside the lock",
          "[registry][metrics]")
{
    const bool hand_off = GENERATE(false, true);
    test::collector<hook_call> calls;  // outlives the server, whose end closes connections
    test::registry_server srv({.history = {.max_events = 64, .id_epoch = "e"},
                               .emitter = {.max_queued_bytes = 64 << 10, .overflow = ssepp::overflow_policy::close},
                               .hand_off = hand_off});
    auto& reg = srv.reg();
    const auto keys = [](std::span<const std::string> k) { return std::vector<std::string>(k.begin(), k.end()); };
    reg.set_hooks({
        .on_attach = [&](auto k, const ssepp::attach_result&) { calls.push({"attach", keys(k)}); reg.size(); },
        .on_gap = [&](auto k, const ssepp::attach_result&) { calls.push({"gap", keys(k)}); },
        .on_detach = [&](auto k, ssepp::close_reason r, ssepp::error_code) { calls.push({"detach", keys(k), r}); reg.size(); },
        .on_overflow = [&](auto k) { calls.push({"overflow", keys(k)}); },
        .on_refused = [&](auto k) { calls.push({"refused", keys(k)}); },
    });
    // (The hooks call back into the registry: they run after its lock is released.)

    {
        test::client c(srv.port(), target("u,v"));
        REQUIRE(calls.wait(1));
        const auto first = calls.at(0);
        CHECK(first.what == "attach");
        CHECK(std::set<std::string>(first.keys.begin(), first.keys.end()) == std::set<std::string>{"u", "v"});
    }
    REQUIRE(calls.wait(2));
    CHECK(calls.at(1).what == "detach");
    CHECK(calls.at(1).reason == ssepp::close_reason::client_gone);
    CHECK(calls.at(1).keys.size() == 2);

    test::client lost(srv.port(), target("u"), test::last_event_id_header("nobody"));
    REQUIRE(calls.wait(4));
    CHECK(calls.at(2).what == "attach");
    CHECK(calls.at(3).what == "gap");

    // A client that stops reading is closed for overflow: on_overflow, then on_detach.
    test::client stalled(srv.port(), target("feed", "all", false, 4096), "", 4096);
    REQUIRE(calls.wait(5));
    const std::string payload(1000, 'p');
    for (int i = 0; i < 2000 && !srv.connections().back().closed; ++i) {
        REQUIRE(test::eventually([&] { return reg.pending_bytes() < 16 << 10; }));
        test::send(reg, "feed", data(payload));
    }
    REQUIRE(calls.wait(7));
    CHECK(calls.at(5).what == "overflow");
    CHECK(calls.at(5).keys == std::vector<std::string>{"feed"});
    CHECK(calls.at(6).what == "detach");
    CHECK(calls.at(6).reason == ssepp::close_reason::overflow);

    reg.set_limits({.max_connections_per_key = 1});
    ssepp::error_code ec;
    auto em = ssepp::make_emitter(ssepp::http_body(asio::ip::tcp::socket(srv.io())));
    reg.attach("u", em, {}, ec);
    CHECK(ec == ssepp::errc::too_many_connections);
    CHECK(em->bytes_written() == 0);  // not started
    REQUIRE(calls.wait(8));
    CHECK(calls.at(7).what == "refused");
    CHECK(reg.metrics().connections_refused_total == 1);
    CHECK_THROWS_AS(reg.attach("u", em), ssepp::system_error);
    reg.set_hooks({});  // the hooks call reg, which the server destroys before its connections close
}

TEST_CASE("registry limits: past max_connections or max_connections_per_key the server answers 503 before any SSE byte",
          "[registry][metrics]")
{
    test::registry_server srv;
    auto& reg = srv.reg();
    reg.set_limits({.max_connections = 3, .max_connections_per_key = 2});
    test::client a1(srv.port(), target("a")), a2(srv.port(), target("a"));
    REQUIRE(test::eventually([&] { return reg.size() == 2; }));
    CHECK(!reg.admits(std::string("a")));
    CHECK(reg.admits(std::string("b")));

    test::client a3(srv.port(), target("a"));
    CHECK(a3.read_to_eof());
    CHECK(a3.head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
    CHECK(a3.head.find("Retry-After: 5\r\n") != std::string::npos);
    CHECK(a3.events.empty());

    test::client b1(srv.port(), target("b"));
    REQUIRE(test::eventually([&] { return reg.size() == 3; }));
    test::client c1(srv.port(), target("c"));  // the fourth overall
    CHECK(c1.read_to_eof());
    CHECK(c1.head.starts_with("HTTP/1.1 503"));

    // One leaves: room again, under its key and overall.
    a1.close();
    REQUIRE(test::eventually([&] { return reg.size() == 2; }));
    test::client a4(srv.port(), target("a"));
    REQUIRE(test::eventually([&] { return reg.size() == 3; }));
    test::send(reg, "a", data("hello"));
    REQUIRE(a4.read_events(1));
    CHECK(a4.head.starts_with("HTTP/1.1 200"));
    CHECK(reg.metrics().connections_refused_total == 2);  // the server's refuse() after admits()
}

TEST_CASE("registry shutdown: complete_all(min, max) sends each client its own retry in the window, then ends the stream",
          "[registry][metrics]")
{
    const bool hand_off = GENERATE(false, true);
    test::registry_server srv({.hand_off = hand_off});
    auto& reg = srv.reg();
    std::vector<std::unique_ptr<test::client>> clients;
    for (int i = 0; i < 8; ++i)
        clients.push_back(std::make_unique<test::client>(srv.port(), target("k")));
    REQUIRE(test::eventually([&] { return reg.size() == 8; }));
    test::send(reg, "k", data("before"));

    reg.complete_all(1000ms, 9000ms);
    std::set<long> seen;
    for (auto& c : clients) {
        REQUIRE(c->read_to_eof());
        REQUIRE(c->events.size() == 1);  // what was sent before the shutdown still arrives
        CHECK(c->events[0].data == "before");
        const auto r = retries(c->body);
        REQUIRE(r.size() == 2);  // the stream's retry hint, then the shutdown's
        CHECK(r[1] >= 1000);
        CHECK(r[1] <= 9000);
        seen.insert(r[1]);
    }
    CHECK(seen.size() > 1);  // spread, not one value for all (8 draws from 8,001 values)
    REQUIRE(test::eventually([&] { return reg.size() == 0; }));
    CHECK(closed(reg.metrics(), ssepp::close_reason::completed) == 8);
}
