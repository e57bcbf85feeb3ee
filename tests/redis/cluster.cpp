// Test that the header is self-contained.
#include <ssepp/redis/cluster.hpp>

#include "helpers.hpp"
#include "../support/registry_support.hpp"

#include <algorithm>
#include <map>
#include <condition_variable>
#include <set>
#include <thread>

// Several cluster nodes in one process, each with its own HTTP listener and I/O thread, on one
// real redis-server: a send on any node reaches every node's streams once, in one order; a
// client resumes on another node; a node whose bus link dropped catches up.

using namespace std::chrono_literals;
namespace redis = ssepp::redis;

namespace {

// One node: an SSE listener on 127.0.0.1 whose requests attach to the node (keys from the
// target, Last-Event-ID from the head), the node on a strand of the listener's io_context.
class site {
public:
    site(const test::redis_server& server, redis::cluster_options o = {},
         ssepp::history_options local = {.max_events = 4096})
    {
        o.server = server.endpoint();
        o.reconnect_delay = 20ms;
        o.max_reconnect_delay = 200ms;
        node_ = redis::node::create(asio::make_strand(srv_.io()), std::move(o), std::move(local));
        srv_.serve([this](asio::ip::tcp::socket s, std::string head) {
            const auto line = std::string_view(head).substr(0, head.find("\r\n"));
            const auto target = line.substr(line.find(' ') + 1, line.rfind(' ') - line.find(' ') - 1);
            // ?key=a,b: several keys; ?undelivered=1: replay::undelivered.
            const auto key = std::string(ssepp::query_parameter(target, "key").value_or("k"));
            std::vector<std::string> keys;
            for (std::size_t at = 0; at <= key.size();) {
                const auto comma = std::min(key.find(',', at), key.size());
                keys.push_back(key.substr(at, comma - at));
                at = comma + 1;
            }
            ssepp::attach_options ao;
            ao.last_event_id = ssepp::last_event_id(head);
            if (ssepp::query_parameter(target, "gap"))
                ao.on_gap = ssepp::event{.event = "reset", .data = "gap"};
            if (ssepp::query_parameter(target, "undelivered"))
                ao.otherwise = ssepp::replay::undelivered;
            node_->async_attach(std::move(keys), ssepp::make_emitter(ssepp::http_body(std::move(s)), test::quiet()), ao,
                                [this](ssepp::error_code ec, ssepp::attach_result r) {
                                    std::lock_guard lock(mtx_);
                                    results_.push_back({ec, r});
                                });
        });
    }

    ~site()
    {
        node_->close();
        srv_.stop();
    }

    redis::node& node() { return *node_; }
    asio::ip::port_type port() const { return srv_.port(); }
    bool ready() const { return node_->is_ready(); }

    std::vector<std::pair<ssepp::error_code, ssepp::attach_result>> results() const
    {
        std::lock_guard lock(mtx_);
        return results_;
    }

    /// Publishes through this node and waits for the id.
    std::string send(const std::string& key, ssepp::event e)
    {
        auto f = node_->async_send(key, std::move(e), asio::use_future);
        REQUIRE(f.wait_for(5s) == std::future_status::ready);
        return f.get();
    }

private:
    test::server srv_;
    std::shared_ptr<redis::node> node_;
    mutable std::mutex mtx_;
    std::vector<std::pair<ssepp::error_code, ssepp::attach_result>> results_;
};

redis::stream_id sid(const std::string& id)
{
    auto s = redis::stream_id::parse(id);
    REQUIRE(s);
    return *s;
}

void require_one_order(const std::vector<test::received>& events)
{
    for (std::size_t i = 1; i < events.size(); ++i)
        REQUIRE(sid(events[i - 1].id) < sid(events[i].id));
}

} // namespace

TEST_CASE("cluster: events encode and decode, stream ids parse and order", "[cluster]")
{
    const ssepp::event e{.event = "t:y", .data = "a\nb\0c", .retry = 1500ms, .comment = "x"};
    CHECK(redis::detail::decode_event(redis::detail::encode_event(e)) == e);
    CHECK(redis::detail::decode_event(redis::detail::encode_event({.data = ""}))->data == "");
    CHECK(!redis::detail::decode_event("d5:ab"));
    CHECK(!redis::detail::decode_event("q1:a"));
    CHECK(redis::stream_id::parse("1700000000000-3") == redis::stream_id{1700000000000, 3});
    CHECK(!redis::stream_id::parse("17"));
    CHECK(!redis::stream_id::parse("1-x"));
    CHECK(!redis::stream_id::parse("e-5"));
    CHECK(redis::stream_id{1, 9} < redis::stream_id{2, 0});
}

