// Unit tests of examples/common/request_parser (the HTTP front's parsing, no socket): the
// verdict on a request must not depend on how its bytes were split (a fuzz target found
// trailers refused 400 or 431 by the split), and a refused request holds nothing.
#include "common/request_parser.hpp"

#include "catch.hpp"

#include <string>
#include <string_view>
#include <vector>

namespace {

namespace http = common::http;
using parser_t = http::request_parser;

/// What the parser said, in order: requests (method, target, headers, body) and the refusal.
struct outcome {
    std::vector<std::string> events;
    int status = 0;

    friend bool operator==(const outcome&, const outcome&) = default;
};

std::ostream& operator<<(std::ostream& os, const outcome& o)
{
    for (const auto& e : o.events)
        os << e << "\n";
    return os << "status " << o.status;
}

/// Feeds `chunks` in order as the server does (each chunk again from where the parser stopped).
outcome run(const std::vector<std::string_view>& chunks, http::parser_limits limits)
{
    outcome out;
    parser_t p(limits);
    for (std::string_view rest : chunks) {
        for (;;) {
            const auto [what, used] = p.feed(rest);
            rest.remove_prefix(used);
            if (what == parser_t::event::need_more)
                break;
            if (what == parser_t::event::expect_continue) {
                out.events.push_back("100-continue");
                continue;
            }
            if (what == parser_t::event::error) {
                out.status = p.rejection().status;
                out.events.push_back("error " + std::to_string(p.rejection().status) + " " + p.rejection().body);
                return out;
            }
            auto r = p.take_request();
            std::string e = r.method + " " + r.target + " body=" + r.body;
            for (const auto& [k, v] : r.headers)
                e += " [" + k + ": " + v + "]";
            out.events.push_back(e);
        }
    }
    return out;
}

/// `bytes` whole, then split in two at every position, then one byte at a time: the same
/// outcome each time. Returns the whole one.
outcome same_however_split(std::string_view bytes, http::parser_limits limits)
{
    const auto whole = run({bytes}, limits);
    for (std::size_t at = 0; at <= bytes.size(); ++at) {
        INFO("split at " << at << " of " << bytes.size());
        CHECK(run({bytes.substr(0, at), bytes.substr(at)}, limits) == whole);
    }
    std::vector<std::string_view> bytewise;
    for (std::size_t i = 0; i < bytes.size(); ++i)
        bytewise.push_back(bytes.substr(i, 1));
    INFO("one byte at a time");
    CHECK(run(bytewise, limits) == whole);
    return whole;
}

const std::string chunked_head = "POST /t HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n";

} // namespace

TEST_CASE("request_parser: trailers malformed past the limit get the same answer however the bytes are split",
          "[request-parser]")
{
    const http::parser_limits limits{.max_head_bytes = 64, .max_body_bytes = 1024};
    SECTION("a control character in a value past the limit: 431")
    {
        // llhttp rejects that byte, but only after the limit was passed.
        const auto bytes = chunked_head + "X-T: " + std::string(80, 'v') + "\x01" + "\r\n\r\n";
        const auto o = same_however_split(bytes, limits);
        CHECK(o.status == 431);
        CHECK(o.events.back().find("trailer fields over the limit of 64 bytes") != std::string::npos);
    }
    SECTION("a malformed field name past the limit: 431 whole and split (it was 400 whole, 431 split)")
    {
        // llhttp reports a name's bytes when the name ends or the bytes fed do, not when it
        // rejects a byte of it: counted as reported, the size depended on the split.
        const auto bytes = chunked_head + std::string(70, 'n') + "\x7f: v\r\n\r\n";
        CHECK(same_however_split(bytes, limits).status == 431);
    }
    SECTION("malformed within the limit: 400 whole and split")
    {
        const auto bytes = chunked_head + "X-T: v\x01" + std::string(80, 'v') + "\r\n\r\n";
        CHECK(same_however_split(bytes, limits).status == 400);
    }
    SECTION("well-formed trailers at the limit pass, one byte more is 431")
    {
        // The trailer section, as sent: its fields and the blank line.
        const auto section = [](std::size_t size) {
            std::string t = "X-T: " + std::string(size - 9, 'v') + "\r\n\r\n";
            REQUIRE(t.size() == size);
            return t;
        };
        const auto ok = same_however_split(chunked_head + section(64) + "GET /next HTTP/1.1\r\nHost: h\r\n\r\n", limits);
        REQUIRE(ok.events.size() == 2);
        CHECK(ok.status == 0);
        CHECK(ok.events[0].find("body=hello") != std::string::npos);
        CHECK(ok.events[0].find("[X-T: vvv") != std::string::npos);
        CHECK(ok.events[1].starts_with("GET /next"));
        CHECK(same_however_split(chunked_head + section(65), limits).status == 431);
    }
    SECTION("the fuzz target's input (notes/fuzz-crashes/fuzz_http_request-trailer-400-vs-431)")
    {
        // Its connection bytes, with the limits its mode byte chose (64-byte head, 16-byte body).
        const std::string bytes(
            "\x50\x4f\x53\x54\x20\x2f\x28\x70\x2e\x69\x2f\x6e\xa0\x6f\x54\x6e\x74\x69\x75\x65\x0d\x0a\x54\x72\x61\x6e\x73\x66\x65\x72\x2d\x45"
            "\x6e\x63\x6f\x64\x69\x6e\x67\x3a\x20\x63\x68\x75\x6e\x6b\x65\x64\x0d\x0a\x0d\x0a\x38\x0d\x00\x00\x00\x00\x0a\x68\x65\x6c\x6c\x74"
            "\x69\x30\x30\x30\x30\x30\x30\x0d\x0a\x43\x6f\x6e\x6e\x63\x74\x69\x6f\x6e\x3a\x0d\x0a\x55\x70\x67\x72\x61\x64\x65\x3a\x20\x77\x30"
            "\x30\x30\x52\x30\x30\x30\x37\x32\x34\x37\x34\x30\x37\x30\x69\x63\x61\xeb\x74\x69\x6f\x6e\x73\x76\x65\x6e\x25\x32\x30\x62\x20\x74"
            "\x69\x75\x65\x0d\x0a\x54\x72\x61\x6e\x73\x66\x65\x72\x2d\x45\x6e\x63\x6f\x64\x69\x6e\x67\x3c\x20\x63\x68\x75\x6e\x6b\x65\x64\x0d"
            "\x0a\x0d\x0a\x38\x0d\x00\x00\x00\x00\x0a\x68\x65\x6c\x6c\x74\x69\x30\x30\x30\x30\x30\x30\x0d\x0a\x43\x6f\x6e\x47\x2e\x54\x20\xaf"
            "\xff\x6e\x63\x74\x69\x6f\x6e\x3a\x0d\x0a\x55\x70\x67\x72\x61\x64\x65\x3a\x20\x77\x01\x01\x01\x01\x00\xfb\x01\x20\x00\x08\x50\x4f"
            "\x53\x54\x20\x69\x6e\x30\x30\x30\x52\x30\x30\x30\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"
            "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"
            "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"
            "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x37\x32\x34\x37\x34\x30\x37\x30\x69\x63\x61\x48\x54\x54\x50\x2f\x30\x2e\x31"
            "\x0d\x0a\x48\x6f\x73\x74\x3a\x20\x31\x31\x3a\x32\x74\x2d\x49\x44\x3a\x20\x37\x0d\xff\xff\xff\xff\xff\x7f\x6a\x6f\x00\x48\x45\x1d"
            "\xd3\x0a\x41",
            387);
        same_however_split(bytes, {.max_head_bytes = 64, .max_body_bytes = 16});
    }
}

