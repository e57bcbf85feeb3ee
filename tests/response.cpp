// Test that the header is self-contained.
#include <ssepp/http_body.hpp>

#include <ssepp/emitter.hpp>

#include "catch.hpp"
#include "support/loopback.hpp"

#include <algorithm>
#include <cctype>
#include <string>

using namespace std::chrono_literals;
using tcp = asio::ip::tcp;

namespace {

bool has_connection_header(std::string head)
{
    std::transform(head.begin(), head.end(), head.begin(), [](unsigned char ch) { return std::tolower(ch); });
    return head.find("\r\nconnection:") != std::string::npos;
}

using test::quiet;

/// A server that makes one emitter per connection with `options`, over an http_body with
/// `response`; or, when `own_head` is not empty, writes that head itself and gives the
/// emitter the bare socket (a stack that writes its own head and frames nothing).
template <class Transport = ssepp::http_body<tcp::socket>>
class sse_server {
public:
    explicit sse_server(ssepp::emitter_options options, ssepp::response_options response = {}, std::string own_head = "")
    {
        srv_.serve([this, options, response, own_head](tcp::socket s, std::string) {
            std::shared_ptr<ssepp::basic_emitter<Transport>> em;
            if constexpr (std::is_same_v<Transport, tcp::socket>) {
                asio::write(s, asio::buffer(own_head));
                em = ssepp::make_emitter(std::move(s), options);
            } else {
                em = ssepp::make_emitter(Transport(std::move(s), response), options);
            }
            em->start();
            ems_.push(em);
        });
    }
    std::shared_ptr<ssepp::basic_emitter<Transport>> at(std::size_t i) { return ems_.at(i); }
    asio::ip::port_type port() const { return srv_.port(); }

private:
    test::server srv_;
    test::collector<std::shared_ptr<ssepp::basic_emitter<Transport>>> ems_;
};

/// Each chunk of a chunked body holds whole frames (every coalesced write is one chunk).
bool chunks_hold_whole_frames(const test::sse_reader& r)
{
    std::size_t at = 0;
    for (const auto size : r.chunk_sizes) {
        if (size == 0)
            continue;
        if (at + size > r.body.size())
            return false;
        const auto chunk = std::string_view(r.body).substr(at, size);
        if (!chunk.ends_with("\n\n"))
            return false;
        at += size;
    }
    return at == r.body.size();
}

} // namespace

TEST_CASE("response_head: exact bytes, no Connection header", "[response]")
{
    const std::string base = "HTTP/1.1 200 OK\r\n"
                             "Content-Type: text/event-stream\r\n"
                             "Cache-Control: no-cache, no-transform\r\n"
                             "X-Accel-Buffering: no\r\n";
    CHECK(ssepp::response_head() == base + "\r\n");
    CHECK(ssepp::response_head({.framing = ssepp::body_framing::chunked})
          == base + "Transfer-Encoding: chunked\r\n\r\n");
    CHECK(ssepp::response_head({.cors_origin = "*"}) == base + "Access-Control-Allow-Origin: *\r\n\r\n");
    CHECK(ssepp::response_head({.cors_origin = "https://app.example", .cors_credentials = true})
          == base
                 + "Access-Control-Allow-Origin: https://app.example\r\n"
                   "Access-Control-Allow-Credentials: true\r\n"
                   "Vary: Origin\r\n\r\n");
    // Credentials without an origin write no CORS header at all.
    CHECK(ssepp::response_head({.cors_credentials = true}) == base + "\r\n");
    CHECK(ssepp::response_head({.headers = {{"X-One", "1"}, {"X-Two", "two words"}}})
          == base + "X-One: 1\r\nX-Two: two words\r\n\r\n");
    for (const auto& options :
         {ssepp::response_options{}, ssepp::response_options{.framing = ssepp::body_framing::chunked},
          ssepp::response_options{.cors_origin = "https://a.example", .cors_credentials = true}})
        CHECK_FALSE(has_connection_header(ssepp::response_head(options)));
}

TEST_CASE("response_head refuses CR, LF and NUL in header fields", "[response]")
{
    using opts = ssepp::response_options;
    const auto with_header = [](std::string name, std::string value) {
        return opts{.headers = {{std::move(name), std::move(value)}}};
    };
    CHECK_THROWS_AS(ssepp::response_head(with_header("X-A", "1\r\nSet-Cookie: x=1")), std::invalid_argument);
    CHECK_THROWS_AS(ssepp::response_head(with_header("X-A", "1\nX-B: 2")), std::invalid_argument);
    CHECK_THROWS_AS(ssepp::response_head(with_header("X-A", "1\r")), std::invalid_argument);
    CHECK_THROWS_AS(ssepp::response_head(with_header("X-A", std::string("a\0b", 3))), std::invalid_argument);
    CHECK_THROWS_AS(ssepp::response_head(with_header("X-A\r\nX-B", "1")), std::invalid_argument);
    CHECK_THROWS_AS(ssepp::response_head(with_header("X-A:", "1")), std::invalid_argument);
    CHECK_THROWS_AS(ssepp::response_head(with_header("X A", "1")), std::invalid_argument);
    CHECK_THROWS_AS(ssepp::response_head(with_header("", "1")), std::invalid_argument);
    CHECK_THROWS_AS(ssepp::response_head(opts{.cors_origin = "https://a.example\r\nSet-Cookie: x=1"}),
                    std::invalid_argument);
    CHECK_NOTHROW(ssepp::response_head(with_header("X-A", "")));
    CHECK_NOTHROW(ssepp::response_head(with_header("X-A", "tab\tand: colon")));
    // http_body builds its head on construction: a bad field fails there, before any I/O.
    asio::io_context io;
    CHECK_THROWS_AS(ssepp::http_body(tcp::socket(io), with_header("X-A", "1\r\n")), std::invalid_argument);
}