TEST_CASE("cluster: a send on any node reaches every node's streams once, in one order", "[cluster]")
{
    const auto mode = GENERATE(redis::delivery::broadcast, redis::delivery::targeted);
    CAPTURE(mode);
    test::redis_server server;
    site a(server, {.delivery = mode}), b(server, {.delivery = mode}), c(server, {.delivery = mode});
    REQUIRE(test::eventually([&] { return a.ready() && b.ready() && c.ready(); }));
    std::vector<std::unique_ptr<test::client>> clients;
    for (auto* s : {&a, &b, &c})
        for (int i = 0; i < 2; ++i)
            clients.push_back(std::make_unique<test::client>(s->port(), "/events?key=user"));
    REQUIRE(test::eventually([&] {
        return a.node().local().size("user") == 2 && b.node().local().size("user") == 2
               && c.node().local().size("user") == 2;
    }));

    // One publisher thread per node, concurrently.
    constexpr int per_node = 200;
    std::vector<std::thread> publishers;
    int n = 0;
    for (auto* s : {&a, &b, &c})
        publishers.emplace_back([s, p = n++] {
            for (int i = 0; i < per_node; ++i)
                s->send("user", {.data = std::to_string(p) + ":" + std::to_string(i)});
        });
    for (auto& t : publishers)
        t.join();

    std::vector<test::received> first;
    for (auto& cl : clients) {
        REQUIRE(cl->read_events(3 * per_node, 10s));
        CHECK(cl->events.size() == std::size_t(3 * per_node));
        require_one_order(cl->events);
        std::map<char, int> next;
        for (const auto& e : cl->events) {
            const auto colon = e.data.find(':');
            REQUIRE(std::stoi(e.data.substr(colon + 1)) == next[e.data[0]]++);  // each publisher's order
        }
        if (first.empty())
            first = cl->events;
        CHECK(cl->events == first);  // every stream the same events, same ids, same order
    }
}

TEST_CASE("cluster: the local registry's connection limits refuse an attach with an error, nothing attached",
          "[cluster]")
{
    test::redis_server server;
    site a(server, {});
    REQUIRE(test::eventually([&] { return a.ready(); }));
    a.node().local().set_limits({.max_connections_per_key = 1});
    test::client first(a.port(), "/events?key=user"), live(a.port(), "/events?key=user"),
        resumed(a.port(), "/events?key=user&undelivered=1");  // live events only, and through the streams
    REQUIRE(test::eventually([&] { return a.results().size() == 3; }));
    std::size_t refused = 0;
    for (const auto& [ec, r] : a.results())
        refused += ec == ssepp::errc::too_many_connections;
    CHECK(refused == 2);
    CHECK(a.node().local().size("user") == 1);
    CHECK(a.node().local().metrics().connections_refused_total == 2);
}

TEST_CASE("cluster: a client resumes on another node, even one that joined later", "[cluster]")
{
    const auto mode = GENERATE(redis::delivery::broadcast, redis::delivery::targeted);
    CAPTURE(mode);
    test::redis_server server;
    site a(server, {.delivery = mode});
    REQUIRE(test::eventually([&] { return a.ready(); }));
    test::client first(a.port(), "/events?key=job");
    REQUIRE(test::eventually([&] { return a.node().local().size("job") == 1; }));
    for (int i = 0; i < 50; ++i)
        a.send("job", {.data = std::to_string(i)});
    REQUIRE(first.read_events(20));
    const auto resume_from = first.events[19].id;
    first.reset();

    site b(server, {.delivery = mode});  // joined after the events: its own history of "job" is empty
    REQUIRE(test::eventually([&] { return b.ready(); }));
    test::client second(b.port(), "/events?key=job", test::last_event_id_header(resume_from));
    REQUIRE(second.read_events(30));
    REQUIRE(test::eventually([&] { return b.node().local().size("job") == 1; }));
    b.send("job", {.data = "live"});
    REQUIRE(second.read_events(31));
    CHECK(second.events.size() == 31);
    for (int i = 0; i < 30; ++i)
        CHECK(second.events[std::size_t(i)].data == std::to_string(i + 20));
    CHECK(second.events.back().data == "live");
    require_one_order(second.events);
    const auto r = b.results().at(0);
    CHECK(!r.first);
    CHECK(r.second.resumed);
    CHECK(!r.second.gap);

    // A late subscriber without an id gets the whole shared history, then live events.
    test::client late(b.port(), "/events?key=job");
    REQUIRE(late.read_events(51));
    CHECK(late.events.front().data == "0");
    CHECK(late.events.back().data == "live");
    require_one_order(late.events);
}

