// Test that the header is self-contained.
#include <ssepp/redis/cluster.hpp>

#include "helpers.hpp"
#include "../support/registry_support.hpp"

#include <algorithm>
#include <map>
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
    site(const test::redis_server& server, redis::cluster_options o = {})
    {
        o.server = server.endpoint();
        o.reconnect_delay = 20ms;
        o.max_reconnect_delay = 200ms;
        node_ = redis::node::create(asio::make_strand(srv_.io()), std::move(o), {.max_events = 4096});
        srv_.serve([this](asio::ip::tcp::socket s, std::string head) {
            const auto line = std::string_view(head).substr(0, head.find("\r\n"));
            const auto target = line.substr(line.find(' ') + 1, line.rfind(' ') - line.find(' ') - 1);
            const auto key = ssepp::query_parameter(target, "key").value_or("k");
            ssepp::attach_options ao;
            ao.last_event_id = ssepp::last_event_id(head);
            if (ssepp::query_parameter(target, "gap"))
                ao.on_gap = ssepp::event{.event = "reset", .data = "gap"};
            node_->async_attach(std::string(key), ssepp::make_emitter(std::move(s), test::quiet()), ao,
                                [this](std::error_code ec, ssepp::attach_result r) {
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

    std::vector<std::pair<std::error_code, ssepp::attach_result>> results() const
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
    std::vector<std::pair<std::error_code, ssepp::attach_result>> results_;
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
    test::redis_server server;
    site a(server), b(server), c(server);
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

TEST_CASE("cluster: a client resumes on another node, even one that joined later", "[cluster]")
{
    test::redis_server server;
    site a(server);
    REQUIRE(test::eventually([&] { return a.ready(); }));
    test::client first(a.port(), "/events?key=job");
    REQUIRE(test::eventually([&] { return a.node().local().size("job") == 1; }));
    for (int i = 0; i < 50; ++i)
        a.send("job", {.data = std::to_string(i)});
    REQUIRE(first.read_events(20));
    const auto resume_from = first.events[19].id;
    first.reset();

    site b(server);  // joined after the events: its own history of "job" is empty
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
    test::redis_server server;
    site a(server), b(server);
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
