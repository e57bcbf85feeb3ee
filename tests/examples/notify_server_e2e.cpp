// End-to-end tests of examples/notifications/notify_server (issue 5): the real binary on
// 127.0.0.1, port 0, a temp database; sessions, per-user streams, resume, offline delivery,
// orders to admins, exports, the lossy ticker and the metrics, over real sockets, with the
// streams parsed by ssepp::parser.
#include "examples/support/http_client.hpp"
#include "examples/support/notify_stderr.hpp"
#include "examples/support/process.hpp"

#include "catch.hpp"
#include "support/loopback.hpp"

#include "common/sqlite.hpp"

#include <nlohmann/json.hpp>

#include <csignal>
#include <map>
#include <thread>

using namespace e2e;
using namespace std::chrono_literals;
using json = nlohmann::json;

namespace {

struct notify_server {
    temp_dir dir;
    fs::path db = dir / "notify.db";
    fs::path err = dir / "stderr.txt";
    stderr_redirect redirect{err}; // the server's stderr goes to `err`
    server_process proc;

    explicit notify_server(std::string export_ms = "100")
        : proc(example_binary("notify_server", "SSEPP_NOTIFY_SERVER"),
               {"--port", "0", "--db", db.string(), "--export-ms", export_ms})
    {
        redirect.restore();
    }

    ~notify_server()
    {
        // Whatever the server said on stderr (a sanitizer report, an exception) goes with the
        // test's output, as if it had not been captured.
        proc.signal(SIGKILL);
        proc.wait_exit(10s);
        if (const auto text = stderr_text(); !text.empty())
            std::fprintf(stderr, "notify_server stderr:\n%s\n", text.c_str());
    }

    std::string stderr_text() const { return read_file(err); }

    std::uint16_t port() const { return proc.port(); }

    /// Logs in; the session cookie ("session=...") to send back.
    std::string login(const std::string& user, const std::string& role = "customer")
    {
        auto r = request(port(), "POST", "/api/login", {{"Content-Type", "application/json"}},
                         json{{"user", user}, {"role", role}}.dump());
        if (r.status != 200)
            throw std::runtime_error("login failed: " + std::to_string(r.status) + " " + r.body);
        const auto set = r.header("Set-Cookie").value_or("");
        return set.substr(0, set.find(';'));
    }

    /// POST /api/notifications/<user> with `body`; the response.
    http_response notify(const std::string& user, const json& body)
    {
        return request(port(), "POST", "/api/notifications/" + user, {{"Content-Type", "application/json"}}, body.dump());
    }

    /// A user's stream, head read (200 required).
    std::unique_ptr<sse_client> stream(const std::string& cookie, header_list extra = {}, int receive_buffer = 0)
    {
        extra.emplace_back("Cookie", cookie);
        auto c = std::make_unique<sse_client>(port(), "/api/events", extra, receive_buffer);
        if (c->read_head() != 200)
            throw std::runtime_error("stream refused: " + c->response.head);
        return c;
    }

    std::map<std::string, std::uint64_t> metrics()
    {
        auto r = request(port(), "GET", "/metrics");
        if (r.status != 200)
            throw std::runtime_error("metrics: " + std::to_string(r.status));
        std::map<std::string, std::uint64_t> out;
        std::size_t at = 0;
        while (at < r.body.size()) {
            auto eol = r.body.find('\n', at);
            const auto line = r.body.substr(at, eol - at);
            const auto sp = line.find(' ');
            out[line.substr(0, sp)] = std::stoull(line.substr(sp + 1));
            at = eol == std::string::npos ? r.body.size() : eol + 1;
        }
        return out;
    }
};

/// Sends one event to `user` and returns the id the server gave it (checks the 202).
std::string send(notify_server& s, const std::string& user, const std::string& data, const std::string& event = "",
                 std::size_t delivered_to = std::size_t(-1))
{
    json body{{"data", data}};
    if (!event.empty())
        body["event"] = event;
    auto r = s.notify(user, body);
    INFO(r.head << r.body);
    REQUIRE(r.status == 202);
    const auto j = json::parse(r.body);
    if (delivered_to != std::size_t(-1))
        CHECK(j.at("delivered_to").get<std::size_t>() == delivered_to);
    return j.at("id").get<std::string>();
}

} // namespace