TEST_CASE("cluster: an id the streams no longer hold, or never held, is a gap", "[cluster]")
{
    test::redis_server server;
    site a(server, {.stream_max_events = 10});
    REQUIRE(test::eventually([&] { return a.ready(); }));
    const auto old = a.send("feed", {.data = "old"});
    for (int i = 0; i < 300; ++i)
        a.send("feed", {.data = std::to_string(i)});
    site b(server, {.stream_max_events = 10});
    REQUIRE(test::eventually([&] { return b.ready(); }));
    for (const auto& id : {old, std::string("1-1"), std::string("not-an-id")}) {
        CAPTURE(id);
        test::client c(b.port(), "/events?key=feed&gap=1", test::last_event_id_header(id));
        REQUIRE(c.read_events(2));
        CHECK(c.events[0].type == "reset");
        CHECK(c.events.back().data != "old");
        require_one_order({c.events.begin() + 1, c.events.end()});
    }
    for (const auto& [ec, r] : b.results()) {
        CHECK(!ec);
        CHECK(r.gap);
        CHECK(!r.resumed);
    }
}

TEST_CASE("cluster: a node whose bus link dropped catches up from the streams, no gap", "[cluster]")
{
    const auto mode = GENERATE(redis::delivery::broadcast, redis::delivery::targeted);
    CAPTURE(mode);
    test::redis_server server;
    site a(server, {.delivery = mode}), b(server, {.delivery = mode});
    REQUIRE(test::eventually([&] { return a.ready() && b.ready(); }));
    test::client on_b(b.port(), "/events?key=user");
    REQUIRE(test::eventually([&] { return b.node().local().size("user") == 1; }));
    a.send("user", {.data = "before"});
    REQUIRE(on_b.read_events(1));

    // Cut every subscriber link (both nodes') and publish while they are down.
    test::redis_client admin(server.endpoint());
    REQUIRE(admin.wait_connected());
    REQUIRE(admin({"CLIENT", "KILL", "TYPE", "pubsub"}).value.integer() >= 1);
    for (int i = 0; i < 20; ++i)
        a.send("user", {.data = "during " + std::to_string(i)});
    a.send("user", {.data = "after"});
    REQUIRE(on_b.read_events(22, 10s));
    CHECK(on_b.events.size() == 22);
    CHECK(on_b.events[1].data == "during 0");
    CHECK(on_b.events.back().data == "after");
    require_one_order(on_b.events);
}

TEST_CASE("cluster: ids stay unique and ordered across a node restart", "[cluster]")
{
    test::redis_server server;
    std::string last;
    {
        site a(server);
        REQUIRE(test::eventually([&] { return a.ready(); }));
        for (int i = 0; i < 10; ++i)
            last = a.send("k", {.data = "x"});
    }
    site again(server);
    REQUIRE(test::eventually([&] { return again.ready(); }));
    const auto next = again.send("k", {.data = "y"});
    CHECK(sid(last) < sid(next));
    CHECK(again.send("k", {.id = "mine", .data = "z"}) != "mine");  // the stream gives the id
}

