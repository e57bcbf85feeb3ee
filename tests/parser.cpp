// Test that the header is self-contained.
#include <ssepp/parser.hpp>

#include "catch.hpp"

#include <chrono>
#include <optional>
#include <ostream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

using namespace std::string_literals;
using namespace std::string_view_literals;
using std::chrono::milliseconds;

namespace {

const std::string fffd = "\xEF\xBF\xBD";
const std::string bom = "\xEF\xBB\xBF";

struct ev {
    std::string type;
    std::string data;
    std::string id;
    friend bool operator==(const ev&, const ev&) = default;
};

// Everything a parser reports for one input: comparing transcripts compares behaviour.
struct transcript {
    std::vector<ev> events;
    std::vector<milliseconds::rep> retries;
    std::vector<std::string> comments;
    std::string last_event_id;
    std::optional<milliseconds::rep> retry;
    std::error_code ec;
    friend bool operator==(const transcript&, const transcript&) = default;
};

std::ostream& operator<<(std::ostream& os, const transcript& t)
{
    os << "{events:";
    for (const auto& e : t.events)
        os << " [" << e.type << "|" << e.data << "|" << e.id << "]";
    os << " retries:";
    for (auto r : t.retries)
        os << " " << r;
    os << " comments:";
    for (const auto& c : t.comments)
        os << " [" << c << "]";
    os << " last_id: [" << t.last_event_id << "]"
       << " retry: " << (t.retry ? std::to_string(*t.retry) : "none")
       << " ec: " << t.ec.message() << "}";
    return os;
}

struct recorder {
    transcript& t;
    void on_event(const ssepp::message& m)
    {
        t.events.push_back(
            {std::string(m.type), std::string(m.data), std::string(m.last_event_id)});
    }
    void on_retry(milliseconds r) { t.retries.push_back(r.count()); }
    void on_comment(std::string_view c) { t.comments.emplace_back(c); }
};

transcript run(const std::vector<std::string_view>& chunks, ssepp::parser_limits limits = {})
{
    transcript t;
    ssepp::parser p(limits);
    for (auto chunk : chunks) {
        const auto ec = p.feed(chunk, recorder{t});
        if (ec && !t.ec)
            t.ec = ec;
        // Sticky: once failed, every later feed reports the same error.
        if (t.ec && ec != t.ec)
            t.ec = std::make_error_code(std::errc::state_not_recoverable);
    }
    t.last_event_id = p.last_event_id();
    if (p.retry())
        t.retry = p.retry()->count();
    return t;
}

// "parsegrind": the input fed whole, split at every byte boundary, and one byte at a time must
// give the same transcript, which is returned.
transcript parse(std::string_view s, ssepp::parser_limits limits = {})
{
    const transcript whole = run({s}, limits);
    for (std::size_t i = 0; i <= s.size(); ++i) {
        const auto t = run({s.substr(0, i), s.substr(i)}, limits);
        if (!(t == whole)) {
            INFO("split at " << i);
            CHECK(t == whole);
        }
    }
    std::vector<std::string_view> bytes;
    for (std::size_t i = 0; i < s.size(); ++i)
        bytes.push_back(s.substr(i, 1));
    const auto t = run(bytes, limits);
    INFO("one byte at a time");
    CHECK(t == whole);
    return whole;
}

std::vector<std::string> datas(const transcript& t)
{
    std::vector<std::string> out;
    for (const auto& e : t.events)
        out.push_back(e.data);
    return out;
}

using strings = std::vector<std::string>;

} // namespace

TEST_CASE("spec example: data lines are joined by LF", "[parser]")
{
    const auto t = parse("data: YHOO\ndata: +2\ndata: 10\n\n");
    CHECK(t.events == std::vector<ev>{{"message", "YHOO\n+2\n10", ""}});
}

TEST_CASE("spec example: 'data:test' and 'data: test' are the same event", "[parser]")
{
    const auto t = parse("data:test\n\ndata: test\n\n");
    CHECK(t.events == std::vector<ev>{{"message", "test", ""}, {"message", "test", ""}});
}

TEST_CASE("spec example: bare 'data' lines and an unterminated last event", "[parser]")
{
    // First event: data "" ; second: data "\n"; the trailing "data:" is never dispatched.
    const auto t = parse("data\n\ndata\ndata\n\ndata:");
    CHECK(datas(t) == strings{"", "\n"});
}