TEST_CASE("request_parser: a body too large is 413 before the head check's refusal, and the check's hold goes at once",
          "[request-parser]")
{
    auto held = std::make_shared<int>(0);
    std::weak_ptr<int> watch = held;
    // Like upload_server's: raises the limit, reserves something, and refuses for capacity.
    http::head_check check = [&](const http::request& r, std::size_t& max_body) -> std::optional<http::response> {
        max_body = 100;
        r.hold = std::exchange(held, nullptr);
        auto busy = http::response::error(503, "busy");
        busy.headers.emplace_back("Retry-After", "5");
        return busy;
    };
    parser_t p({}, check);
    const std::string head = "POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 300\r\n\r\n";
    const auto [what, used] = p.feed(head);
    REQUIRE(what == parser_t::event::error);
    CHECK(used == head.size());
    CHECK(p.rejection().status == 413);  // not 503: retrying would never help
    CHECK(p.rejection().body.find("300 bytes is over the limit of 100") != std::string::npos);
    CHECK(watch.expired());

    // Within the limit, the check's own answer.
    held = std::make_shared<int>(0);
    watch = held;
    parser_t q({}, check);
    const auto [what2, used2] = q.feed("POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 50\r\n\r\n");
    REQUIRE(what2 == parser_t::event::error);
    CHECK(q.rejection().status == 503);
    CHECK(watch.expired());
    (void)used2;
}

TEST_CASE("request_parser: on_body_bytes follows the body as it arrives and may refuse it, a refused or dropped "
          "request holds nothing",
          "[request-parser]")
{
    std::size_t seen = 0;
    std::weak_ptr<int> watch;
    http::head_check check = [&](const http::request& r, std::size_t&) -> std::optional<http::response> {
        auto hold = std::make_shared<int>(0);
        watch = hold;
        r.hold = hold;
        r.on_body_bytes = [&](std::size_t n) -> std::optional<http::response> {
            seen += n;
            if (seen > 10)
                return http::response::error(503, "no room for more");
            return std::nullopt;
        };
        return std::nullopt;
    };
    SECTION("refused past 10 bytes")
    {
        parser_t p({}, check);
        REQUIRE(p.feed("POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 20\r\n\r\n0123456").what
                == parser_t::event::need_more);
        CHECK(seen == 7);
        CHECK(p.body_bytes() == 7);
        CHECK(!watch.expired());
        const auto [what, used] = p.feed("89abcdef");
        REQUIRE(what == parser_t::event::error);
        CHECK(p.rejection().status == 503);
        CHECK(seen == 15);
        CHECK(watch.expired());
        (void)used;
    }
    SECTION("dropped by its connection")
    {
        parser_t p({}, check);
        REQUIRE(p.feed("POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 20\r\n\r\n0123").what == parser_t::event::need_more);
        CHECK(!watch.expired());
        p.drop_request();
        CHECK(watch.expired());
    }
    SECTION("a body within the bound is whole")
    {
        parser_t p({}, check);
        const auto [what, used] = p.feed("POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789");
        REQUIRE(what == parser_t::event::request);
        CHECK(p.take_request().body == "0123456789");
        CHECK(seen == 10);
        (void)used;
    }
}