TEST_CASE("cluster: ids follow one order over every key: a connection under several keys resumes on another node", "[cluster]")
{
    const auto mode = GENERATE(redis::delivery::broadcast, redis::delivery::targeted);
    CAPTURE(mode);
    test::redis_server server;
    site a(server, {.delivery = mode}), b(server, {.delivery = mode});
    REQUIRE(test::eventually([&] { return a.ready() && b.ready(); }));
    test::client first(a.port(), "/events?key=x,y");
    REQUIRE(test::eventually([&] { return a.node().local().size("x") == 1 && a.node().local().size("y") == 1; }));

    // Two publishers on two nodes, each on both keys, interleaved.
    constexpr int per_node = 100;
    std::vector<std::thread> publishers;
    for (auto* s : {&a, &b})
        publishers.emplace_back([s, p = s == &a ? 'a' : 'b'] {
            for (int i = 0; i < per_node; ++i)
                s->send(i % 2 ? "x" : "y", {.data = std::string(1, p) + std::to_string(i)});
        });
    for (auto& t : publishers)
        t.join();
    REQUIRE(first.read_events(2 * per_node, 10s));
    require_one_order(first.events);

    // Resume on the other node from an event of one key: the rest of both keys, in order.
    for (std::size_t cut : {std::size_t(0), std::size_t(79), std::size_t(2 * per_node - 2)}) {
        CAPTURE(cut);
        test::client second(b.port(), "/events?key=y,x", test::last_event_id_header(first.events[cut].id));
        REQUIRE(second.read_events(2 * per_node - cut - 1, 10s));
        CHECK(second.events == std::vector<test::received>(first.events.begin() + std::ptrdiff_t(cut) + 1, first.events.end()));
    }
    for (const auto& [ec, r] : b.results()) {
        CHECK(!ec);
        CHECK(r.resumed);
        CHECK(!r.gap);
    }
    // And live events follow the resumed replay.
    test::client third(b.port(), "/events?key=x,y", test::last_event_id_header(first.events.back().id));
    REQUIRE(test::eventually([&] { return b.node().local().size("x") == 1; }));
    a.send("y", {.data = "live"});
    REQUIRE(third.read_events(1));
    CHECK(third.events.at(0).data == "live");
}

TEST_CASE("cluster: replay::undelivered across nodes replays exactly what no connection of the key wrote", "[cluster]")
{
    const auto mode = GENERATE(redis::delivery::broadcast, redis::delivery::targeted);
    CAPTURE(mode);
    test::redis_server server;
    site a(server, {.delivery = mode}), b(server, {.delivery = mode});
    REQUIRE(test::eventually([&] { return a.ready() && b.ready(); }));
    test::redis_client admin(server.endpoint());
    REQUIRE(admin.wait_connected());
    const auto mark_is = [&](const std::string& key, const std::string& id) {
        return test::eventually([&] {
            auto r = admin({"GET", "ssepp:{" + key + "}:delivered"});
            return !r.ec && r.value.is_string() && r.value.str() == id;
        });
    };

    // A user's connection (and an admin's, under two keys) on node a reads what is sent, then goes.
    test::client user(a.port(), "/events?key=u&undelivered=1");
    test::client adm(a.port(), "/events?key=v,admin&undelivered=1");
    REQUIRE(test::eventually([&] { return a.node().local().size("u") == 1 && a.node().local().size("admin") == 1; }));
    std::string last_u, last_admin;
    for (int i = 0; i < 5; ++i) {
        last_u = b.send("u", {.data = "u" + std::to_string(i)});
        last_admin = b.send("admin", {.data = "o" + std::to_string(i)});
    }
    REQUIRE(user.read_events(5));
    REQUIRE(adm.read_events(5));
    user.reset();
    adm.reset();
    REQUIRE(mark_is("u", last_u));
    REQUIRE(mark_is("admin", last_admin));

    // Sent while no one is connected.
    for (int i = 5; i < 8; ++i) {
        b.send("u", {.data = "u" + std::to_string(i)});
        b.send("admin", {.data = "o" + std::to_string(i)});
    }
    b.send("v", {.data = "v0"});

    SECTION("on a node whose own copy holds the mark")
    {
        test::client again(b.port(), "/events?key=u&undelivered=1");
        test::client adm_again(b.port(), "/events?key=admin,v&undelivered=1");
        REQUIRE(again.read_events(3));
        REQUIRE(adm_again.read_events(4));
        REQUIRE(test::eventually([&] { return b.node().local().size("u") == 1 && b.node().local().size("v") == 1; }));
        b.send("u", {.data = "live"});
        b.send("v", {.data = "live"});
        REQUIRE(again.read_events(4));
        REQUIRE(adm_again.read_events(5));
        CHECK(again.events.at(0).data == "u5");
        CHECK(again.events.at(2).data == "u7");
        CHECK(again.events.at(3).data == "live");
        CHECK(adm_again.events.at(0).data == "o5");
        CHECK(adm_again.events.at(3).data == "v0");
        CHECK(adm_again.events.at(4).data == "live");
        require_one_order(adm_again.events);
    }
    SECTION("on a node that joined after the events (read from the stream)")
    {
        site c(server, {.delivery = mode});
        REQUIRE(test::eventually([&] { return c.ready(); }));
        test::client again(c.port(), "/events?key=u&undelivered=1");
        test::client adm_again(c.port(), "/events?key=admin,v&undelivered=1");
        REQUIRE(again.read_events(3));
        REQUIRE(adm_again.read_events(4));
        REQUIRE(test::eventually([&] { return c.node().local().size("u") == 1 && c.node().local().size("v") == 1; }));
        b.send("u", {.data = "live"});
        REQUIRE(again.read_events(4));
        CHECK(again.events.at(0).data == "u5");
        CHECK(again.events.at(3).data == "live");
        CHECK(adm_again.events.at(0).data == "o5");
        CHECK(adm_again.events.at(3).data == "v0");
        require_one_order(adm_again.events);
        for (const auto& [ec, r] : c.results()) {
            CHECK(!ec);
            CHECK(!r.gap);
        }
    }
}

