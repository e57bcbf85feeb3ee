// End-to-end tests of notify_server as nodes of a cluster (issue 11): one real redis-server on
// a free port, two notify_server processes on free ports with --redis and one database file,
// and no sticky sessions: a client logs in on one node and uses the other, over real sockets.
#include "examples/support/http_client.hpp"
#include "examples/support/metrics.hpp"
#include "examples/support/notify_stderr.hpp"
#include "examples/support/process.hpp"

#include "catch.hpp"
#include "support/loopback.hpp"

#if SSEPP_EXAMPLES_REDIS

#include "support/redis_server.hpp"

#include <nlohmann/json.hpp>

#include <array>
#include <memory>
#include <thread>

using namespace e2e;
using namespace std::chrono_literals;
using json = nlohmann::json;

namespace {

/// One node: the HTTP API as a client of that node uses it.
struct node {
    std::uint16_t port = 0;

    /// Logs in; the session cookie ("session=...").
    std::string login(const std::string& user, const std::string& role = "customer") const
    {
        auto r = request(port, "POST", "/api/login", {{"Content-Type", "application/json"}},
                         json{{"user", user}, {"role", role}}.dump());
        if (r.status != 200)
            throw std::runtime_error("login failed: " + std::to_string(r.status) + " " + r.body);
        const auto set = r.header("Set-Cookie").value_or("");
        return set.substr(0, set.find(';'));
    }

    http_response post(const std::string& target, const std::string& cookie, const std::string& body = "{}",
                       const std::string& method = "POST") const
    {
        return request(port, method, target, {{"Content-Type", "application/json"}, {"Cookie", cookie}}, body);
    }

    /// A notification to `user` with `data`; its id (202 required).
    std::string notify(const std::string& cookie, const std::string& user, const std::string& data) const
    {
        auto r = post("/api/notifications/" + user, cookie, json{{"data", data}}.dump());
        INFO(r.head << r.body);
        REQUIRE(r.status == 202);
        return json::parse(r.body).at("id").get<std::string>();
    }

    /// An order for `customer` of one item `sku` (201 required).
    void order(const std::string& cookie, const std::string& customer, const std::string& sku) const
    {
        auto r = post("/api/orders", cookie, json{{"customer", customer}, {"items", {{{"sku", sku}, {"qty", 1}}}}}.dump());
        INFO(r.head << r.body);
        REQUIRE(r.status == 201);
    }

    /// The session's event stream, head read (200 required).
    std::unique_ptr<sse_client> stream(const std::string& cookie, header_list extra = {}) const
    {
        extra.emplace_back("Cookie", cookie);
        auto c = std::make_unique<sse_client>(port, "/api/events", extra);
        if (c->read_head() != 200)
            throw std::runtime_error("stream refused: " + c->response.head + c->response.body);
        return c;
    }

    /// The status of GET /api/events (for a session that is gone: a live one gets a stream,
    /// closed at once; and any request renews its session).
    int events_status(const std::string& cookie) const
    {
        sse_client c(port, "/api/events", {{"Cookie", cookie}});
        return c.read_head();
    }

    /// A counter of /metrics (it renews no session).
    std::uint64_t metric(const std::string& name) const
    {
        auto r = request(port, "GET", "/metrics");
        const auto samples = parse_samples(r.body);
        const auto it = samples.find(name);
        if (r.status != 200 || it == samples.end())
            throw std::runtime_error("no " + name + " in /metrics: " + r.body);
        return it->second;
    }
};

/// A redis-server and two notify_server nodes sharing it and one database file.
struct cluster {
    test::redis_server redis;
    temp_dir dir;
    fs::path err = dir / "stderr.txt";
    stderr_redirect redirect{err};  // both nodes' stderr goes to `err`
    std::array<std::unique_ptr<server_process>, 2> procs;
    node a, b;