TEST_CASE("notify_server e2e: login sets an HttpOnly session cookie, no session is 401", "[notify-e2e]")
{
    notify_server s;
    auto r = request(s.port(), "POST", "/api/login", {{"Content-Type", "application/json"}},
                     R"({"user":"alice","role":"admin"})");
    REQUIRE(r.status == 200);
    CHECK(json::parse(r.body) == json{{"user", "alice"}, {"role", "admin"}});
    const auto cookie = r.header("Set-Cookie").value_or("");
    CHECK(cookie.starts_with("session="));
    CHECK(cookie.find("HttpOnly") != std::string::npos);
    CHECK(cookie.find("Path=/") != std::string::npos);
    CHECK(cookie.substr(8, cookie.find(';') - 8).size() == 32);
    // A second login gets a session of its own.
    CHECK(s.login("alice", "admin") != cookie.substr(0, cookie.find(';')));

    for (const auto* bad : {R"({"user":"bob","role":"root"})", R"({"user":"","role":"customer"})", R"({"user":"bob"})",
                            "not json", R"(["bob","admin"])"}) {
        INFO(bad);
        CHECK(request(s.port(), "POST", "/api/login", {{"Content-Type", "application/json"}}, bad).status == 400);
    }

    // Without a session, or with one the server never gave: 401, and no stream.
    for (const header_list& h : {header_list{}, header_list{{"Cookie", "session=0123456789abcdef0123456789abcdef"}},
                                 header_list{{"Cookie", "other=1"}}}) {
        header_list with_accept = h;
        with_accept.emplace_back("Accept", "text/event-stream");
        auto r401 = request(s.port(), "GET", "/api/events", with_accept);
        CHECK(r401.status == 401);
        CHECK(r401.header("Content-Type").value_or("") == "application/json");
        CHECK(json::parse(r401.body).contains("error"));
        CHECK(request(s.port(), "DELETE", "/api/events", h).status == 401);
        CHECK(request(s.port(), "POST", "/api/exports", h).status == 401);
        CHECK(request(s.port(), "GET", "/api/exports/x/file", h).status == 401);
    }
    auto page = request(s.port(), "GET", "/");
    CHECK(page.status == 200);
    CHECK(page.body.find("EventSource") != std::string::npos);
}

TEST_CASE("notify_server e2e: data arrives byte-equal, CR and CRLF arrive as LF", "[notify-e2e]")
{
    notify_server s;
    const auto cookie = s.login("alice");
    auto c = s.stream(cookie);
    const std::vector<std::pair<std::string, std::string>> cases{
        {"plain", "plain"},
        {"two\nlines", "two\nlines"},
        {"blank\n\nlines\n\n", "blank\n\nlines\n\n"},
        {"\n", "\n"},
        {"", ""},
        {"  leading spaces\n   and more", "  leading spaces\n   and more"},
        {"data: not a field\nid: 7\nevent: x\n: comment", "data: not a field\nid: 7\nevent: x\n: comment"},
        {"colons: a:b::c", "colons: a:b::c"},
        {"multibyte: Grüße, 日本茶, emoji 🎉, ∑", "multibyte: Grüße, 日本茶, emoji 🎉, ∑"},
        {"cr\ronly", "cr\nonly"},
        {"crlf\r\nline\r\n", "crlf\nline\n"},
        {"\r\n\r", "\n\n"},
        {"tab\there", "tab\there"},
    };
    std::vector<std::string> ids;
    for (const auto& [sent, _] : cases)
        ids.push_back(send(s, "alice", sent, "note", 1));
    REQUIRE(c->read_events(cases.size()));
    CHECK(!c->parse_error);
    for (std::size_t i = 0; i < cases.size(); ++i) {
        INFO("case " << i);
        CHECK(c->events[i].type == "note");
        CHECK(c->events[i].data == cases[i].second);
        CHECK(c->events[i].id == ids[i]);
    }
    // An unnamed event is a "message"; an id of the application's own is kept.
    auto r = s.notify("alice", {{"data", "hi"}, {"id", "app-7 ünïcode"}});
    REQUIRE(r.status == 202);
    CHECK(json::parse(r.body).at("id") == "app-7 ünïcode");
    REQUIRE(c->read_events(cases.size() + 1));
    CHECK(c->events.back().type == "message");
    CHECK(c->events.back().id == "app-7 ünïcode");
    // A user name in the path is percent-decoded.
    const auto jurgen = s.login("Jürgen+1");
    auto j = s.stream(jurgen);
    send(s, "J%C3%BCrgen+1", "für dich", "", 1);
    REQUIRE(j->read_events(1));
    CHECK(j->events[0].data == "für dich");
}