TEST_CASE("cluster: undelivered events the stream trimmed are a gap", "[cluster]")
{
    test::redis_server server;
    site a(server, {.stream_max_events = 10});
    REQUIRE(test::eventually([&] { return a.ready(); }));
    test::client user(a.port(), "/events?key=u&undelivered=1");
    REQUIRE(test::eventually([&] { return a.node().local().size("u") == 1; }));
    a.send("u", {.data = "seen"});
    REQUIRE(user.read_events(1));
    user.reset();
    REQUIRE(test::eventually([&] { return a.node().local().size("u") == 0; }));
    for (int i = 0; i < 300; ++i)
        a.send("u", {.data = std::to_string(i)});
    site b(server, {.stream_max_events = 10});
    REQUIRE(test::eventually([&] { return b.ready(); }));
    test::client again(b.port(), "/events?key=u&undelivered=1&gap=1");
    REQUIRE(again.read_events(2));
    CHECK(again.events.at(0).type == "reset");
    REQUIRE(test::eventually([&] { return !b.results().empty(); }));
    CHECK(b.results().at(0).second.gap);
}

TEST_CASE("cluster: streams expire when idle, ids keep their order when the order hash is lost", "[cluster]")
{
    test::redis_server server;
    site a(server, {.stream_ttl = 60s});
    REQUIRE(test::eventually([&] { return a.ready(); }));
    test::redis_client admin(server.endpoint());
    REQUIRE(admin.wait_connected());
    const auto before = a.send("k", {.data = "x"});
    const auto ttl = admin({"PTTL", "ssepp:{k}"}).value.integer();
    CHECK(ttl > 0);
    CHECK(ttl <= 60000);

    REQUIRE(!admin({"DEL", "ssepp:order"}).ec);
    const auto after = a.send("k", {.data = "y"});
    CHECK(sid(before) < sid(after));
    // A stream ahead of the server's clock (its order hash lost): the next id follows it.
    REQUIRE(!admin({"XADD", "ssepp:{ahead}", "99999999999999-5", "e", "d1:z", "f", "0"}).ec);
    REQUIRE(!admin({"DEL", "ssepp:order"}).ec);
    CHECK(a.send("ahead", {.data = "w"}) == "99999999999999-6");
    CHECK(sid("99999999999999-6") < sid(a.send("k", {.data = "later"})));
}