    /// `flags`: more command-line flags, the same for both nodes (the limits).
    explicit cluster(const std::vector<std::string>& flags = {})
    {
        for (auto& p : procs) {
            std::vector<std::string> args{"--port", "0", "--db", (dir / "notify.db").string(), "--export-ms", "100",
                                          "--redis", redis.url()};
            args.insert(args.end(), flags.begin(), flags.end());
            p = std::make_unique<server_process>(example_binary("notify_server", "SSEPP_NOTIFY_SERVER"), args);
        }
        redirect.restore();
        a.port = procs[0]->port();
        b.port = procs[1]->port();
    }

    ~cluster()
    {
        for (auto& p : procs) {
            if (p->wait_exit(0ms))
                continue;  // never signal a pid already reaped (it may be reused)
            p->signal(SIGTERM);
            if (!p->wait_exit(10s)) {
                p->signal(SIGKILL);
                p->wait_exit(10s);
            }
        }
        // What the nodes said on stderr (a sanitizer report, an exception) goes with the
        // test's output.
        if (const auto text = read_file(err); !text.empty())
            std::fprintf(stderr, "notify_server nodes' stderr:\n%s\n", text.c_str());
    }
};

/// One command to the test's redis-server (inline form); its reply's first line.
std::string redis_command(std::uint16_t port, const std::string& command)
{
    connection c(port);
    c.send_all(command + "\r\n");
    std::string reply;
    const auto deadline = clock::now() + 5s;
    while (reply.find("\r\n") == std::string::npos)
        if (!c.read_some(reply, deadline) || c.eof())
            break;
    return reply.substr(0, reply.find("\r\n"));
}

/// What an event stands for in these tests: a notification's data, an order's sku, or the
/// event name for anything else.
std::string label(const e2e::event& e)
{
    if (e.type == "message")
        return e.data;
    if (e.type == "order-created")
        return json::parse(e.data).at("items").at(0).at("sku").get<std::string>();
    return e.type;
}

std::vector<std::string> labels(const std::vector<e2e::event>& events, std::size_t from = 0)
{
    std::vector<std::string> out;
    for (std::size_t i = from; i < events.size(); ++i)
        out.push_back(label(events[i]));
    return out;
}

} // namespace

TEST_CASE("notify cluster e2e: a session made on node A is valid on node B, a notification sent through A reaches "
          "the stream on B once",
          "[notify-e2e][cluster]")
{
    cluster c;
    const auto ann = c.a.login("ann");
    auto s = c.b.stream(ann);
    const auto id = c.a.notify(ann, "ann", "hello from A");
    REQUIRE(s->read_events(1));
    CHECK(s->events[0].data == "hello from A");
    CHECK(s->events[0].id == id);  // the id A answered is the one B's stream carries
    CHECK(s->nothing_for(300ms));
    CHECK(s->events.size() == 1);
    // Every request of the session works on either node.
    CHECK(c.b.post("/api/notifications/ann", ann, R"({"data":"to self, through B"})").status == 202);
    REQUIRE(s->read_events(2));
    CHECK(s->events[1].data == "to self, through B");
    // A session neither node gave is refused by both.
    for (const auto* n : {&c.a, &c.b})
        CHECK(n->events_status("session=0123456789abcdef0123456789abcdef") == 401);
}