TEST_CASE("spec example: comments, ids and a kept leading space", "[parser]")
{
    const auto t = parse(": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\n"
                         "data:  third event\n\n");
    CHECK(t.events
          == std::vector<ev>{{"message", "first event", "1"}, {"message", "second event", ""},
                             {"message", " third event", ""}});
    CHECK(t.comments == strings{"test stream"});
}

TEST_CASE("spec example: event types", "[parser]")
{
    const auto t = parse("event: add\ndata: 73857293\n\nevent: remove\ndata: 2153\n\n"
                         "event: add\ndata: 113411\n\n");
    CHECK(t.events
          == std::vector<ev>{
              {"add", "73857293", ""}, {"remove", "2153", ""}, {"add", "113411", ""}});
}

TEST_CASE("the type defaults to message and is reset after each dispatch", "[parser]")
{
    const auto t = parse("event: a\ndata: 1\n\ndata: 2\n\nevent:\ndata: 3\n\nevent\ndata: 4\n\n"
                         "event: b\nevent: c\ndata: 5\n\n");
    CHECK(t.events
          == std::vector<ev>{{"a", "1", ""}, {"message", "2", ""}, {"message", "3", ""},
                             {"message", "4", ""}, {"c", "5", ""}});
}

TEST_CASE("a blank line with no data dispatches nothing and resets the type", "[parser]")
{
    const auto t = parse("\n\n\nevent: x\n\ndata: d\n\n");
    CHECK(t.events == std::vector<ev>{{"message", "d", ""}});
}

TEST_CASE("only one trailing LF is stripped from the data", "[parser]")
{
    CHECK(datas(parse("data: a\ndata:\n\n")) == strings{"a\n"});
    CHECK(datas(parse("data:\ndata:\ndata:\n\n")) == strings{"\n\n"});
    CHECK(datas(parse("data: \n\n")) == strings{""});
}

TEST_CASE("lines end with LF, CR or CRLF, mixed freely", "[parser]")
{
    for (const auto* input :
         {"data: a\ndata: b\n\n", "data: a\rdata: b\r\r", "data: a\r\ndata: b\r\n\r\n",
          "data: a\rdata: b\r\n\n", "data: a\r\ndata: b\n\r"}) {
        INFO(input);
        CHECK(datas(parse(input)) == strings{"a\nb"});
    }
    // LF CR is two line ends; CR CR is two line ends; CRLF is one.
    CHECK(datas(parse("data: a\n\rdata: b\r\rdata: c\r\n\r\n")) == strings{"a", "b", "c"});
}

TEST_CASE("a CRLF split across chunks is one line end", "[parser]")
{
    transcript t;
    ssepp::parser p;
    REQUIRE(!p.feed("data: a\r", recorder{t}));
    REQUIRE(!p.feed("\ndata: b\r", recorder{t}));
    REQUIRE(!p.feed("\n\r", recorder{t}));
    // The CR that ended the chunk ended the line at once: the event is already out.
    CHECK(datas(t) == strings{"a\nb"});
    // The LF completing that CRLF is not a second (blank) line; a later one is.
    REQUIRE(!p.feed("\n", recorder{t}));
    REQUIRE(!p.feed("data: c\n", recorder{t}));
    CHECK(datas(t) == strings{"a\nb"});
    REQUIRE(!p.feed("\n", recorder{t}));
    CHECK(datas(t) == strings{"a\nb", "c"});
}

TEST_CASE("a line starting with a colon is a comment", "[parser]")
{
    const auto t = parse(":\n: hello\n:  two spaces\n:no space\ndata: a\n: inside\ndata: b\n\n");
    CHECK(datas(t) == strings{"a\nb"});
    CHECK(t.comments == strings{"", "hello", " two spaces", "no space", "inside"});
    // A comment-only frame dispatches nothing.
    CHECK(parse(": keep-alive\n\n").events.empty());
}

TEST_CASE("a field without a colon has an empty value", "[parser]")
{
    CHECK(datas(parse("data\n\n")) == strings{""});
    const auto t = parse("id: 5\ndata: x\n\nid\ndata\n\n");
    CHECK(t.events == std::vector<ev>{{"message", "x", "5"}, {"message", "", ""}});
}