TEST_CASE("cluster: targeted delivery sends an event only to the nodes that hold its key", "[cluster]")
{
    using redis::delivery;
    test::redis_server server;
    const redis::cluster_options o{.delivery = delivery::targeted, .presence_ttl = 600ms};
    site a(server, o), b(server, o);
    auto c = std::make_unique<site>(server, o);
    REQUIRE(test::eventually([&] { return a.ready() && b.ready() && c->ready(); }));
    test::redis_client admin(server.endpoint());
    REQUIRE(admin.wait_connected());
    const auto present = [&](const std::string& key) {
        std::set<std::string> nodes;
        const auto r = admin({"HGETALL", "ssepp:{" + key + "}:nodes"});
        for (std::size_t i = 0; r.value.is_array() && i < r.value.size(); i += 2)
            nodes.insert(r.value[i].str());
        return nodes;
    };

    auto user = std::make_unique<test::client>(b.port(), "/events?key=u");
    REQUIRE(test::eventually([&] { return b.node().local().size("u") == 1; }));
    CHECK(present("u") == std::set<std::string>{b.node().id()});
    a.send("u", {.data = "1"});
    REQUIRE(user->read_events(1));
    CHECK(user->events[0].data == "1");
    // Only the node holding the key had it.
    CHECK(b.node().local().contains("u"));
    CHECK(!a.node().local().contains("u"));
    CHECK(!c->node().local().contains("u"));

    // Presence is refreshed while the connection lasts (past several TTLs), and left after it.
    std::this_thread::sleep_for(1500ms);  // 2.5 TTLs: the entry would have lapsed without refresh
    CHECK(present("u") == std::set<std::string>{b.node().id()});
    a.send("u", {.data = "2"});
    REQUIRE(user->read_events(2));
    user.reset();
    CHECK(test::eventually([&] { return present("u").empty(); }, 5s));

    SECTION("a node that vanished lapses, and is dropped by the next send")
    {
        test::client w(c->port(), "/events?key=w");
        REQUIRE(test::eventually([&] { return c->node().local().size("w") == 1; }));
        const auto gone = c->node().id();
        c.reset();  // closes its links: no refresh, no leave
        CHECK(present("w") == std::set<std::string>{gone});
        CHECK(test::eventually([&] {
            a.send("w", {.data = "x"});
            return present("w").empty();
        }, 5s));
    }
    SECTION("a node that stalled past its TTL catches up from the stream")
    {
        test::client s(b.port(), "/events?key=s");
        REQUIRE(test::eventually([&] { return b.node().local().size("s") == 1; }));
        std::mutex m;
        std::condition_variable cv;
        bool release = false;
        asio::post(b.node().get_executor(), [&] {
            std::unique_lock lock(m);
            cv.wait_for(lock, 10s, [&] { return release; });
        });
        // Once its presence lapsed, the sends go to no node and drop the entry.
        REQUIRE(test::eventually([&] {
            a.send("s", {.data = "lost?"});
            return present("s").empty();
        }, 5s));
        a.send("s", {.data = "last"});
        {
            std::lock_guard lock(m);
            release = true;
        }
        cv.notify_all();
        REQUIRE(s.read_until([&] { return !s.events.empty() && s.events.back().data == "last"; }, 10s));
        for (std::size_t i = 0; i + 1 < s.events.size(); ++i)
            CHECK(s.events[i].data == "lost?");
        require_one_order(s.events);
        CHECK(test::eventually([&] { return present("s") == std::set<std::string>{b.node().id()}; }, 5s));
    }
}

TEST_CASE("cluster: a key the node forgot after its finish lingered is copied afresh: a late client is completed", "[cluster]")
{
    test::redis_server server;
    site a(server, {}, {.finished_linger = 100ms});  // the sweep (presence_ttl / 3) comes much later
    REQUIRE(test::eventually([&] { return a.ready(); }));
    test::client first(a.port(), "/events?key=job");
    REQUIRE(test::eventually([&] { return a.node().local().size("job") == 1; }));
    a.send("job", {.data = "50%"});
    auto f = a.node().async_finish("job", {.event = "complete", .data = "done"}, asio::use_future);
    REQUIRE(f.wait_for(5s) == std::future_status::ready);
    REQUIRE(first.read_to_eof());
    REQUIRE(test::eventually([&] { return !a.node().local().contains("job"); }));

    test::client late(a.port(), "/events?key=job");
    REQUIRE(late.read_to_eof());
    REQUIRE(late.events.size() == 2);
    CHECK(late.events[1].type == "complete");
}

TEST_CASE("cluster: is_ready() follows the bus link down and up", "[cluster]")
{
    test::redis_server server;
    site a(server);
    REQUIRE(test::eventually([&] { return a.ready(); }));
    server.kill();
    CHECK(test::eventually([&] { return !a.ready(); }));
    server.start();
    CHECK(test::eventually([&] { return a.ready(); }, 10s));
}