TEST_CASE("notify cluster e2e: an order placed on A reaches every admin's stream on either node exactly once, no "
          "customer's",
          "[notify-e2e][cluster]")
{
    cluster c;
    const auto ann = c.a.login("ann", "admin");
    const auto bea = c.b.login("bea", "admin");
    const auto cid = c.a.login("cid");
    auto ann_on_b = c.b.stream(ann);
    auto bea_on_a = c.a.stream(bea);
    auto cid_on_b = c.b.stream(cid);
    c.a.order(cid, "cid", "sku-1");
    for (auto* s : {ann_on_b.get(), bea_on_a.get()}) {
        REQUIRE(s->read_events(1));
        CHECK(s->events[0].type == "order-created");
        const auto order = json::parse(s->events[0].data);
        CHECK(order.at("customer") == "cid");
        CHECK(order.at("items").at(0).at("sku") == "sku-1");
    }
    // Exactly once: no copy follows, on either node; the customer's stream gets none.
    CHECK(ann_on_b->nothing_for(300ms));
    CHECK(bea_on_a->nothing_for(1ms));
    CHECK(cid_on_b->nothing_for(1ms));
    CHECK(ann_on_b->events.size() == 1);
    CHECK(bea_on_a->events.size() == 1);
    CHECK(cid_on_b->events.empty());

    // Orders placed on both nodes share one database: the ids do not collide, and an admin's
    // export (on either node) holds them all.
    c.b.order(cid, "cid", "sku-2");
    REQUIRE(ann_on_b->read_events(2));
    CHECK(json::parse(ann_on_b->events[1].data).at("order_id") != json::parse(ann_on_b->events[0].data).at("order_id"));
    auto r = c.a.post("/api/exports", ann);
    REQUIRE(r.status == 202);
    REQUIRE(ann_on_b->read_events(3));
    CHECK(ann_on_b->events[2].type == "export-ready");
    const auto file = request(c.b.port, "GET", json::parse(r.body).at("file").get<std::string>(), {{"Cookie", ann}});
    REQUIRE(file.status == 200);
    CHECK(file.body.find("sku-1") != std::string::npos);
    CHECK(file.body.find("sku-2") != std::string::npos);
}

TEST_CASE("notify cluster e2e: an export started on A is announced on the user's stream on B, its file is served by "
          "both nodes to that user only",
          "[notify-e2e][cluster]")
{
    cluster c;
    const auto cid = c.a.login("cid");
    const auto dan = c.b.login("dan");
    c.b.order(cid, "cid", "mine");
    c.a.order(dan, "dan", "not-mine");
    auto s = c.b.stream(cid);
    auto r = c.a.post("/api/exports", cid);
    REQUIRE(r.status == 202);
    const auto j = json::parse(r.body);
    const auto target = j.at("file").get<std::string>();
    REQUIRE(s->read_events(1, 10s));
    CHECK(s->events[0].type == "export-ready");
    CHECK(json::parse(s->events[0].data).at("export_id") == j.at("export_id"));
    CHECK(json::parse(s->events[0].data).at("url") == target);
    for (const auto* n : {&c.a, &c.b}) {
        const auto file = request(n->port, "GET", target, {{"Cookie", cid}});
        REQUIRE(file.status == 200);
        CHECK(file.body.find("mine") != std::string::npos);
        CHECK(file.body.find("not-mine") == std::string::npos);
        CHECK(request(n->port, "GET", target, {{"Cookie", dan}}).status == 404);  // others' exports do not exist
    }
}

TEST_CASE("notify cluster e2e: a stream that switches node with Last-Event-ID misses nothing and gets no duplicate, "
          "under an admin's two keys",
          "[notify-e2e][cluster]")
{
    cluster c;
    const auto ann = c.a.login("ann", "admin");  // her stream: her notifications and the order alerts
    const auto cid = c.b.login("cid");
    std::vector<std::string> sent;
    int n = 0;
    // Alternately a notification and an order, alternately through A and B.
    auto send = [&](int count) {
        for (int i = 0; i < count; ++i, ++n) {
            const auto& through = n % 3 == 0 ? c.a : c.b;
            if (n % 2 == 0) {
                sent.push_back("note-" + std::to_string(n));
                through.notify(ann, "ann", sent.back());
            } else {
                sent.push_back("order-" + std::to_string(n));
                through.order(cid, "cid", sent.back());
            }
        }
    };

    std::vector<std::string> got;
    std::optional<std::string> last_id;
    // Each hop: connect to the other node, send while connected, read only part of it, drop
    // the connection (unread events are in flight), send more while disconnected.
    for (int hop = 0; hop < 4; ++hop) {
        const auto& to = hop % 2 == 0 ? c.a : c.b;
        header_list h;
        if (last_id)
            h.emplace_back("Last-Event-ID", *last_id);
        auto s = to.stream(ann, h);
        send(6);
        const auto want = sent.size() - got.size();  // what it has not had yet
        const std::size_t take = hop == 3 ? want : want - 3;
        REQUIRE(s->read_events(take, 10s));
        for (std::size_t i = 0; i < take; ++i)
            got.push_back(label(s->events[i]));
        last_id = s->events[take - 1].id;
        if (hop == 3) {
            CHECK(s->nothing_for(300ms));  // no duplicate after the last
            CHECK(s->events.size() == take);
        }
        s->conn().reset();
        if (hop < 3)
            send(4);
    }
    CHECK(got == sent);  // nothing lost, nothing twice, in the order sent
}