TEST_CASE("one leading space after the colon is stripped, nothing else", "[parser]")
{
    CHECK(datas(parse("data:x\n\n")) == strings{"x"});
    CHECK(datas(parse("data: x\n\n")) == strings{"x"});
    CHECK(datas(parse("data:  x \n\n")) == strings{" x "});
    CHECK(datas(parse("data:\tx\n\n")) == strings{"\tx"});
    CHECK(datas(parse("data: a:b: c\n\n")) == strings{"a:b: c"});
    CHECK(parse("event:  t\ndata: x\n\n").events.at(0).type == " t");
}

TEST_CASE("unknown fields are ignored, names are exact and case-sensitive", "[parser]")
{
    const auto t = parse("foo: bar\nData: no\ndata : no\n data: no\ndatas: no\nevent : no\n"
                         "ID: 3\nid : 4\nretry : 5\ndata: yes\n\n");
    CHECK(t.events == std::vector<ev>{{"message", "yes", ""}});
    CHECK(t.retries.empty());
}

TEST_CASE("the id persists across events until changed", "[parser]")
{
    const auto t = parse("id: 1\ndata: a\n\ndata: b\n\nid: 2\ndata: c\n\n");
    CHECK(t.events
          == std::vector<ev>{{"message", "a", "1"}, {"message", "b", "1"}, {"message", "c", "2"}});
    CHECK(t.last_event_id == "2");
}

TEST_CASE("an id containing NUL is ignored", "[parser]")
{
    const auto t = parse("id: 1\n\nid: a\0b\ndata: x\n\nid: \0\ndata: y\n\n"sv);
    CHECK(t.events == std::vector<ev>{{"message", "x", "1"}, {"message", "y", "1"}});
    CHECK(t.last_event_id == "1");
}

TEST_CASE("an empty id resets the last event id", "[parser]")
{
    const auto t
        = parse("id: 1\ndata: a\n\nid\ndata: b\n\nid: 2\ndata: c\n\nid:\ndata: d\n\nid: \n\n");
    CHECK(t.events
          == std::vector<ev>{{"message", "a", "1"}, {"message", "b", ""}, {"message", "c", "2"},
                             {"message", "d", ""}});
    CHECK(t.last_event_id.empty());
}

TEST_CASE("the last event id is set at a blank line even when nothing is dispatched", "[parser]")
{
    const auto t = parse("id: 7\n\n");
    CHECK(t.events.empty());
    CHECK(t.last_event_id == "7");
    // Until that blank line, it is only the pending id of the event being read.
    CHECK(parse("id: 7\n").last_event_id.empty());
    CHECK(parse("id: 1\n\nid: 2\ndata: x\n").last_event_id == "1");
}

TEST_CASE("retry sets the reconnection time only when all ASCII digits", "[parser]")
{
    const auto t = parse("retry: 1000\n\nretry: 10a\nretry: -1\nretry:\nretry\nretry: 1.5\n"
                         "retry:  5\nretry: +5\nretry: 5 \nretry: \xD9\xA3\n");
    CHECK(t.retries == std::vector<milliseconds::rep>{1000});
    CHECK(t.retry == 1000);
    // It needs no blank line, and the last valid one wins.
    const auto t2 = parse("retry: 0\nretry: 007\ndata: x\n");
    CHECK(t2.retries == std::vector<milliseconds::rep>{0, 7});
    CHECK(t2.retry == 7);
    CHECK(t2.events.empty());
    // A huge value saturates instead of wrapping.
    CHECK(parse("retry: 99999999999999999999999999\n").retry == milliseconds::max().count());
    CHECK(parse("retry: 9223372036854775807\n").retry == milliseconds::max().count());
    CHECK(parse("retry: 9223372036854775806\n").retry == milliseconds::max().count() - 1);
}

TEST_CASE("an unterminated last event is never dispatched", "[parser]")
{
    CHECK(parse("data: x").events.empty());
    CHECK(parse("data: x\n").events.empty());
    CHECK(parse("data: x\r").events.empty());
    CHECK(datas(parse("data: x\n\ndata: y\n")) == strings{"x"});
}