TEST_CASE("notify_server e2e: bad notifications are 400 and send nothing", "[notify-e2e]")
{
    notify_server s;
    auto c = s.stream(s.login("alice"));
    const std::vector<std::string> bad{
        json{{"data", "x"}, {"id", "a\nb"}}.dump(),
        json{{"data", "x"}, {"id", "a\rb"}}.dump(),
        json{{"data", "x"}, {"id", std::string("a\0b", 3)}}.dump(),
        json{{"data", "x"}, {"event", "a\nb"}}.dump(),
        json{{"data", "x"}, {"event", "a\rb"}}.dump(),
        json{{"data", "x"}, {"event", std::string("a\0b", 3)}}.dump(),
        json{{"event", "x"}}.dump(),
        json{{"data", 5}}.dump(),
        json{{"data", "x"}, {"id", 5}}.dump(),
        "{\"data\": \"unterminated",
        "[1,2]",
        "",
    };
    for (const auto& body : bad) {
        INFO(body);
        auto r = request(s.port(), "POST", "/api/notifications/alice", {{"Content-Type", "application/json"}}, body);
        CHECK(r.status == 400);
        CHECK(json::parse(r.body).contains("error"));
    }
    send(s, "alice", "after", "", 1);
    REQUIRE(c->read_events(1));
    CHECK(c->events.size() == 1);
    CHECK(c->events[0].data == "after");
    CHECK(c->nothing_for(200ms));
}

TEST_CASE("notify_server e2e: every connection of a user receives, no other user does", "[notify-e2e]")
{
    notify_server s;
    const auto alice = s.login("alice");
    const auto alice2 = s.login("alice");  // a second session of the same user
    const auto bob = s.login("bob");
    auto a1 = s.stream(alice);
    auto a2 = s.stream(alice);
    auto a3 = s.stream(alice2);
    auto b = s.stream(bob);
    for (int i = 0; i < 5; ++i)
        send(s, "alice", "for alice " + std::to_string(i), "", 3);
    for (auto* c : {a1.get(), a2.get(), a3.get()}) {
        REQUIRE(c->read_events(5));
        for (int i = 0; i < 5; ++i)
            CHECK(c->events[i].data == "for alice " + std::to_string(i));
    }
    // Bob got nothing of that: the first thing he gets is his own.
    send(s, "bob", "for bob", "", 1);
    REQUIRE(b->read_events(1));
    CHECK(b->events[0].data == "for bob");
    CHECK(b->nothing_for(200ms));
    CHECK(a1->nothing_for(100ms));
    CHECK(a1->events.size() == 5);
}

TEST_CASE("notify_server e2e: what is sent while a user is offline arrives on the next connection", "[notify-e2e]")
{
    notify_server s;
    const auto carol = s.login("carol");
    send(s, "carol", "while away 1", "", 0);
    send(s, "carol", "while away 2", "", 0);
    auto c = s.stream(carol);
    REQUIRE(c->read_events(2));
    CHECK(c->events[0].data == "while away 1");
    CHECK(c->events[1].data == "while away 2");
    send(s, "carol", "live", "", 1);
    REQUIRE(c->read_events(3));
    CHECK(c->events[2].data == "live");
    c->conn().close();
    REQUIRE(test::eventually([&] { return s.metrics().at("open_streams") == 0; }, 5s, 5ms));
    // Delivered ones are not sent again to a new connection without Last-Event-ID.
    send(s, "carol", "away again", "", 0);
    auto c2 = s.stream(carol);
    REQUIRE(c2->read_events(1));
    CHECK(c2->events[0].data == "away again");
    CHECK(c2->nothing_for(200ms));
}