TEST_CASE("notify cluster e2e: logout on A ends the session's streams on B within a bounded wait, and the session "
          "on both",
          "[notify-e2e][cluster]")
{
    cluster c;
    const auto ann = c.a.login("ann", "admin");
    const auto other = c.a.login("ann", "admin");  // another session of hers stays
    auto on_b = c.b.stream(ann);
    auto on_a = c.a.stream(ann);
    auto other_on_b = c.b.stream(other);
    auto r = c.a.post("/api/logout", ann);
    REQUIRE(r.status == 200);
    CHECK(on_b->read_to_eof(2s));
    CHECK(on_a->read_to_eof(2s));
    for (const auto* n : {&c.a, &c.b})
        CHECK(n->events_status(ann) == 401);
    CHECK(c.b.post("/api/notifications/ann", ann, R"({"data":"x"})").status == 401);
    // Her other session's stream is still there, and still gets her events.
    c.b.notify(other, "ann", "still here");
    REQUIRE(other_on_b->read_events(1));
    CHECK(other_on_b->events[0].data == "still here");
}

TEST_CASE("notify cluster e2e: DELETE /api/events on A closes the user's streams on both nodes, no one else's",
          "[notify-e2e][cluster]")
{
    cluster c;
    const auto ann1 = c.a.login("ann");
    const auto ann2 = c.b.login("ann");
    const auto bob = c.b.login("bob");
    auto ann_on_b = c.b.stream(ann1);
    auto ann2_on_a = c.a.stream(ann2);
    auto bob_on_b = c.b.stream(bob);
    auto r = c.a.post("/api/events", ann1, "{}", "DELETE");
    REQUIRE(r.status == 200);
    CHECK(ann_on_b->read_to_eof(5s));
    CHECK(ann2_on_a->read_to_eof(5s));
    CHECK_FALSE(bob_on_b->eof());
    c.a.notify(bob, "bob", "bob's");
    REQUIRE(bob_on_b->read_events(1));
    // The sessions stay: ann opens a stream again, on either node.
    auto again = c.b.stream(ann1);
    c.a.notify(ann2, "ann", "after");
    REQUIRE(again->read_events(1));
    CHECK(again->events.back().data == "after");
}

TEST_CASE("notify cluster e2e: what is sent while a user has no stream arrives on their next stream, on the other "
          "node",
          "[notify-e2e][cluster]")
{
    cluster c;
    const auto ann = c.a.login("ann", "admin");
    const auto cid = c.a.login("cid");
    c.a.notify(ann, "ann", "while away");
    c.a.order(cid, "cid", "sku-away");
    auto s = c.b.stream(ann);
    REQUIRE(s->read_events(2));
    CHECK(labels(s->events) == std::vector<std::string>{"while away", "sku-away"});
    CHECK(s->nothing_for(300ms));
}