TEST_CASE("NUL and other control bytes pass through data", "[parser]")
{
    CHECK(datas(parse("data: a\0b\x01\x7F\n\n"sv)) == strings{"a\0b\x01\x7F"s});
}

TEST_CASE("a UTF-8 BOM is stripped at the start of the stream", "[parser]")
{
    CHECK(datas(parse(bom + "data: x\n\n")) == strings{"x"});
    CHECK(datas(parse(bom + "\ndata: x\n\n")) == strings{"x"});
    CHECK(datas(parse(bom)).empty());
}

TEST_CASE("a BOM split across chunks is still stripped", "[parser]")
{
    for (std::size_t at : {1, 2}) {
        transcript t;
        ssepp::parser p;
        REQUIRE(!p.feed(bom.substr(0, at), recorder{t}));
        REQUIRE(!p.feed(bom.substr(at) + "data: x\n\n", recorder{t}));
        CHECK(datas(t) == strings{"x"});
    }
}

TEST_CASE("a BOM is stripped only at the start, and only one", "[parser]")
{
    // Later, U+FEFF is an ordinary character: part of a (now unknown) field name...
    CHECK(datas(parse("data: a\n\n" + bom + "data: b\n\n")) == strings{"a"});
    CHECK(datas(parse(bom + bom + "data: a\n\n")).empty());
    // ...or kept in a value.
    CHECK(datas(parse(bom + "data: " + bom + "x\n\n")) == strings{bom + "x"});
    CHECK(datas(parse("data:" + bom + "\n\n")) == strings{bom});
}

TEST_CASE("a partial BOM is not a BOM", "[parser]")
{
    // The bytes held back while matching become part of the first line, as invalid UTF-8.
    const auto t = parse("\xEF\xBB" ": c\ndata: x\n\n");
    CHECK(datas(t) == strings{"x"});
    CHECK(parse(":\xEF\xBB\n").comments == strings{fffd});
    CHECK(parse("\xEF\xBB\n\xEF\n" "data: y\n\n").events.size() == 1);
    CHECK(datas(parse("\xEF" "data: z\n\n")).empty());
}

TEST_CASE("invalid UTF-8 becomes U+FFFD, one per maximal subpart", "[parser]")
{
    struct vector_case {
        std::string in;
        std::string out;
    };
    const std::vector<vector_case> cases{
        // Valid multibyte text is untouched.
        {"\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80\xF4\x8F\xBF\xBF",
         "\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80\xF4\x8F\xBF\xBF"},
        // Overlong encodings: each byte is its own error.
        {"\xC0\xAF", fffd + fffd},
        {"\xC1\xBF", fffd + fffd},
        {"\xE0\x80\xAF", fffd + fffd + fffd},
        {"\xE0\x9F\xBF", fffd + fffd + fffd},
        {"\xF0\x80\x80\xAF", fffd + fffd + fffd + fffd},
        {"\xF0\x8F\xBF\xBF", fffd + fffd + fffd + fffd},
        // Surrogates.
        {"\xED\xA0\x80", fffd + fffd + fffd},
        {"\xED\xBF\xBF", fffd + fffd + fffd},
        {"\xED\x9F\xBF", "\xED\x9F\xBF"},
        // Past U+10FFFF, and bytes that never occur.
        {"\xF4\x90\x80\x80", fffd + fffd + fffd + fffd},
        {"\xF5\x80", fffd + fffd},
        {"\xFE\xFF", fffd + fffd},
        // Truncated sequences: one U+FFFD for the valid prefix, then the next byte on its own.
        {"\xE2\x82", fffd},
        {"\xE2\x82x", fffd + "x"},
        {"\xF0\x9F\x98", fffd},
        {"\xF0\x9F\x98 \xF0\x9F", fffd + " " + fffd},
        {"\xC3", fffd},
        {"\xE2\xC3\xA9", fffd + "\xC3\xA9"},
        // Stray continuation bytes.
        {"\x80", fffd},
        {"a\x80\xBF" "b", "a" + fffd + fffd + "b"},
        {"\xC3\xA9\xA9", "\xC3\xA9" + fffd},
        // Unicode's Table 3-8 example.
        {"\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64",
         "a" + fffd + fffd + fffd + "b" + fffd + "c" + fffd + fffd + "d"},
    };
    for (const auto& c : cases) {
        INFO("input: " << c.in);
        const auto t = parse("event: " + c.in + "\nid: " + c.in + "\ndata: " + c.in + "\n: " + c.in
                             + "\n\n");
        REQUIRE(t.events.size() == 1);
        CHECK(t.events[0].data == c.out);
        CHECK(t.events[0].type == c.out);
        CHECK(t.events[0].id == c.out);
        CHECK(t.comments == strings{c.out});
    }
}

