// End-to-end tests of upload_server as nodes of a cluster (--redis; examples/upload_progress/
// README.md, "Running several nodes"): one real redis-server and upload_server processes on free
// ports of 127.0.0.1. An import runs on node A; its events are followed on B, on A, on B again
// with Last-Event-ID; ids come from Redis, so "in order" is checked on the ids themselves.
#include "examples/support/upload_support.hpp"

#include "catch.hpp"
#include "support/loopback.hpp"

#if defined(SSEPP_EXAMPLES_REDIS) && defined(SSEPP_REDIS_SERVER)
#include "support/redis_server.hpp"

#include <algorithm>
#include <atomic>
#include <charconv>
#include <csignal>
#include <mutex>
#include <set>
#include <thread>

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

using namespace e2e;
using namespace e2e::upload;
using namespace std::chrono_literals;

namespace {

/// An id of the cluster ("<ms>-<n>", a Redis stream entry id) as a pair that orders like it.
std::pair<std::uint64_t, std::uint64_t> cluster_id(const std::string& id)
{
    const auto dash = id.find('-');
    REQUIRE(dash != std::string::npos);
    std::uint64_t ms = 0, n = 0;
    REQUIRE(std::from_chars(id.data(), id.data() + dash, ms).ptr == id.data() + dash);
    REQUIRE(std::from_chars(id.data() + dash + 1, id.data() + id.size(), n).ptr == id.data() + id.size());
    return {ms, n};
}

std::size_t count(const std::vector<event>& events, std::initializer_list<std::string_view> types)
{
    return static_cast<std::size_t>(std::count_if(events.begin(), events.end(), [&](const event& e) {
        return std::find(types.begin(), types.end(), e.type) != types.end();
    }));
}

std::size_t terminals(const std::vector<event>& events) { return count(events, {"complete", "error"}); }

/// A job's whole stream as one client saw it across its connections: ids strictly increasing
/// (nothing twice, nothing out of order), progress first and never going back, the row errors
/// of `g` in order (all of them, up to 1,000, when it completed), one terminal event, last.
/// Returns it.
const event& check_stream(const std::vector<event>& events, const generated_csv& g)
{
    REQUIRE(events.size() >= 2);
    CHECK(events.front().type == "progress");
    std::uint64_t rows_done = 0;
    std::size_t row_errors = 0;
    for (std::size_t i = 0; i < events.size(); ++i) {
        const auto& e = events[i];
        INFO("event " << i << ": " << e.type << " id " << e.id << " " << e.data);
        if (i > 0)
            REQUIRE(cluster_id(events[i - 1].id) < cluster_id(e.id));
        const auto d = json::parse(e.data);
        if (e.type == "progress") {
            REQUIRE(d.at("rows_total").get<std::uint64_t>() == g.rows);
            REQUIRE(d.at("rows_done").get<std::uint64_t>() >= rows_done);
            rows_done = d.at("rows_done").get<std::uint64_t>();
        } else if (e.type == "row-error") {
            REQUIRE(row_errors < g.errors.size());
            const auto& x = g.errors[row_errors++];
            CHECK(d.at("line").get<std::uint64_t>() == x.line);
            CHECK(d.at("sku").get<std::string>() == x.sku);
            CHECK(d.at("reason").get<std::string>() == x.reason);
        } else if (e.type == "complete" || e.type == "error") {
            REQUIRE(i == events.size() - 1);
        } else {
            FAIL("unexpected event type " << e.type);
        }
    }
    CHECK(terminals(events) == 1);
    if (events.back().type == "complete")  // else it stopped part way
        CHECK(row_errors == std::min<std::size_t>(g.errors.size(), 1000));
    return events.back();
}

/// The whole history of a job that ended, from a fresh connection to `s`.
std::vector<event> replay(server& s, const std::string& id)
{
    sse_client c(s.port(), "/api/upload/" + id + "/events");
    REQUIRE(c.read_head() == 200);
    REQUIRE(c.read_to_eof(30s));
    return c.events;
}

void check_same(const std::vector<event>& a, const std::vector<event>& b)
{
    REQUIRE(a.size() == b.size());
    for (std::size_t i = 0; i < a.size(); ++i) {
        INFO("event " << i);
        CHECK(a[i].id == b[i].id);
        CHECK(a[i].type == b[i].type);
        CHECK(a[i].data == b[i].data);
    }
}

std::vector<std::string> node_flags(const test::redis_server& redis, std::vector<std::string> more = {})
{
    std::vector<std::string> f{"--redis", redis.url()};
    f.insert(f.end(), more.begin(), more.end());
    return f;
}

/// Sends one command to Redis on a connection of its own; its reply line.
std::string redis_command(const test::redis_server& redis, const std::string& command)
{
    connection c(redis.port());
    c.send_all(command + "\r\n");
    std::string got;
    const auto deadline = clock::now() + 5s;
    while (got.find("\r\n") == std::string::npos && c.read_some(got, deadline)) {
    }
    return got;
}

/// A TCP proxy on 127.0.0.1 in front of Redis that can lose a reply: armed with a marker, it
/// forwards the next command whose bytes hold the marker, then swallows Redis's reply to it and
/// cuts that connection. The command ran; its sender only sees the link drop.
class reply_cutter {
public:
    explicit reply_cutter(std::uint16_t target) : target_(target)
    {
        listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in a = loopback(0);
        socklen_t len = sizeof a;
        if (listener_ < 0 || ::bind(listener_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0
            || ::listen(listener_, 16) != 0 || ::getsockname(listener_, reinterpret_cast<sockaddr*>(&a), &len) != 0)
            throw std::runtime_error("reply_cutter: cannot listen");
        port_ = ntohs(a.sin_port);
        thread_ = std::thread([this] { loop(); });
    }
    ~reply_cutter()
    {
        stop_ = true;
        thread_.join();
        for (auto& l : links_)
            ::close(l.client), ::close(l.server);
        ::close(listener_);
    }
    reply_cutter(const reply_cutter&) = delete;
    reply_cutter& operator=(const reply_cutter&) = delete;

    std::string url() const { return "redis://127.0.0.1:" + std::to_string(port_); }
    void arm(std::string marker)
    {
        std::lock_guard lock(mtx_);
        marker_ = std::move(marker);
    }
    bool fired() const { return fired_; }

private:
    struct link {
        int client, server;
        bool cut_at_reply = false;
    };

    static sockaddr_in loopback(std::uint16_t port)
    {
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons(port);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        return a;
    }

    static bool write_all(int fd, const char* p, std::size_t n)
    {
        while (n > 0) {
            const auto w = ::send(fd, p, n, MSG_NOSIGNAL);
            if (w <= 0)
                return false;
            p += w;
            n -= static_cast<std::size_t>(w);
        }
        return true;
    }

    // Polls every 20 ms at most, so that the destructor's stop is seen soon.
    void loop()
    {
        char buf[65536];
        while (!stop_) {
            std::vector<pollfd> fds{{listener_, POLLIN, 0}};
            for (const auto& l : links_)
                fds.push_back({l.client, POLLIN, 0}), fds.push_back({l.server, POLLIN, 0});
            if (::poll(fds.data(), fds.size(), 20) <= 0)
                continue;
            if (fds[0].revents & POLLIN) {
                const int c = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
                const int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
                const auto a = loopback(target_);
                if (c >= 0 && s >= 0 && ::connect(s, reinterpret_cast<const sockaddr*>(&a), sizeof a) == 0)
                    links_.push_back({c, s});
                else
                    ::close(c), ::close(s);
            }
            std::vector<std::size_t> gone;
            const std::size_t polled = (fds.size() - 1) / 2;  // a link accepted above waits for the next poll
            for (std::size_t i = 0; i < polled; ++i) {
                auto& l = links_[i];
                bool drop = false;
                if (fds[1 + 2 * i].revents & (POLLIN | POLLHUP | POLLERR)) {
                    const auto n = ::recv(l.client, buf, sizeof buf, 0);
                    if (n <= 0) {
                        drop = true;
                    } else {
                        {
                            std::lock_guard lock(mtx_);
                            if (!marker_.empty() && std::string_view(buf, static_cast<std::size_t>(n)).find(marker_)
                                                        != std::string_view::npos) {
                                l.cut_at_reply = true;
                                marker_.clear();
                            }
                        }
                        drop = !write_all(l.server, buf, static_cast<std::size_t>(n));
                    }
                }
                if (!drop && (fds[2 + 2 * i].revents & (POLLIN | POLLHUP | POLLERR))) {
                    const auto n = ::recv(l.server, buf, sizeof buf, 0);
                    if (n <= 0 || l.cut_at_reply) {
                        drop = true;
                        fired_ = fired_ || l.cut_at_reply;
                    } else {
                        drop = !write_all(l.client, buf, static_cast<std::size_t>(n));
                    }
                }
                if (drop)
                    gone.push_back(i);
            }
            for (auto it = gone.rbegin(); it != gone.rend(); ++it) {
                ::close(links_[*it].client);
                ::close(links_[*it].server);
                links_.erase(links_.begin() + static_cast<std::ptrdiff_t>(*it));
            }
        }
    }

    std::uint16_t target_;
    std::uint16_t port_ = 0;
    int listener_ = -1;
    std::vector<link> links_;  // the loop's thread only
    std::mutex mtx_;
    std::string marker_;
    std::atomic<bool> fired_{false};
    std::atomic<bool> stop_{false};
    std::thread thread_;
};

/// Follows a job on `nodes` in turn from `seen` on, as EventSource would, until its terminal
/// event (at most `attempts` connections).
void follow_to_end(std::vector<event>& seen, const std::string& path, std::initializer_list<server*> nodes,
                   int attempts = 10)
{
    for (int i = 0; terminals(seen) == 0 && i < attempts; ++i) {
        auto* s = *(nodes.begin() + i % static_cast<int>(nodes.size()));
        header_list h;
        if (!seen.empty())
            h.emplace_back("Last-Event-ID", seen.back().id);
        sse_client c(s->port(), path, h);
        REQUIRE(c.read_head() == 200);
        c.read_to_eof(60s);
        seen.insert(seen.end(), c.events.begin(), c.events.end());
    }
}

} // namespace

TEST_CASE("upload cluster e2e: an import on node A streams to a client on B that switches to A and back with "
          "Last-Event-ID: every event once, in order, and the terminal once",
          "[upload-e2e][cluster]")
{
    test::redis_server redis;
    // A's imports pause 3 ms every 64 rows: this one takes seconds, the switches milliseconds.
    server a(node_flags(redis, {"--import-pause-us", "3000"}));
    server b(node_flags(redis));
    const auto g = make_csv(30'000, 60);  // 500 bad rows
    const auto id = a.accepted(g.text);
    const std::string path = "/api/upload/" + id + "/events";

    std::vector<event> seen;  // what the client got, over all its connections
    std::vector<std::string> switched_at;
    // Follows the stream on `s` from where the client is, until `progress` more progress
    // events came; then drops the connection.
    const auto follow_for = [&](server& s, std::size_t progress) {
        header_list h;
        if (!seen.empty())
            h.emplace_back("Last-Event-ID", seen.back().id);
        sse_client c(s.port(), path, h);
        REQUIRE(c.read_head() == 200);
        REQUIRE(c.read_until([&] { return count(c.events, {"progress"}) >= progress; }, 30s));
        seen.insert(seen.end(), c.events.begin(), c.events.end());
        switched_at.push_back(seen.back().id);
        c.conn().reset();
    };
    follow_for(b, 3);
    // Mid-import: the job had not ended when the client left B...
    REQUIRE(terminals(seen) == 0);
    follow_for(a, 3);
    REQUIRE(terminals(seen) == 0);  // ...nor when it left A
    {
        sse_client c(b.port(), path, {{"Last-Event-ID", seen.back().id}});
        REQUIRE(c.read_head() == 200);
        REQUIRE(c.read_to_eof(60s));
        REQUIRE(!c.parse_error);
        REQUIRE(!c.events.empty());
        seen.insert(seen.end(), c.events.begin(), c.events.end());
    }
    INFO("switched after events " << switched_at[0] << " and " << switched_at[1] << "; " << seen.size() << " events");
    const auto& terminal = check_stream(seen, g);
    REQUIRE(terminal.type == "complete");
    const auto d = json::parse(terminal.data);
    CHECK(d.at("rows").get<std::uint64_t>() == g.rows);
    CHECK(d.at("errors").get<std::uint64_t>() == g.errors.size());
    CHECK(d.at("inserted").get<std::uint64_t>() == g.good.size());

    // Nothing was missed: the whole history, replayed by either node, is what the client got.
    check_same(replay(a, id), seen);
    check_same(replay(b, id), seen);
    // The status is shared; the rows are in the database of the node that ran the import.
    for (auto* s : {&a, &b}) {
        const auto st = s->status(id);
        CHECK(st.at("state") == "completed");
        CHECK(st.at("rows_done") == g.rows);
        CHECK(st.at("errors") == g.errors.size());
    }
    CHECK(json::parse(request(a.port(), "GET", "/api/products?limit=1").body).at("total") == g.good.size());
    // With the terminal event's id, on either node: 204, nothing more to follow.
    for (auto* s : {&a, &b})
        CHECK(request(s->port(), "GET", path, {{"Last-Event-ID", terminal.id}}).status == 204);
}

TEST_CASE("upload cluster e2e: the id of a 202 is known on the other node at once, and an unknown id is 404 on every "
          "node",
          "[upload-e2e][cluster]")
{
    test::redis_server redis;
    server a(node_flags(redis));
    server b(node_flags(redis));
    const auto g = make_csv(200, 20);
    // Uploads to each node in turn, each followed on the other right after its 202.
    for (int i = 0; i < 8; ++i) {
        auto& to = i % 2 ? b : a;
        auto& other = i % 2 ? a : b;
        const auto id = to.accepted(g.text);
        INFO("upload " << i << " to node " << (i % 2 ? "B" : "A"));
        sse_client c(other.port(), "/api/upload/" + id + "/events");
        REQUIRE(c.read_head() == 200);
        CHECK(other.status(id).at("transaction_id") == id);
        REQUIRE(c.read_to_eof(30s));
        CHECK(check_stream(c.events, g).type == "complete");
    }
    const std::string unknown(32, '0');
    for (auto* s : {&a, &b}) {
        CHECK(request(s->port(), "GET", "/api/upload/" + unknown + "/events").status == 404);
        CHECK(request(s->port(), "GET", "/api/upload/" + unknown + "/events", {{"Last-Event-ID", "1-0"}}).status
              == 404);
        CHECK(request(s->port(), "GET", "/api/upload/" + unknown).status == 404);
    }
}

TEST_CASE("upload cluster e2e: with Redis down an upload is refused 503 with the reason, at once, and with Redis back "
          "uploads are accepted again",
          "[upload-e2e][cluster]")
{
    test::redis_server redis;
    server a(node_flags(redis));
    const auto g = make_csv(100);
    a.accepted(g.text);
    redis.stop();
    // Both the head check (the link is seen down) and the record's write (not sent: not
    // connected) answer without waiting for Redis; bounded either way.
    const auto t0 = clock::now();
    const auto r = a.upload(g.text);
    CHECK(clock::now() - t0 < 5s);
    CHECK(r.status == 503);
    CHECK(r.header("Retry-After").value_or("") == "5");
    CHECK(json::parse(r.body).at("error").get<std::string>().find("Redis") != std::string::npos);
    // Nothing was queued by the refusal: the status of a job is 503 too (it cannot be looked
    // up), never a hang.
    CHECK(request(a.port(), "GET", "/api/upload/" + std::string(32, '0')).status == 503);

    redis.start();
    std::string id;
    REQUIRE(test::eventually(
        [&] {
            auto again = a.upload(g.text);
            if (again.status == 202)
                id = json::parse(again.body).at("transaction_id").get<std::string>();
            return again.status == 202;
        },
        20s, 100ms));
    auto c = std::make_unique<sse_client>(a.port(), "/api/upload/" + id + "/events");
    REQUIRE(c->read_head() == 200);
    REQUIRE(c->read_to_eof(30s));
    CHECK(check_stream(c->events, g).type == "complete");
}

TEST_CASE("upload cluster e2e: Redis links dropped mid-import: the events are neither lost nor stored twice",
          "[upload-e2e][cluster]")
{
    test::redis_server redis;
    server a(node_flags(redis, {"--import-pause-us", "3000"}));
    server b(node_flags(redis));
    const auto g = make_csv(30'000, 60);
    const auto id = a.accepted(g.text);
    const std::string path = "/api/upload/" + id + "/events";

    sse_client first(b.port(), path);
    REQUIRE(first.read_head() == 200);
    REQUIRE(first.read_until([&] { return count(first.events, {"progress"}) >= 2; }, 30s));
    // Every client of Redis but this one loses its link (the nodes' commands, their buses,
    // the records), three times, while the import publishes: sends in flight meet
    // connection_lost, later ones not_connected, until the links are back.
    for (int i = 0; i < 3; ++i) {
        CHECK(redis_command(redis, "CLIENT KILL TYPE normal").starts_with(":"));
        CHECK(redis_command(redis, "CLIENT KILL TYPE pubsub").starts_with(":"));
        first.read_until([] { return false; }, 300ms);
    }
    first.read_to_eof(60s);
    std::vector<event> seen = first.events;
    // Had B ended the stream early (a node that cannot read back what its bus missed
    // completes its streams), the client resumes, as EventSource does, on either node.
    follow_to_end(seen, path, {&a, &b});
    const auto& terminal = check_stream(seen, g);
    CHECK(terminal.type == "complete");
    check_same(replay(a, id), seen);
    check_same(replay(b, id), seen);
}

// Issue 14: a node that stops (a rolling restart) tells its streams to come back spread over
// --shutdown-retry-min-ms..max-ms; the import runs on in A, and a client comes back through
// another node with Last-Event-ID and misses nothing.
TEST_CASE("upload cluster e2e: SIGTERM on the node holding the streams sends each a jittered retry, ends them "
          "cleanly and exits, and the clients resume on another node",
          "[upload-e2e][cluster]")
{
    test::redis_server redis;
    server a(node_flags(redis, {"--import-pause-us", "3000"}));
    server b(node_flags(redis, {"--shutdown-retry-min-ms", "1000", "--shutdown-retry-max-ms", "3000"}));
    const auto g = make_csv(30'000, 60);
    const auto id = a.accepted(g.text);
    const std::string path = "/api/upload/" + id + "/events";
    std::vector<std::unique_ptr<sse_client>> streams;
    for (int i = 0; i < 5; ++i) {
        streams.push_back(std::make_unique<sse_client>(b.port(), path));
        REQUIRE(streams.back()->read_head() == 200);
    }
    for (auto& c : streams)
        REQUIRE(c->read_until([&] { return count(c->events, {"progress"}) >= 2; }, 30s));
    const auto t0 = clock::now();
    b.proc.signal(SIGTERM);
    std::set<std::int64_t> values;
    for (auto& c : streams) {
        REQUIRE(c->read_to_eof(10s));
        CHECK(!c->conn().reset_by_peer());
        CHECK(!c->parse_error);
        REQUIRE(terminals(c->events) == 0);  // the import goes on in A
        REQUIRE(c->retries.size() == 2);     // the emitter's hint (5 s), then the shutdown's
        const auto r = c->retries.back().count();
        CHECK(r >= 1000);
        CHECK(r <= 3000);
        values.insert(r);
    }
    CHECK(values.size() > 1);  // five draws from 2,001 values, all equal: a broken draw
    const auto code = b.proc.wait_exit(10s);
    REQUIRE(code.has_value());
    CHECK(*code == 0);
    CHECK(clock::now() - t0 < 10s);
    // One client comes back on A where it was: the rest of the job, nothing twice.
    auto& first = *streams.front();
    auto seen = first.events;
    sse_client again(a.port(), path, {{"Last-Event-ID", seen.back().id}});
    REQUIRE(again.read_head() == 200);
    REQUIRE(again.read_to_eof(60s));
    seen.insert(seen.end(), again.events.begin(), again.events.end());
    CHECK(check_stream(seen, g).type == "complete");
}

TEST_CASE("upload cluster e2e: the node running an import dies: the client on another node gets one terminal error "
          "saying the import was lost",
          "[upload-e2e][cluster]")
{
    test::redis_server redis;
    // A short lease: the loss is declared about 1.5 s after A's last renewal.
    server a(node_flags(redis, {"--import-pause-us", "3000", "--redis-lease-ms", "1500"}));
    server b(node_flags(redis, {"--redis-lease-ms", "1500"}));
    const auto g = make_csv(30'000, 60);
    const auto id = a.accepted(g.text);
    const std::string path = "/api/upload/" + id + "/events";
    sse_client c(b.port(), path);
    REQUIRE(c.read_head() == 200);
    REQUIRE(c.read_until([&] { return count(c.events, {"progress"}) >= 2; }, 30s));
    REQUIRE(terminals(c.events) == 0);

    a.proc.signal(SIGKILL);
    REQUIRE(a.proc.wait_exit(5s).has_value());
    const auto t0 = clock::now();
    REQUIRE(c.read_to_eof(20s));
    INFO("stream ended " << std::chrono::duration_cast<std::chrono::milliseconds>(clock::now() - t0).count()
                         << " ms after the kill");
    const auto& terminal = check_stream(c.events, g);
    REQUIRE(terminal.type == "error");
    const auto reason = json::parse(terminal.data).at("reason").get<std::string>();
    CHECK(reason.starts_with("lost: the node running this import"));
    CHECK(b.status(id).at("state") == "failed");
    // A client that comes later gets the same history, the loss once, and the end.
    check_same(replay(b, id), c.events);
}

#endif

#if defined(SSEPP_EXAMPLES_REDIS) && defined(SSEPP_REDIS_SERVER)
TEST_CASE("upload cluster e2e: a publish that Redis ran but whose reply was lost is found in the stream, not stored "
          "twice",
          "[upload-e2e][cluster]")
{
    test::redis_server redis;
    reply_cutter cutter(redis.port());
    server a({"--redis", cutter.url(), "--import-pause-us", "3000"});  // A's links go through the cutter
    server b(node_flags(redis));
    const auto g = make_csv(30'000, 60);  // a row error every 64 rows or so: pass 1 publishes them steadily
    const auto id = a.accepted(g.text);
    const std::string path = "/api/upload/" + id + "/events";
    sse_client c(b.port(), path);
    REQUIRE(c.read_head() == 200);
    REQUIRE(c.read_until([&] { return count(c.events, {"row-error"}) >= 1; }, 30s));
    // The next row error's EVAL runs in Redis (appended, and published to B), and A's link
    // drops before its reply: sent again blindly, it would be in the stream twice.
    cutter.arm("row-error");
    REQUIRE(test::eventually([&] { return cutter.fired(); }, 10s, 5ms));
    c.read_to_eof(60s);
    std::vector<event> seen = c.events;
    follow_to_end(seen, path, {&b, &a});
    const auto& terminal = check_stream(seen, g);  // every row error once, in order
    CHECK(terminal.type == "complete");
    check_same(replay(a, id), seen);
}
#endif