TEST_CASE("notify_server e2e: a dropped connection resumes with Last-Event-ID, nothing lost or repeated",
          "[notify-e2e]")
{
    notify_server s;
    const auto dave = s.login("dave");
    std::vector<std::string> ids;
    auto c = s.stream(dave);
    for (int i = 0; i < 3; ++i)
        ids.push_back(send(s, "dave", "n" + std::to_string(i), "", 1));
    REQUIRE(c->read_events(3));
    c->conn().reset();  // abruptly
    REQUIRE(test::eventually([&] { return s.metrics().at("open_streams") == 0; }, 5s, 5ms));
    for (int i = 3; i < 6; ++i)
        ids.push_back(send(s, "dave", "n" + std::to_string(i), "", 0));

    // Resuming from the second event: the third was delivered to the old connection, but this
    // client says it did not see it, so it comes again, then the three sent while away.
    auto r = s.stream(dave, {{"Last-Event-ID", ids[1]}});
    REQUIRE(r->read_events(4));
    for (int i = 0; i < 4; ++i) {
        CHECK(r->events[i].data == "n" + std::to_string(i + 2));
        CHECK(r->events[i].id == ids[i + 2]);
    }
    CHECK(r->nothing_for(200ms));
    // Live events follow the replay.
    ids.push_back(send(s, "dave", "n6", "", 1));
    REQUIRE(r->read_events(5));
    CHECK(r->events[4].data == "n6");
    CHECK(s.metrics().at("replays_served") >= 1);
}

TEST_CASE("notify_server e2e: an order is stored and every admin, only admins, get order-created", "[notify-e2e]")
{
    notify_server s;
    const auto ada = s.login("ada", "admin");  // an admin with no connection for now
    auto admin1 = s.stream(s.login("ann", "admin"));
    auto admin2 = s.stream(s.login("abe", "admin"));
    auto customer = s.stream(s.login("cleo", "customer"));
    const json order{{"customer", "cleo"}, {"items", json::array({{{"sku", "SKU-1"}, {"qty", 2}}, {{"sku", "Ü-2"}, {"qty", 1}}})}};
    auto r = request(s.port(), "POST", "/api/orders", {{"Content-Type", "application/json"}}, order.dump());
    REQUIRE(r.status == 201);
    const auto created = json::parse(r.body);
    const auto order_id = created.at("order_id").get<std::int64_t>();
    CHECK(created.at("customer") == "cleo");
    CHECK(created.at("items") == order["items"]);
    for (auto* a : {admin1.get(), admin2.get()}) {
        REQUIRE(a->read_events(1));
        CHECK(a->events[0].type == "order-created");
        CHECK(json::parse(a->events[0].data) == created);
    }
    CHECK(customer->nothing_for(200ms));

    // Stored in SQLite.
    {
        common::sqlite::db db(s.db.string(), SQLITE_OPEN_READONLY);
        db.busy_timeout(5s);
        common::sqlite::statement q(db, "SELECT o.customer, i.sku, i.qty FROM orders o JOIN order_items i ON i.order_id = o.id"
                                        " WHERE o.id = ? ORDER BY i.rowid");
        q.bind(1, order_id);
        REQUIRE(q.step());
        CHECK(q.column_text(0) == "cleo");
        CHECK(q.column_text(1) == "SKU-1");
        CHECK(q.column_int64(2) == 2);
        REQUIRE(q.step());
        CHECK(q.column_text(1) == "Ü-2");
        CHECK(!q.step());
    }
    // An admin who was offline gets it on connecting (though other admins had it already).
    auto late = s.stream(ada);
    REQUIRE(late->read_events(1));
    CHECK(late->events[0].type == "order-created");
    CHECK(json::parse(late->events[0].data) == created);
    CHECK(late->nothing_for(100ms));
    // The same user as a customer is no admin.
    auto cleo_again = s.stream(s.login("cleo", "customer"));
    CHECK(cleo_again->nothing_for(100ms));

    for (const auto* bad : {R"({"customer":"x","items":[]})", R"({"customer":"x","items":[{"sku":"a","qty":0}]})",
                            R"({"customer":"x","items":[{"sku":1,"qty":1}]})", R"({"items":[{"sku":"a","qty":1}]})", "{"}) {
        INFO(bad);
        CHECK(request(s.port(), "POST", "/api/orders", {{"Content-Type", "application/json"}}, bad).status == 400);
    }
    // Orders placed at once from many connections are all stored.
    std::vector<std::thread> threads;
    std::atomic<int> created_ok{0};
    for (int t = 0; t < 8; ++t)
        threads.emplace_back([&, t] {
            for (int i = 0; i < 10; ++i) {
                try {  // no Catch2 assertions off the main thread
                    auto rr = request(s.port(), "POST", "/api/orders", {{"Content-Type", "application/json"}},
                                      json{{"customer", "c" + std::to_string(t)},
                                           {"items", json::array({{{"sku", "S"}, {"qty", 1}}})}}.dump());
                    created_ok += rr.status == 201;
                } catch (const std::exception&) {
                }
            }
        });
    for (auto& t : threads)
        t.join();
    CHECK(created_ok == 80);
    REQUIRE(admin1->read_events(81, 10s));
}

