// End-to-end tests of examples/coroutine_progress (issue 12): the real binary on 127.0.0.1,
// port 0, steps of no duration; its streams read by e2e::sse_client, its jobs watched through
// GET /status. The point is the backpressure: a client that does not read stops its job within
// a bounded number of steps, with nothing piling up in the server, and the job goes on when
// the client reads again.
#include "examples/support/http_client.hpp"
#include "examples/support/process.hpp"

#include "catch.hpp"
#include "support/loopback.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <thread>

using namespace e2e;
using namespace std::chrono_literals;
using json = nlohmann::json;

namespace {

struct progress_server {
    server_process proc{example_binary("coroutine_progress", "SSEPP_COROUTINE_PROGRESS"),
                        {"--port", "0", "--step-ms", "0"}};

    json status()
    {
        const auto r = request(proc.port(), "GET", "/status");
        REQUIRE(r.status == 200);
        return json::parse(r.body);
    }

    int ended(const std::string& reason)
    {
        const auto s = status();
        return s.at("ended").value(reason, 0);
    }
};

/// The first n of `events` are steps 1..n of `of`, in order.
void check_progress(const std::vector<event>& events, long n, long of)
{
    REQUIRE(events.size() >= static_cast<std::size_t>(n));
    for (long i = 0; i < n; ++i) {
        const auto& e = events[static_cast<std::size_t>(i)];
        INFO("event " << i << ": " << e.type << " " << e.data);
        REQUIRE(e.type == "progress");
        const auto d = json::parse(e.data);
        REQUIRE(d.at("step").get<long>() == i + 1);
        REQUIRE(d.at("of").get<long>() == of);
    }
}

} // namespace

TEST_CASE("coroutine_progress: a job streams every step in order, then done, and its stream ends completed")
{
    progress_server server;
    sse_client c(server.proc.port(), "/progress?steps=50");
    REQUIRE(c.read_head() == 200);
    CHECK(c.response.header("Content-Type").value_or("") == "text/event-stream");
    REQUIRE(c.read_to_eof(10s));
    CHECK(!c.parse_error);
    REQUIRE(c.events.size() == 51);
    check_progress(c.events, 50, 50);
    CHECK(c.events.back().type == "done");
    CHECK(json::parse(c.events.back().data).at("steps") == 50);
    // async_wait_closed reported it: the job left the running list, counted as completed.
    CHECK(test::eventually([&] { return server.ended("completed") == 1; }, 5s, 10ms));
    CHECK(server.status().at("running").empty());
}

TEST_CASE("coroutine_progress: a failing job sends its error event, and its stream ends completed_with_error")
{
    progress_server server;
    sse_client c(server.proc.port(), "/progress?steps=10&fail_at=4");
    REQUIRE(c.read_head() == 200);
    REQUIRE(c.read_to_eof(10s));
    REQUIRE(c.events.size() == 4);
    check_progress(c.events, 3, 10);
    CHECK(c.events[3].type == "error");
    CHECK(json::parse(c.events[3].data).at("step") == 4);
    CHECK(test::eventually([&] { return server.ended("completed_with_error") == 1; }, 5s, 10ms));
    CHECK(server.ended("completed") == 0);
}

TEST_CASE("coroutine_progress: a client that does not read holds its job back, and reading again it gets every step")
{
    progress_server server;
    constexpr long steps = 20000;
    // A small receive window: with the server's 16 KiB send buffer, a few hundred events fill
    // both. Without backpressure the job would run its 20000 steps at once (steps take no time).
    sse_client c(server.proc.port(), fmt::format("/progress?steps={}", steps), {}, 4096);
    REQUIRE(c.read_head() == 200);
    REQUIRE(c.read_events(1));

    // The client reads nothing now: the job must stop advancing. Stopped: the same step over
    // 300 ms of polling (a step takes microseconds here), within 10 s.
    json job;
    auto since = clock::now();
    const auto deadline = clock::now() + 10s;
    bool stalled = false;
    while (!stalled && clock::now() < deadline) {
        const auto running = server.status().at("running");
        REQUIRE(running.size() == 1);  // it did not finish: it is held back
        if (job.is_null() || running[0].at("step") != job.at("step")) {
            job = running[0];
            since = clock::now();
        }
        stalled = clock::now() - since >= 300ms;
        std::this_thread::sleep_for(20ms);
    }
    REQUIRE(stalled);
    const auto held_at = job.at("step").get<long>();
    INFO("held at step " << held_at);
    CHECK(held_at < steps / 4);  // what the socket buffers hold, not the job
    // Nothing piles up in the server either: one event (about 50 bytes) at most is queued.
    CHECK(job.at("queued_bytes").get<std::size_t>() <= 64);

    // Reading again, the client gets every step, in order, and the job completes.
    REQUIRE(c.read_to_eof(60s));
    CHECK(!c.parse_error);
    REQUIRE(c.events.size() == steps + 1);
    check_progress(c.events, steps, steps);
    CHECK(c.events.back().type == "done");
    CHECK(test::eventually([&] { return server.ended("completed") == 1; }, 5s, 10ms));
}

TEST_CASE("coroutine_progress: a client that leaves stops its job, and its stream ends client_gone")
{
    progress_server server;
    {
        sse_client c(server.proc.port(), "/progress?steps=1000000", {}, 4096);
        REQUIRE(c.read_head() == 200);
        REQUIRE(c.read_events(3));
        c.conn().reset();
    }
    CHECK(test::eventually([&] { return server.ended("client_gone") == 1; }, 10s, 10ms));
    CHECK(server.status().at("running").empty());
}