TEST_CASE("notify cluster e2e: the caps on sessions and users are the cluster's, a user idle past the session time "
          "makes room with what was kept for them",
          "[notify-e2e][cluster]")
{
    cluster c({"--max-sessions", "3", "--max-users", "2", "--session-idle-ms", "1000"});
    // Sessions: three in all, whichever node made them.
    const auto u1 = c.a.login("u1");
    const auto u1b = c.b.login("u1");
    const auto u2 = c.b.login("u2");
    for (const auto* n : {&c.a, &c.b}) {
        auto r = request(n->port, "POST", "/api/login", {{"Content-Type", "application/json"}},
                         R"({"user":"u1","role":"customer"})");
        INFO(r.head << r.body);
        CHECK(r.status == 503);
        CHECK(r.header("Retry-After").has_value());
    }
    c.a.post("/api/logout", u1b);
    // Users: two, both active now, so a third is refused.
    c.a.notify(u1, "u1", "kept for u1");
    auto r = c.b.post("/api/notifications/u3", u2, R"({"data":"x"})");  // a customer may not: 403 first
    CHECK(r.status == 403);
    r = request(c.b.port, "POST", "/api/login", {{"Content-Type", "application/json"}}, R"({"user":"u3","role":"customer"})");
    INFO(r.head << r.body);
    CHECK(r.status == 503);
    // Once u1 and u2 are idle past --session-idle-ms (their sessions are gone), u3 takes the place
    // of the least recently active one, u1, with what was kept for u1.
    REQUIRE(test::eventually([&] { return c.a.metric("notify_sessions") == 0; }, 5s, 50ms));
    CHECK(c.b.events_status(u2) == 401);
    const auto u3 = c.b.login("u3");
    const auto u1_again = c.a.login("u1");  // makes room in turn (u2 is the least recent now)
    auto s = c.b.stream(u1_again);
    CHECK(s->nothing_for(300ms));  // "kept for u1" went with u1
    CHECK(s->events.empty());
}

TEST_CASE("notify cluster e2e: a session with a stream open on B stays while unused, one without expires on both "
          "nodes",
          "[notify-e2e][cluster]")
{
    cluster c({"--session-idle-ms", "600"});
    const auto kept = c.a.login("ann");
    const auto idle = c.a.login("bob");
    auto s = c.b.stream(kept);
    // bob's session goes after 600 ms without use; ann's stays while B holds her stream (B
    // renews it every 200 ms), though no request of hers comes.
    REQUIRE(test::eventually([&] { return c.b.metric("notify_sessions") == 1; }, 5s, 50ms));
    CHECK(c.a.events_status(idle) == 401);
    CHECK(c.b.events_status(idle) == 401);
    std::this_thread::sleep_for(1500ms);  // 2.5 idle times without a request of ann's
    CHECK(c.a.metric("notify_sessions") == 1);
    CHECK_FALSE(s->eof());
    c.a.notify(kept, "ann", "still valid");  // a request of that session, on the other node
    REQUIRE(s->read_events(1));
    CHECK(s->events[0].data == "still valid");
}

TEST_CASE("notify cluster e2e: a logout made while B's Redis links drop still ends the session's stream on B",
          "[notify-e2e][cluster]")
{
    cluster c({"--session-idle-ms", "1500"});  // B checks its streaming sessions every 500 ms
    const auto ann = c.a.login("ann");
    auto s = c.b.stream(ann);
    // Every subscribed link (both nodes' bus and control channels) drops; the logout's message
    // may be published before B's control link is back, and B must learn of it anyway.
    const auto killed = redis_command(c.redis.port(), "CLIENT KILL TYPE pubsub");
    INFO(killed);
    REQUIRE(killed.starts_with(":"));
    REQUIRE(c.a.post("/api/logout", ann).status == 200);
    CHECK(s->read_to_eof(5s));
    CHECK(c.b.events_status(ann) == 401);
}

TEST_CASE("notify cluster e2e: SIGTERM ends a node's streams and it exits 0 with nothing on stderr, the other node "
          "serves on",
          "[notify-e2e][cluster]")
{
    cluster c;
    const auto ann = c.a.login("ann", "admin");
    auto on_a = c.a.stream(ann);
    auto on_b = c.b.stream(ann);
    REQUIRE(c.a.post("/api/exports", ann).status == 202);  // one running on A's workers
    c.procs[0]->signal(SIGTERM);
    CHECK(on_a->read_to_eof(5s));
    CHECK(c.procs[0]->wait_exit(10s) == std::optional<int>(0));
    // B goes on: its stream is open and gets what is sent through it.
    CHECK_FALSE(on_b->eof());
    c.b.notify(ann, "ann", "after A left");
    REQUIRE(on_b->read_until([&] { return !on_b->events.empty() && on_b->events.back().data == "after A left"; }));
    c.procs[1]->signal(SIGTERM);
    CHECK(on_b->read_to_eof(5s));
    CHECK(c.procs[1]->wait_exit(10s) == std::optional<int>(0));
    CHECK(read_file(c.err).empty());
}

#endif