TEST_CASE("a truncated sequence at a line end is replaced", "[parser]")
{
    CHECK(datas(parse("data: \xF0\x9F\x98\ndata: \xE2\r\n\n")) == strings{fffd + "\n" + fffd});
}

TEST_CASE("invalid UTF-8 is found at any offset of a long ASCII run", "[parser]")
{
    // Exercises every position relative to the 32- and 8-byte fast paths.
    for (std::size_t at = 0; at < 80; ++at) {
        std::string in(80, 'a');
        std::string out = in;
        in[at] = '\xFF';
        out.replace(at, 1, fffd);
        std::string valid(80, 'b');
        valid.replace(at, 1, "\xC3\xA9");
        INFO("at " << at);
        CHECK(datas(run({"data: " + in + "\ndata: " + valid + "\n\n"}))
              == strings{out + "\n" + valid});
        std::string repaired;
        ssepp::detail::append_utf8(repaired, in);
        CHECK(repaired == out);
        CHECK(ssepp::detail::utf8_valid_prefix(in) == at);
        CHECK(ssepp::detail::utf8_valid_prefix(valid) == valid.size());
    }
}

TEST_CASE("a line longer than max_line fails with line_too_long", "[parser]")
{
    const ssepp::parser_limits limits{.max_line = 16, .max_event = 1 << 20};
    const std::string ok = "data: " + std::string(10, 'x'); // exactly 16 bytes
    CHECK(datas(parse(ok + "\n\n", limits)) == strings{std::string(10, 'x')});
    // Events before the long line are delivered; nothing after it is.
    const auto t = parse("data: a\n\n" + ok + "y\n\ndata: b\n\n", limits);
    CHECK(datas(t) == strings{"a"});
    CHECK(t.ec == ssepp::errc::line_too_long);
    // A line that never ends fails as soon as it passes the limit.
    CHECK(parse(ok + "y", limits).ec == ssepp::errc::line_too_long);
    CHECK(parse(":" + std::string(100, 'c'), limits).ec == ssepp::errc::line_too_long);
    CHECK(!parse(ok, limits).ec);
}

TEST_CASE("an event larger than max_event fails with event_too_large", "[parser]")
{
    const ssepp::parser_limits limits{.max_line = 1 << 20, .max_event = 8};
    // Each data line costs its value plus one LF; the type counts too.
    CHECK(datas(parse("data: abc\ndata: def\n\n", limits)) == strings{"abc\ndef"});
    CHECK(parse("data: abc\ndata: defg\n\n", limits).ec == ssepp::errc::event_too_large);
    CHECK(!parse("event: abcd\ndata: abc\n\n", limits).ec);
    CHECK(parse("event: abcde\ndata: abc\n\n", limits).ec == ssepp::errc::event_too_large);
    CHECK(parse("data: abc\nevent: abcde\n\n", limits).ec == ssepp::errc::event_too_large);
    // The limit is per event: many small events are fine.
    std::string many;
    for (int i = 0; i < 100; ++i)
        many += "data: 1234567\n\n";
    CHECK(parse(many, limits).events.size() == 100);
    // U+FFFD triples an invalid byte, and that counts.
    CHECK(parse("data: \xFF\xFF\xFF\n\n", limits).ec == ssepp::errc::event_too_large);
}

TEST_CASE("the error is sticky until reset()", "[parser]")
{
    transcript t;
    ssepp::parser p({.max_line = 4, .max_event = 1 << 20});
    CHECK(p.feed("data: toolong\n\n", recorder{t}) == ssepp::errc::line_too_long);
    CHECK(p.feed("id\n\n", recorder{t}) == ssepp::errc::line_too_long);
    p.finish();
    CHECK(p.feed("id\n\n", recorder{t}) == ssepp::errc::line_too_long);
    CHECK(t.events.empty());
    p.reset();
    CHECK(!p.feed("data\n\n", recorder{t}));
    CHECK(t.events.size() == 1);
}

