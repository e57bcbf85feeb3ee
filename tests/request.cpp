// Test that the header is self-contained.
#include <ssepp/request.hpp>

#include <ssepp/emitter.hpp>

#include "catch.hpp"
#include "support/loopback.hpp"

#include <optional>
#include <string>

using namespace std::chrono_literals;
using tcp = asio::ip::tcp;
using std::nullopt;
using opt = std::optional<std::string>;

TEST_CASE("query_parameter finds and decodes one parameter", "[request]")
{
    CHECK(ssepp::query_parameter("/events", "a") == nullopt);
    CHECK(ssepp::query_parameter("/events?", "a") == nullopt);
    CHECK(ssepp::query_parameter("/events?a=1&b=2", "a") == opt("1"));
    CHECK(ssepp::query_parameter("/events?a=1&b=2", "b") == opt("2"));
    CHECK(ssepp::query_parameter("/events?a=1&b=2", "c") == nullopt);
    CHECK(ssepp::query_parameter("/events?ab=1&a=2", "a") == opt("2"));  // whole names only
    CHECK(ssepp::query_parameter("/events?a=1&a=2", "a") == opt("1"));   // the first wins
    CHECK(ssepp::query_parameter("/events?a", "a") == opt(""));
    CHECK(ssepp::query_parameter("/events?a=", "a") == opt(""));
    CHECK(ssepp::query_parameter("/events?a=x%20y+z", "a") == opt("x y z"));
    CHECK(ssepp::query_parameter("/events?a=%2F%2f%41", "a") == opt("//A"));
    CHECK(ssepp::query_parameter("/events?a=%zz%4", "a") == opt("%zz%4"));  // malformed: as is
    CHECK(ssepp::query_parameter("/events?a=1#a=2", "a") == opt("1"));
    CHECK(ssepp::query_parameter("/events?b=1#a=2", "a") == nullopt);      // the fragment is no query
    CHECK(ssepp::query_parameter("/events?%61=enc", "a") == opt("enc"));   // names are decoded too
    CHECK(ssepp::query_parameter("/events?&&a=1&", "a") == opt("1"));
    CHECK(ssepp::query_parameter("/events?a=b=c", "a") == opt("b=c"));
}

TEST_CASE("last_event_id(header, target): header first, then lastEventId or last_event_id", "[request]")
{
    CHECK(ssepp::last_event_id("", "/events") == nullopt);
    CHECK(ssepp::last_event_id("42", "/events") == opt("42"));
    CHECK(ssepp::last_event_id(" \t42 \t", "/events") == opt("42"));        // OWS trimmed
    CHECK(ssepp::last_event_id("a b", "/events") == opt("a b"));           // inner space kept
    CHECK(ssepp::last_event_id(" \t ", "/events?lastEventId=7") == opt("7"));  // blank = absent
    CHECK(ssepp::last_event_id("", "/events?lastEventId=7") == opt("7"));
    CHECK(ssepp::last_event_id("", "/events?last_event_id=8") == opt("8"));
    CHECK(ssepp::last_event_id("", "/events?x=1&lastEventId=a%3Ab%2Fc") == opt("a:b/c"));
    CHECK(ssepp::last_event_id("42", "/events?lastEventId=7") == opt("42"));  // the header wins
    CHECK(ssepp::last_event_id("", "/events?lastEventId=") == nullopt);     // empty = absent
    CHECK(ssepp::last_event_id("", "/events?lastEventId=&last_event_id=9") == opt("9"));
    CHECK(ssepp::last_event_id("", "/events?lasteventid=7") == nullopt);    // names are exact
}

TEST_CASE("last_event_id(raw head): the request line and the Last-Event-ID field", "[request]")
{
    CHECK(ssepp::last_event_id("GET /events HTTP/1.1\r\nHost: x\r\n\r\n") == nullopt);
    CHECK(ssepp::last_event_id("GET /events HTTP/1.1\r\nLast-Event-ID: 42\r\n\r\n") == opt("42"));
    CHECK(ssepp::last_event_id("GET /events HTTP/1.1\r\nlast-event-id:42\r\n\r\n") == opt("42"));
    CHECK(ssepp::last_event_id("GET /events HTTP/1.1\r\nLAST-EVENT-ID: \t42 \r\n\r\n") == opt("42"));
    CHECK(ssepp::last_event_id("GET /events HTTP/1.1\nLast-Event-Id: 42\n\n") == opt("42"));  // bare LF
    CHECK(ssepp::last_event_id("GET /events?lastEventId=7 HTTP/1.1\r\nHost: x\r\n\r\n") == opt("7"));
    CHECK(ssepp::last_event_id("GET /events?lastEventId=7 HTTP/1.1\r\nLast-Event-ID: 42\r\n\r\n") == opt("42"));
    CHECK(ssepp::last_event_id("GET /events?lastEventId=7 HTTP/1.1\r\nLast-Event-ID:\r\n\r\n") == opt("7"));
    CHECK(ssepp::last_event_id("GET http://h/e?last_event_id=a%20b HTTP/1.1\r\n\r\n") == opt("a b"));
    // Only that exact field name counts.
    CHECK(ssepp::last_event_id("GET /events HTTP/1.1\r\nX-Last-Event-ID: 1\r\n\r\n") == nullopt);
    CHECK(ssepp::last_event_id("GET /events HTTP/1.1\r\nLast-Event-ID-X: 1\r\n\r\n") == nullopt);
    // Nothing after the blank line is a header field.
    CHECK(ssepp::last_event_id("GET /events HTTP/1.1\r\nHost: x\r\n\r\nLast-Event-ID: 1\r\n") == nullopt);
    // A value holding ':' is kept whole.
    CHECK(ssepp::last_event_id("GET /e HTTP/1.1\r\nLast-Event-ID: topic:17\r\n\r\n") == opt("topic:17"));
    // A request line without a version, or a head without its blank line (cut short).
    CHECK(ssepp::last_event_id("GET /e?lastEventId=3") == opt("3"));
    CHECK(ssepp::last_event_id("GET /e HTTP/1.1\r\nLast-Event-ID: 5") == opt("5"));
    CHECK(ssepp::last_event_id("") == nullopt);
}

TEST_CASE("last_event_id reads what a real client sent over a socket", "[request]")
{
    test::server srv;
    test::collector<std::shared_ptr<ssepp::emitter>> ems;
    srv.serve([&](tcp::socket s, std::string head) {
        auto em = ssepp::make_emitter(ssepp::http_body(std::move(s)));
        em->send({.event = "resume", .data = ssepp::last_event_id(head).value_or("(none)")});
        em->start();
        em->complete();
        ems.push(em);
    });
    const auto resumed = [&](std::string path, std::string headers) {
        test::client c(srv.port(), std::move(path), std::move(headers));
        REQUIRE(c.read_to_eof());
        REQUIRE(c.events.size() == 1);
        return c.events[0].data;
    };
    CHECK(resumed("/events", "") == "(none)");
    CHECK(resumed("/events", "Last-Event-ID: 41\r\n") == "41");
    CHECK(resumed("/events", "last-event-id:  x-9  \r\n") == "x-9");
    CHECK(resumed("/events?lastEventId=a%2Fb", "") == "a/b");
    CHECK(resumed("/events?lastEventId=7", "Last-Event-ID: 8\r\n") == "8");
}