TEST_CASE("notify_server e2e: an export's export-ready and file reach only the user who asked", "[notify-e2e]")
{
    notify_server s;
    const auto erin = s.login("erin");
    const auto frank = s.login("frank");
    auto e = s.stream(erin);
    auto f = s.stream(frank);
    REQUIRE(request(s.port(), "POST", "/api/orders", {{"Content-Type", "application/json"}},
                    R"({"customer":"say \"hi\"","items":[{"sku":"A,1","qty":3}]})")
                .status
            == 201);
    auto r = request(s.port(), "POST", "/api/exports", {{"Cookie", erin}});
    REQUIRE(r.status == 202);
    const auto x = json::parse(r.body);
    const auto export_id = x.at("export_id").get<std::string>();
    const auto url = "/api/exports/" + export_id + "/file";
    CHECK(x.at("file") == url);

    REQUIRE(e->read_events(1, 5s));
    CHECK(e->events[0].type == "export-ready");
    const auto ready = json::parse(e->events[0].data);
    CHECK(ready.at("export_id") == export_id);
    CHECK(ready.at("url") == url);
    CHECK(f->nothing_for(200ms));

    auto file = request(s.port(), "GET", url, {{"Cookie", erin}});
    REQUIRE(file.status == 200);
    CHECK(file.header("Content-Type").value_or("").starts_with("text/csv"));
    CHECK(file.header("Content-Disposition").value_or("").find("attachment") != std::string::npos);
    CHECK(file.body.starts_with("order_id,customer,created_at,sku,qty\n"));
    CHECK(file.body.find(R"(,"say ""hi""",)") != std::string::npos);
    CHECK(file.body.find(R"(,"A,1",3)") != std::string::npos);
    // Another user: as if it did not exist. Another session of the same user: fine.
    CHECK(request(s.port(), "GET", url, {{"Cookie", frank}}).status == 404);
    CHECK(request(s.port(), "GET", url, {{"Cookie", s.login("erin")}}).status == 200);
    CHECK(request(s.port(), "GET", "/api/exports/nope/file", {{"Cookie", erin}}).status == 404);
}

TEST_CASE("notify_server e2e: an export not ready yet is 409", "[notify-e2e]")
{
    notify_server s("3000");
    const auto gus = s.login("gus");
    auto r = request(s.port(), "POST", "/api/exports", {{"Cookie", gus}});
    REQUIRE(r.status == 202);
    const auto url = json::parse(r.body).at("file").get<std::string>();
    CHECK(request(s.port(), "GET", url, {{"Cookie", gus}}).status == 409);
}

TEST_CASE("notify_server e2e: DELETE /api/events closes all of the user's streams, no one else's", "[notify-e2e]")
{
    notify_server s;
    const auto hal = s.login("hal", "admin");
    const auto ivy = s.login("ivy");
    auto h1 = s.stream(hal);
    auto h2 = s.stream(s.login("hal", "admin"));
    auto i1 = s.stream(ivy);
    REQUIRE(test::eventually([&] { return s.metrics().at("open_streams") == 3; }, 5s, 5ms));
    auto r = request(s.port(), "DELETE", "/api/events", {{"Cookie", hal}});
    REQUIRE(r.status == 200);
    CHECK(json::parse(r.body).at("closed") == 2);
    CHECK(h1->read_to_eof(5s));
    CHECK(h2->read_to_eof(5s));
    CHECK(!i1->eof());
    send(s, "ivy", "still here", "", 1);
    REQUIRE(i1->read_events(1));
    CHECK(test::eventually([&] { return s.metrics().at("open_streams") == 1; }, 5s, 5ms));
}

TEST_CASE("notify_server e2e: the ticker is public, a tick a second, and a stalled client stalls no one", "[notify-e2e]")
{
    notify_server s;
    // A client that never reads, with a tiny receive buffer.
    sse_client stalled(s.port(), "/api/ticker", {}, 2048);
    sse_client t(s.port(), "/api/ticker");
    REQUIRE(t.read_head() == 200);
    REQUIRE(t.read_events(4, 6s));
    for (std::size_t i = 0; i < t.events.size(); ++i) {
        INFO("tick " << i << ": " << t.events[i].data);
        CHECK(t.events[i].type == "tick");
        const auto d = json::parse(t.events[i].data);
        CHECK(d.at("time").get<std::string>().size() == 20);
        if (i > 0) {
            CHECK(d.at("n").get<std::uint64_t>() == json::parse(t.events[i - 1].data).at("n").get<std::uint64_t>() + 1);
            const auto gap = t.events[i].at - t.events[i - 1].at;
            CHECK(gap > 700ms);
            CHECK(gap < 1300ms);
        }
    }
    // The stalled one was not closed: it reads the ticks now.
    CHECK(stalled.read_head() == 200);
    CHECK(stalled.read_events(1, 3s));
    CHECK(!stalled.eof());
    CHECK(s.metrics().at("slow_consumer_closes") == 0);
}

TEST_CASE("notify_server e2e: /metrics counts streams, events, bytes, replays and slow-consumer closes",
          "[notify-e2e]")
{
    notify_server s;
    auto m0 = s.metrics();
    for (const auto* k : {"open_streams", "events_sent", "bytes_sent", "slow_consumer_closes", "replays_served"})
        CHECK(m0.contains(k));
    CHECK(m0.at("open_streams") == 0);
    const auto kim = s.login("kim");
    auto a = s.stream(kim);
    auto b = s.stream(kim);
    REQUIRE(test::eventually([&] { return s.metrics().at("open_streams") == 2; }, 5s, 5ms));
    const auto before = s.metrics().at("events_sent");
    send(s, "kim", "x", "", 2);
    CHECK(s.metrics().at("events_sent") >= before + 2);
    REQUIRE(a->read_events(1));
    a->conn().close();
    REQUIRE(test::eventually([&] { return s.metrics().at("bytes_sent") > m0.at("bytes_sent"); }, 5s, 5ms));

    // A user stream that stops reading while megabytes are sent to it is closed (its queue is
    // bounded); it can resume from history.
    const auto lee = s.login("lee");
    auto slow = s.stream(lee, {}, 4096);
    const std::string big(512 * 1024, 'z');
    for (int i = 0; i < 24 && s.metrics().at("slow_consumer_closes") == 0; ++i)
        send(s, "lee", big);
    CHECK(test::eventually([&] { return s.metrics().at("slow_consumer_closes") == 1; }, 5s, 5ms));
    REQUIRE(b->read_events(1));
    CHECK(b->nothing_for(100ms));  // kim's other stream is unaffected
    send(s, "kim", "y", "", 1);
    REQUIRE(b->read_events(2));
    // A replay counts.
    const auto replays = s.metrics().at("replays_served");
    auto again = s.stream(kim, {{"Last-Event-ID", b->events[0].id}});
    REQUIRE(again->read_events(1));
    CHECK(again->events[0].data == "y");
    CHECK(s.metrics().at("replays_served") == replays + 1);
}

TEST_CASE("notify_server e2e: SIGTERM ends every stream and exits 0", "[notify-e2e]")
{
    notify_server s;
    auto a = s.stream(s.login("max"));
    sse_client t(s.port(), "/api/ticker");
    REQUIRE(t.read_head() == 200);
    s.proc.signal(SIGTERM);
    CHECK(a->read_to_eof(5s));
    CHECK(t.read_to_eof(5s));
    const auto code = s.proc.wait_exit(10s);
    REQUIRE(code.has_value());
    CHECK(*code == 0);
}

// Issue 16 item 5: the export worker wrote into the service's maps after they were destroyed
// (the pool was joined last). Under ASan this exits non-zero with a heap-use-after-free report.
TEST_CASE("notify_server e2e: shutdown during export exits 0 with nothing on stderr", "[notify-e2e]")
{
    notify_server s("1000");
    const auto ola = s.login("ola");
    auto r = request(s.port(), "POST", "/api/exports", {{"Cookie", ola}, {"Content-Type", "application/json"}}, "{}");
    REQUIRE(r.status == 202);
    s.proc.signal(SIGINT);
    const auto code = s.proc.wait_exit(20s);
    REQUIRE(code.has_value());
    CHECK(*code == 0);
    const auto err = s.stderr_text();
    INFO("stderr: " << err);
    CHECK(err.find("Sanitizer") == std::string::npos);
    CHECK(err.find("runtime error") == std::string::npos);
    CHECK(err.empty());
}
