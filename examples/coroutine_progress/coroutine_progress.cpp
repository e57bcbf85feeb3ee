// coroutine_progress: a job per client whose progress streams with backpressure, written as
// C++20 coroutines. GET /progress?steps=N[&fail_at=K] runs a job of N steps for that client:
// each step's event is written to the socket before the next step starts, so a client that
// reads slowly slows its job down instead of growing a queue in the server. The job ends with
// a `done` event and complete(), or, failing at step K, an `error` event and
// complete_with_error(). GET /status: the running jobs, and how the finished ones ended.
//   coroutine_progress --port 8082 &   curl -N 'http://127.0.0.1:8082/progress?steps=20'
#include "common/cli.hpp"
#include "common/request_parser.hpp"

#include <ssepp/ssepp.hpp>

#include <asio.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <array>
#include <list>
#include <map>
#include <memory>
#include <string>

using asio::awaitable;
using asio::use_awaitable;
using asio::ip::tcp;
using common::http::response;

namespace {

struct job {
    long step = 0;  // steps done: events written to the socket
    long steps = 0;
    std::shared_ptr<ssepp::emitter> stream{};
};

// One thread runs every coroutine: this state needs no lock.
struct server_state {
    std::chrono::milliseconds step_time{100};  // what each step's "work" takes
    std::list<job> running{};
    std::map<std::string, int> ended{};  // close reasons of the finished jobs' streams
};

constexpr std::array<const char*, 7> names{"completed", "completed_with_error", "aborted", "client_gone",
                                          "timeout",   "overflow",             "error"};
static_assert(names.size() == std::size_t(ssepp::close_reason::error) + 1);

awaitable<void> answer(tcp::socket& socket, const response& r)
{
    const auto text = fmt::format("HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n"
                                  "Connection: close\r\n\r\n{}",
                                  r.status, common::http::reason_phrase(r.status), r.content_type, r.body.size(), r.body);
    co_await asio::async_write(socket, asio::buffer(text), use_awaitable);
}

// The job itself: a timer stands in for each step's work.
awaitable<void> run_job(job& j, long fail_at, const server_state& state)
{
    asio::steady_timer work(co_await asio::this_coro::executor);
    for (long step = 1; step <= j.steps; ++step) {
        work.expires_after(state.step_time);
        co_await work.async_wait(use_awaitable);
        std::error_code ec;  // errc::closed once the client left: the job stops with it
        if (step == fail_at) {
            j.stream->send({.event = "error", .data = fmt::format(R"({{"step":{},"reason":"it failed"}})", step)}, ec);
            // Flushes the error event, then closes: the close reason says it failed.
            j.stream->complete_with_error(std::make_error_code(std::errc::io_error));
            co_return;
        }
        j.stream->send({.event = "progress", .data = fmt::format(R"({{"step":{},"of":{}}})", step, j.steps)}, ec);
        // The backpressure: the next step waits until this event is written.
        if (!ec)
            co_await j.stream->async_flush(asio::redirect_error(use_awaitable, ec));
        if (ec)
            co_return;
        j.step = step;
    }
    std::error_code ignored;  // the client left after the last step: complete() closes anyway
    j.stream->complete({.event = "done", .data = fmt::format(R"({{"steps":{}}})", j.steps)}, ignored);
}

awaitable<void> stream_job(tcp::socket socket, const common::http::request& req, server_state& state)
{
    const auto number = [&](std::string_view name, long fallback) {
        const auto v = req.query(name);
        return v ? std::strtol(v->c_str(), nullptr, 10) : fallback;
    };
    const long steps = number("steps", 20);
    const auto bad_request = response::error(400, "steps must be 1 to 1000000");
    if (steps < 1 || steps > 1'000'000) {
        co_await answer(socket, bad_request);
        co_return;
    }
    // A small send buffer (the kernel's autotuning would grow it to megabytes): a client that
    // stops reading holds its job back within a few KiB.
    std::error_code ignored;
    socket.set_option(asio::socket_base::send_buffer_size(16 * 1024), ignored);
    auto& j = state.running.emplace_back(
        job{.steps = steps, .stream = ssepp::make_emitter(ssepp::http_body(std::move(socket)))});
    j.stream->start();
    co_await run_job(j, number("fail_at", 0), state);
    // The stream ends once the last event is written (or the client left, or stalled for
    // emitter_options::write_timeout).
    const auto [reason, ec] = co_await j.stream->async_wait_closed(use_awaitable);
    ++state.ended[names[static_cast<std::size_t>(reason)]];
    fmt::print("a job of {} steps ended at step {}: {} {}\n", j.steps, j.step, names[static_cast<std::size_t>(reason)],
               ec ? ec.message() : "");
    state.running.remove_if([&](const job& x) { return &x == &j; });
}

awaitable<void> serve(tcp::socket socket, server_state& state)
{
    // Replies are made before a co_await, not in its expression: GCC 12 cannot keep a string
    // literal's array among an await expression's temporaries ("array used as initializer").
    const auto no_body = response::error(417, "no request body here");
    const auto not_found = response::error(404, "GET /progress?steps=N[&fail_at=K], GET /status");
    common::http::request_parser parser;
    std::array<char, 4096> buf;
    for (;;) {  // the request: one per connection is all this server answers
        const auto n = co_await socket.async_read_some(asio::buffer(buf), use_awaitable);
        const auto what = parser.feed({buf.data(), n}).what;
        if (what == common::http::request_parser::event::request)
            break;
        if (what == common::http::request_parser::event::error) {
            co_await answer(socket, parser.rejection());
            co_return;
        }
        if (what == common::http::request_parser::event::expect_continue) {
            co_await answer(socket, no_body);
            co_return;
        }
    }
    const auto req = parser.take_request();
    if (req.method == "GET" && req.path == "/progress") {
        co_await stream_job(std::move(socket), req, state);
    } else if (req.method == "GET" && req.path == "/status") {
        nlohmann::json jobs = nlohmann::json::array();
        for (const auto& j : state.running)
            jobs.push_back({{"step", j.step}, {"steps", j.steps}, {"queued_bytes", j.stream->queued_bytes()}});
        const auto status = response::json(200, {{"running", jobs}, {"ended", state.ended}});
        co_await answer(socket, status);
    } else {
        co_await answer(socket, not_found);
    }
}

awaitable<void> listen(tcp::acceptor& acceptor, server_state& state)
{
    for (;;) {
        auto socket = co_await acceptor.async_accept(use_awaitable);
        // Each connection is a coroutine of its own; a client that leaves mid-request ends
        // it with an exception, which `detached` drops.
        asio::co_spawn(acceptor.get_executor(), serve(std::move(socket), state), asio::detached);
    }
}

} // namespace

int main(int argc, char** argv)
{
    std::uint16_t port = 8082;
    long step_ms = 100;
    common::cli("coroutine_progress")
        .flag("--port", port, "port on 127.0.0.1; 0 picks a free one and prints it")
        .flag("--step-ms", step_ms, "how long each step of a job works")
        .parse(argc, argv);
    asio::io_context io;
    server_state state{.step_time = std::chrono::milliseconds(step_ms)};
    tcp::acceptor acceptor(io, {asio::ip::make_address("127.0.0.1"), port});
    fmt::print("coroutine_progress listening on http://127.0.0.1:{}/\n", acceptor.local_endpoint().port());
    std::fflush(stdout);
    asio::co_spawn(io, listen(acceptor, state), asio::detached);
    io.run();
}
