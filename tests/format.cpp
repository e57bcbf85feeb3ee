// Test that the header is self-contained.
#include <ssepp/format.hpp>

#include "catch.hpp"

#include <fmt/format.h>

#include <string>
#include <vector>

using namespace std::string_literals;
using ssepp::event;

TEST_CASE("single-line data", "[format]")
{
    CHECK(ssepp::format(event{.data = "hello"}) == "data: hello\n\n");
}

TEST_CASE("every field, in a fixed order", "[format]")
{
    const event e{.id = "7", .event = "progress", .data = "x",
                  .retry = std::chrono::milliseconds(5000), .comment = "note"};
    CHECK(ssepp::format(e) == ": note\nid: 7\nevent: progress\nretry: 5000\ndata: x\n\n");
}

TEST_CASE("data is split on LF, CR and CRLF", "[format]")
{
    CHECK(ssepp::format(event{.data = "a\nb"}) == "data: a\ndata: b\n\n");
    CHECK(ssepp::format(event{.data = "a\rb"}) == "data: a\ndata: b\n\n");
    CHECK(ssepp::format(event{.data = "a\r\nb"}) == "data: a\ndata: b\n\n");
    // CRLF is one break; LF CR is two.
    CHECK(ssepp::format(event{.data = "a\n\rb"}) == "data: a\ndata: \ndata: b\n\n");
    // Blank lines and trailing breaks are kept as empty data lines: nothing ends the frame.
    CHECK(ssepp::format(event{.data = "a\n\nb\n"}) == "data: a\ndata: \ndata: b\ndata: \n\n");
    CHECK(ssepp::format(event{.data = "\n"}) == "data: \ndata: \n\n");
}

TEST_CASE("no payload can inject a field or end the frame", "[format]")
{
    const auto wire = ssepp::format(event{.data = "x\n\nevent: evil\r\nid: 666\rretry: 1"});
    CHECK(wire == "data: x\ndata: \ndata: event: evil\ndata: id: 666\ndata: retry: 1\n\n");
    // The only blank line is the terminator.
    CHECK(wire.find("\n\n") == wire.size() - 2);
}

TEST_CASE("empty data is an event, absent data is not", "[format]")
{
    CHECK(ssepp::format(event{.data = ""}) == "data: \n\n");
    CHECK(ssepp::format(event{.id = "1"}) == "id: 1\n\n");
}

TEST_CASE("data starting with a space keeps it", "[format]")
{
    CHECK(ssepp::format(event{.data = " lead"}) == "data:  lead\n\n");
    CHECK(ssepp::format(event{.data = "a\n b"}) == "data: a\ndata:  b\n\n");
}

TEST_CASE("comments: one ':' line per line, alone a valid frame", "[format]")
{
    CHECK(ssepp::format(event{.comment = ""}) == ":\n\n");
    CHECK(ssepp::format(event{.comment = "keep-alive"}) == ": keep-alive\n\n");
    CHECK(ssepp::format(event{.comment = "a\nb\r\nc\r"}) == ": a\n: b\n: c\n:\n\n");
}

TEST_CASE("an empty id resets the last event id, no id writes nothing", "[format]")
{
    CHECK(ssepp::format(event{.id = "", .data = "x"}) == "id\ndata: x\n\n");
    CHECK(ssepp::format(event{.data = "x"}).find("id") == std::string::npos);
}

TEST_CASE("retry is decimal milliseconds", "[format]")
{
    CHECK(ssepp::format(event{.retry = std::chrono::milliseconds(0)}) == "retry: 0\n\n");
    CHECK(ssepp::format(event{.retry = std::chrono::seconds(3)}) == "retry: 3000\n\n");
    std::error_code ec;
    CHECK(ssepp::format(event{.retry = std::chrono::milliseconds(-1)}, ec).empty());
    CHECK(ec == ssepp::errc::invalid_retry);
}

TEST_CASE("invalid id and event name are rejected, nothing written", "[format]")
{
    struct bad_case {
        event e;
        ssepp::errc expected;
    };
    const std::vector<bad_case> cases{
        {event{.id = "a\nb", .data = "x"}, ssepp::errc::invalid_id},
        {event{.id = "a\rb", .data = "x"}, ssepp::errc::invalid_id},
        {event{.id = "a\0b"s, .data = "x"}, ssepp::errc::invalid_id},
        {event{.event = "a\nb", .data = "x"}, ssepp::errc::invalid_event_name},
        {event{.event = "a\rb", .data = "x"}, ssepp::errc::invalid_event_name},
        {event{}, ssepp::errc::empty_event},
    };
    for (const auto& c : cases) {
        std::string out = "before";
        const auto ec = ssepp::format_to(out, c.e);
        CHECK(ec == c.expected);
        CHECK(ec.category() == ssepp::error_category());
        CHECK(out == "before");
        CHECK(ssepp::validate(c.e) == c.expected);
        CHECK_THROWS_AS((void)ssepp::format(c.e), std::system_error);
    }
    // NUL is legal in an event name and in data (the protocol carries it).
    CHECK(!ssepp::validate(event{.event = "a\0b"s, .data = "\0"s}));
}

TEST_CASE("format_to appends to any growable byte buffer", "[format]")
{
    const event e{.event = "t", .data = "d"};
    const auto expected = "event: t\ndata: d\n\n"s;

    std::string s = "x";
    REQUIRE(!ssepp::format_to(s, e));
    CHECK(s == "x" + expected);

    std::vector<char> v;
    REQUIRE(!ssepp::format_to(v, e));
    CHECK(std::string(v.begin(), v.end()) == expected);

    fmt::memory_buffer b;
    REQUIRE(!ssepp::format_to(b, e));
    REQUIRE(!ssepp::format_to(b, e));
    CHECK(fmt::to_string(b) == expected + expected);
}

TEST_CASE("error codes carry the ssepp category and a message", "[format]")
{
    const std::error_code ec = ssepp::errc::invalid_id;
    CHECK(std::string(ec.category().name()) == "ssepp");
    CHECK(ec.message().find("id") != std::string::npos);
}
