// The emitter over test::stream, an in-memory transport that fails, stalls and splits writes
// on the test's command (issue 12): each path a write can take, deterministically, on the
// test's own thread. First, the stream itself.
#include <ssepp/emitter.hpp>

#include "catch.hpp"
#include "support/test_stream.hpp"

#include <asio/io_context.hpp>
#include <asio/use_future.hpp>
#include <asio/write.hpp>

#include <future>
#include <memory>
#include <string>
#include <vector>

using namespace std::chrono_literals;

namespace {

/// One completion of an operation on the stream.
struct outcome {
    std::error_code ec;
    std::size_t n = 0;
    int calls = 0;
    auto handler()
    {
        return [this](std::error_code e, std::size_t k) {
            ec = e;
            n = k;
            ++calls;
        };
    }
};

} // namespace

TEST_CASE("test::stream takes asio::async_write's bytes in order, a capped part at a time, "
          "and posts every completion",
          "[stream]")
{
    asio::io_context io;
    test::stream s(io);
    auto peer = s.peer();
    peer.write_cap(3);
    const std::string text = "hello, world";
    outcome done;
    asio::async_write(s, asio::buffer(text), done.handler());
    CHECK(done.calls == 0);  // not inline
    REQUIRE(test::run_until(io, [&] { return done.calls == 1; }));
    CHECK_FALSE(done.ec);
    CHECK(done.n == text.size());
    CHECK(peer.str() == text);
    CHECK(peer.writes() == 4);  // 3 + 3 + 3 + 3
    CHECK(peer.bytes() == text.size());
    CHECK(peer.max_writes_in_flight() == 1);
    CHECK(peer.writes_in_flight() == 0);
}

TEST_CASE("test::stream fails every write after the first n with the error chosen", "[stream]")
{
    asio::io_context io;
    test::stream s(io);
    auto peer = s.peer();
    peer.fail_after(2, asio::error::connection_reset);
    std::vector<std::future<std::size_t>> writes;
    for (const char* w : {"a", "bc", "def", "g"})
        writes.push_back(s.async_write_some(asio::buffer(std::string_view(w)), asio::use_future));
    io.run();  // nothing is held: it runs out of work
    CHECK(writes[0].get() == 1);
    CHECK(writes[1].get() == 2);
    for (std::size_t i : {2, 3}) {
        try {
            writes[i].get();
            FAIL("write " << i << " succeeded");
        } catch (const std::system_error& e) {
            CHECK(e.code() == asio::error::connection_reset);
        }
    }
    CHECK(peer.str() == "abc");
    CHECK(peer.writes() == 4);
}

TEST_CASE("test::stream holds a stalled write until release(), and close() aborts it", "[stream]")
{
    asio::io_context io;
    test::stream s(io);
    auto peer = s.peer();
    peer.stall();
    outcome first;
    s.async_write_some(asio::buffer(std::string_view("held")), first.handler());
    test::poll(io);
    CHECK(first.calls == 0);
    CHECK(peer.write_held());
    CHECK(peer.writes_in_flight() == 1);
    CHECK(peer.str().empty());
    peer.release();
    CHECK(first.calls == 0);  // posted, not inline
    test::poll(io);
    CHECK(first.calls == 1);
    CHECK(first.n == 4);
    CHECK(peer.str() == "held");

    peer.stall();
    outcome second, read;
    char buf[8];
    s.async_write_some(asio::buffer(std::string_view("lost")), second.handler());
    s.async_read_some(asio::buffer(buf), read.handler());
    test::poll(io);
    CHECK(peer.read_pending());
    std::error_code ec;
    s.close(ec);
    CHECK(second.calls == 0);
    test::poll(io);
    CHECK(second.calls == 1);
    CHECK(second.ec == asio::error::operation_aborted);
    CHECK(second.n == 0);
    CHECK(read.ec == asio::error::operation_aborted);
    CHECK(peer.str() == "held");  // the aborted write took nothing
    CHECK(peer.closes() == 1);
    outcome late;
    s.async_write_some(asio::buffer(std::string_view("late")), late.handler());
    test::poll(io);
    CHECK(late.ec == asio::error::bad_descriptor);
}

TEST_CASE("test::stream's peer leaving ends the pending read with eof and fails the next write", "[stream]")
{
    asio::io_context io;
    test::stream s(io);
    auto peer = s.peer();
    outcome read, write;
    char buf[8];
    s.async_read_some(asio::buffer(buf), read.handler());
    test::poll(io);
    CHECK(read.calls == 0);
    peer.leave();
    test::poll(io);
    CHECK(read.calls == 1);
    CHECK(read.ec == asio::error::eof);
    s.async_write_some(asio::buffer(std::string_view("x")), write.handler());
    test::poll(io);
    CHECK(write.ec == asio::error::connection_reset);
    CHECK(peer.str().empty());
}

TEST_CASE("test::stream's held operations keep run() busy, and the context's end frees them", "[stream]")
{
    auto owned = std::make_shared<int>(0);
    {
        asio::io_context io;
        // The handlers own the stream, as an emitter's do: a cycle that only the context's
        // shutdown breaks.
        auto s = std::make_shared<test::stream>(io);
        s->peer().stall();
        char buf[8];
        s->async_read_some(asio::buffer(buf), [s, owned](std::error_code, std::size_t) {});
        s->async_write_some(asio::buffer(std::string_view("x")), [s, owned](std::error_code, std::size_t) {});
        io.run_for(10ms);
        CHECK_FALSE(io.stopped());  // the held operations are outstanding work
        CHECK(owned.use_count() == 3);
    }
    CHECK(owned.use_count() == 1);
}