TEST_CASE("cluster: a node keeps a copy of a key only while it holds a connection of it", "[cluster]")
{
    const auto mode = GENERATE(redis::delivery::broadcast, redis::delivery::targeted);
    CAPTURE(mode);
    test::redis_server server;
    const redis::cluster_options o{.delivery = mode, .presence_ttl = 300ms};
    site a(server, o), b(server, o);
    REQUIRE(test::eventually([&] { return a.ready() && b.ready(); }));
    auto user = std::make_unique<test::client>(b.port(), "/events?key=u");
    REQUIRE(test::eventually([&] { return b.node().local().size("u") == 1; }));
    for (int i = 0; i < 3; ++i)
        a.send("u", {.data = std::to_string(i)});
    REQUIRE(user->read_events(3));
    const auto last = user->events.back().id;
    CHECK(!a.node().local().contains("u"));  // no connection there: dropped on arrival
    user.reset();
    CHECK(test::eventually([&] { return !b.node().local().contains("u"); }));
    a.send("u", {.data = "while away"});
    CHECK(!b.node().local().contains("u"));
    // The next connection is served from the stream.
    test::client again(b.port(), "/events?key=u", test::last_event_id_header(last));
    REQUIRE(again.read_events(1));
    CHECK(again.events[0].data == "while away");
}

TEST_CASE("cluster: scripts go by SHA1, and a flushed script cache costs one refused send", "[cluster]")
{
    test::redis_server server;
    site a(server);
    REQUIRE(test::eventually([&] { return a.ready(); }));
    test::redis_client admin(server.endpoint());
    REQUIRE(admin.wait_connected());
    const auto stat = [&](std::string_view command) {
        const auto info = admin({"INFO", "commandstats"}).value.str();
        const auto at = info.find("cmdstat_" + std::string(command) + ":calls=");
        return at == std::string::npos ? 0 : std::stoll(info.substr(at + 15 + command.size()));
    };
    a.send("k", {.data = "warm"});
    const auto eval = stat("eval");
    const auto evalsha = stat("evalsha");
    for (int i = 0; i < 10; ++i)
        a.send("k", {.data = std::to_string(i)});
    CHECK(stat("eval") == eval);
    CHECK(stat("evalsha") == evalsha + 10);

    REQUIRE(!admin({"SCRIPT", "FLUSH"}).ec);
    auto refused = a.node().async_send("k", {.data = "x"}, asio::use_future);
    REQUIRE(refused.wait_for(5s) == std::future_status::ready);
    CHECK_THROWS(refused.get());  // NOSCRIPT: nothing was stored; the caller may send again
    CHECK(test::eventually([&] {
        auto f = a.node().async_send("k", {.data = "again"}, asio::use_future);
        return f.wait_for(5s) == std::future_status::ready && (f.get(), true);
    }));
}

TEST_CASE("cluster: a key whose stream was empty at attach is caught up after a bus drop", "[cluster]")
{
    const auto mode = GENERATE(redis::delivery::broadcast, redis::delivery::targeted);
    CAPTURE(mode);
    test::redis_server server;
    site a(server, {.delivery = mode}), b(server, {.delivery = mode});
    REQUIRE(test::eventually([&] { return a.ready() && b.ready(); }));
    test::client fresh(b.port(), "/events?key=fresh");
    REQUIRE(test::eventually([&] { return b.node().local().size("fresh") == 1; }));
    test::redis_client admin(server.endpoint());
    REQUIRE(admin.wait_connected());
    REQUIRE(admin({"CLIENT", "KILL", "TYPE", "pubsub"}).value.integer() >= 1);
    a.send("fresh", {.data = "during"});
    a.send("fresh", {.data = "after"});
    REQUIRE(fresh.read_events(2));
    CHECK(fresh.events[0].data == "during");
    CHECK(fresh.events[1].data == "after");
}

TEST_CASE("cluster: an attach reads the newest entries of a stream MAXLEN ~ keeps longer than its bound", "[cluster]")
{
    test::redis_server server;
    site a(server, {.stream_max_events = 10});
    REQUIRE(test::eventually([&] { return a.ready(); }));
    for (int i = 0; i < 150; ++i)
        a.send("feed", {.data = std::to_string(i)});
    site b(server, {.stream_max_events = 10});
    REQUIRE(test::eventually([&] { return b.ready(); }));
    test::client late(b.port(), "/events?key=feed");
    REQUIRE(late.read_until([&] { return !late.events.empty() && late.events.back().data == "149"; }));
    require_one_order(late.events);
}
