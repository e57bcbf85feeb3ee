// Test that the header is self-contained.
#include <ssepp/emitter.hpp>

#include "catch.hpp"
#include "support/loopback.hpp"

#include <atomic>

using namespace std::chrono_literals;

TEST_CASE("emitter writes head, retry hint and events to a real socket", "[emitter]")
{
    std::shared_ptr<ssepp::emitter> em;
    std::atomic<int> closes{0};
    test::server srv([&](asio::ip::tcp::socket s, std::string) {
        em = ssepp::make_emitter(std::move(s));
        em->on_close([&](ssepp::close_reason r, std::error_code) {
            CHECK(r == ssepp::close_reason::completed);
            ++closes;
        });
        em->send({.event = "a", .data = "1"});
        em->start();
        em->send({.id = "7", .data = "two\nlines"});
        em->complete();
    });
    test::client c(srv.port());
    REQUIRE(c.read_to_eof());
    CHECK(c.head == "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                    "X-Accel-Buffering: no\r\n\r\n");
    CHECK(c.body == "retry: 5000\n\nevent: a\ndata: 1\n\nid: 7\ndata: two\ndata: lines\n\n");
    REQUIRE(c.events.size() == 2);
    CHECK(c.events[1] == test::received{"message", "two\nlines", "7"});
    CHECK(test::eventually([&] { return closes == 1; }));
}