TEST_CASE("close-delimited body: the frames as they are, ended by the connection", "[response]")
{
    sse_server<> srv(quiet());
    test::client c(srv.port());
    auto em = srv.at(0);
    const std::vector<ssepp::event> sent{{.data = "one"}, {.id = "2", .event = "two", .data = "a\nb"}, {.comment = "note"}};
    for (const auto& e : sent)
        em->send(e);
    em->complete();
    REQUIRE(c.read_to_eof());
    CHECK(c.head == ssepp::response_head());
    std::string expected = "retry: 5000\n\n";
    for (const auto& e : sent)
        expected += ssepp::format(e);
    CHECK(c.body == expected);
    CHECK(c.raw == c.head + expected);  // nothing after the last frame
    CHECK(c.comments == std::vector<std::string>{"note"});
}

TEST_CASE("chunked body: chunks decode to the events and complete() ends with the 0-chunk", "[response]")
{
    const ssepp::response_options response{.framing = ssepp::body_framing::chunked, .cors_origin = "*"};
    sse_server<> srv(quiet(), response);
    test::client c(srv.port());
    auto em = srv.at(0);
    REQUIRE(c.read_until([&] { return c.retries.size() == 1; }));
    CHECK(c.head == ssepp::response_head(response));
    for (int i = 0; i < 300; ++i)
        em->send({.id = std::to_string(i), .data = std::string(static_cast<std::size_t>(i * 7), 'd')});
    em->complete({.event = "done", .data = ""});
    REQUIRE(c.read_to_eof());
    CHECK(c.framing_error.empty());
    CHECK(c.chunk_terminated);
    REQUIRE(c.chunk_sizes.size() >= 3);  // retry hint, events, and the 0-chunk
    CHECK(c.chunk_sizes.back() == 0);
    CHECK(chunks_hold_whole_frames(c));
    REQUIRE(c.events.size() == 301);
    for (int i = 0; i < 300; ++i)
        REQUIRE(c.events[static_cast<std::size_t>(i)].data.size() == static_cast<std::size_t>(i * 7));
    CHECK(c.events.back() == test::received{"done", "", "299"});
    CHECK(c.raw.ends_with("\r\n0\r\n\r\n"));
}

TEST_CASE("chunked body: heartbeats are chunks too", "[response]")
{
    auto options = quiet();
    options.heartbeat = 50ms;
    sse_server<> srv(options, {.framing = ssepp::body_framing::chunked});
    test::client c(srv.port());
    REQUIRE(c.read_until([&] { return c.comments.size() >= 2; }, 3s));
    CHECK(c.framing_error.empty());
    CHECK(chunks_hold_whole_frames(c));
    CHECK_FALSE(c.chunk_terminated);
}

TEST_CASE("chunked body ended by a timeout has no 0-chunk: the client can tell", "[response]")
{
    auto options = quiet();
    options.lifetime = 100ms;
    sse_server<> srv(options, {.framing = ssepp::body_framing::chunked});
    test::client c(srv.port());
    srv.at(0)->send({.data = "x"});
    REQUIRE(c.read_to_eof(3s));
    CHECK(c.framing_error.empty());
    CHECK_FALSE(c.chunk_terminated);
    CHECK(c.events.size() == 1);
}

TEST_CASE("a stack that writes its own head passes its own transport: the emitter writes the body only",
          "[response]")
{
    SECTION("close-delimited")
    {
        const std::string own = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nX-Stack: mine\r\n\r\n";
        sse_server<tcp::socket> srv(quiet(), {}, own);
        test::client c(srv.port());
        auto em = srv.at(0);
        em->send({.data = "body only"});
        em->complete();
        REQUIRE(c.read_to_eof());
        CHECK(c.head == own);
        CHECK(c.body == "retry: 5000\n\ndata: body only\n\n");
    }
    SECTION("chunked: http_body frames what a stack gives it, the head included")
    {
        ssepp::response_options response{.framing = ssepp::body_framing::chunked, .headers = {{"X-Stack", "mine"}}};
        sse_server<> srv(quiet(), response);
        test::client c(srv.port());
        auto em = srv.at(0);
        em->send({.data = "body only"});
        em->complete();
        REQUIRE(c.read_to_eof());
        CHECK(c.head == ssepp::response_head(response));
        CHECK(c.framing_error.empty());
        CHECK(c.chunk_terminated);
        CHECK(c.body == "retry: 5000\n\ndata: body only\n\n");
    }
    SECTION("no head, no retry hint, nothing queued: complete() closes without a byte")
    {
        auto options = quiet();
        options.retry_hint = std::nullopt;
        sse_server<tcp::socket> srv(options, {}, " ");
        test::client c(srv.port());
        srv.at(0)->complete();
        REQUIRE(c.read_to_eof());
        CHECK(c.raw == " ");  // the stack's own byte, then nothing from the emitter
    }
}