TEST_CASE("finish() discards a partial line and event", "[parser]")
{
    transcript t;
    ssepp::parser p;
    REQUIRE(!p.feed("data: a\n", recorder{t}));
    p.finish();
    REQUIRE(!p.feed("\n", recorder{t}));
    REQUIRE(!p.feed("data: b", recorder{t}));
    p.finish();
    REQUIRE(!p.feed("\n\nevent: t\n", recorder{t}));
    p.finish();
    REQUIRE(!p.feed("data: c\n\n", recorder{t}));
    CHECK(t.events == std::vector<ev>{{"message", "c", ""}});
}

TEST_CASE("finish() keeps the last event id and retry, drops a pending id", "[parser]")
{
    transcript t;
    ssepp::parser p;
    REQUIRE(!p.feed("retry: 300\nid: 1\ndata: a\n\nid: 2\ndata: b\n", recorder{t}));
    p.finish();
    CHECK(p.last_event_id() == "1");
    CHECK(p.retry() == milliseconds(300));
    REQUIRE(!p.feed("data: c\n\n", recorder{t}));
    CHECK(t.events == std::vector<ev>{{"message", "a", "1"}, {"message", "c", "1"}});
}

TEST_CASE("finish() re-arms the BOM check for the next stream", "[parser]")
{
    transcript t;
    ssepp::parser p;
    REQUIRE(!p.feed(bom + "data: a\n\n" + bom + "data: lost\n\n", recorder{t}));
    p.finish();
    REQUIRE(!p.feed(bom.substr(0, 1), recorder{t}));
    REQUIRE(!p.feed(bom.substr(1) + "data: b\n\n", recorder{t}));
    p.finish();
    REQUIRE(!p.feed("data: c\n\n", recorder{t}));
    CHECK(datas(t) == strings{"a", "b", "c"});
}

TEST_CASE("reset() makes a brand-new parser", "[parser]")
{
    transcript t;
    ssepp::parser p;
    REQUIRE(!p.feed(bom + "retry: 5\nid: 9\n\ndata: partial", recorder{t}));
    p.reset();
    CHECK(p.last_event_id().empty());
    CHECK(!p.retry());
    REQUIRE(!p.feed(bom + "\ndata: x\n\n", recorder{t}));
    CHECK(t.events == std::vector<ev>{{"message", "x", ""}});
}

TEST_CASE("handlers: a callable, or an object with optional hooks", "[parser]")
{
    ssepp::parser p;
    std::vector<std::string> seen;
    REQUIRE(!p.feed(": c\nretry: 1\ndata: a\n\n",
                    [&](const ssepp::message& m) { seen.emplace_back(m.data); }));
    CHECK(seen == strings{"a"});

    struct only_events {
        int n = 0;
        void on_event(const ssepp::message&) { ++n; }
    } h;
    REQUIRE(!p.feed(": c\nretry: 2\ndata: b\n\n", h));
    CHECK(h.n == 1);
    CHECK(p.retry() == milliseconds(2));

    struct with_comments {
        std::vector<std::string>& out;
        void on_event(const ssepp::message& m) { out.emplace_back(m.type); }
        void on_comment(std::string_view c) { out.emplace_back(c); }
    };
    seen.clear();
    REQUIRE(!p.feed(": hi\nevent: e\ndata\n\n", with_comments{seen}));
    CHECK(seen == strings{"hi", "e"});
}

TEST_CASE("a handler that throws leaves the parser usable", "[parser]")
{
    ssepp::parser p;
    std::vector<std::string> seen;
    auto h = [&](const ssepp::message& m) {
        if (m.data == "boom")
            throw std::runtime_error("boom");
        seen.emplace_back(m.data);
    };
    CHECK_THROWS_AS(p.feed("data: boom\n\ndata: lost\n\n", h), std::runtime_error);
    REQUIRE(!p.feed("data: a\n\n", h));
    REQUIRE(!p.feed("data: bo", h));
    CHECK_THROWS_AS(p.feed("om\n\ndata: lost", h), std::runtime_error);
    REQUIRE(!p.feed("data: b\n\n", h));
    CHECK(seen == strings{"a", "b"});
}
