// Property test: whatever the formatter writes, the parser reads back as the event that was
// written (with the line breaks the protocol normalizes), however the bytes are chunked.
#include <ssepp/parser.hpp>
#include <ssepp/format.hpp>

#include "catch.hpp"

#include <chrono>
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace {

using std::chrono::milliseconds;

struct received {
    std::string type;
    std::string data;
    std::string id;
    friend bool operator==(const received&, const received&) = default;
};

struct outcome {
    std::vector<received> events;
    std::vector<milliseconds::rep> retries;
    std::vector<std::string> comments;
    std::string last_event_id;
    std::optional<milliseconds::rep> retry;
    friend bool operator==(const outcome&, const outcome&) = default;
};

struct recorder {
    outcome& o;
    void on_event(const ssepp::message& m)
    {
        o.events.push_back(
            {std::string(m.type), std::string(m.data), std::string(m.last_event_id)});
    }
    void on_retry(milliseconds r) { o.retries.push_back(r.count()); }
    void on_comment(std::string_view c) { o.comments.emplace_back(c); }
};

class generator {
public:
    explicit generator(std::uint32_t seed) : rng_(seed) {}

    ssepp::event next()
    {
        ssepp::event e;
        if (chance(0.8))
            e.data = text(true);
        if (chance(0.4))
            e.id = chance(0.2) ? std::string() : text(false);
        if (chance(0.5))
            e.event = text(false);
        if (chance(0.2))
            e.retry = milliseconds(pick(0, chance(0.5) ? 10'000 : 2'000'000'000));
        if (chance(0.2))
            e.comment = text(true);
        if (!e.data && !e.id && e.event.empty() && !e.retry && !e.comment)
            e.data = std::string();
        return e;
    }

private:
    bool chance(double p) { return std::bernoulli_distribution(p)(rng_); }
    int pick(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }

    // Valid UTF-8 with the awkward bytes of the protocol; line breaks only when `breaks`
    // (ids and event names cannot carry them).
    std::string text(bool breaks)
    {
        std::string s;
        const int n = chance(0.05) ? pick(100, 3000) : pick(0, 24);
        for (int i = 0; i < n; ++i) {
            switch (pick(0, breaks ? 12 : 9)) {
            case 0: s += ' '; break;
            case 1: s += ':'; break;
            case 2: s += breaks ? std::string_view("\0", 1) : std::string_view("\t"); break;
            case 3: append_code_point(s, static_cast<char32_t>(pick(0x80, 0x7FF))); break;
            case 4: {
                auto cp = static_cast<char32_t>(pick(0x800, 0xFFFF));
                if (cp >= 0xD800 && cp <= 0xDFFF)
                    cp = 0xFEFF; // a BOM mid-stream is just a character
                append_code_point(s, cp);
                break;
            }
            case 5: append_code_point(s, static_cast<char32_t>(pick(0x10000, 0x10FFFF))); break;
            case 6: s += "data: x"; break;
            case 10: s += '\r'; break;
            case 11: s += '\n'; break;
            case 12: s += "\r\n"; break;
            default: s += static_cast<char>(pick(0x20, 0x7E)); break;
            }
        }
        return s;
    }

    static void append_code_point(std::string& s, char32_t cp)
    {
        if (cp < 0x800) {
            s += static_cast<char>(0xC0 | (cp >> 6));
        } else if (cp < 0x10000) {
            s += static_cast<char>(0xE0 | (cp >> 12));
            s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        } else {
            s += static_cast<char>(0xF0 | (cp >> 18));
            s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
            s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        }
        s += static_cast<char>(0x80 | (cp & 0x3F));
    }

    std::mt19937 rng_;
};

// CRLF and CR arrive as LF: the parser joins data lines with LF.
std::string normalize_breaks(std::string_view s)
{
    std::string out;
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '\r') {
            out += '\n';
            if (i + 1 < s.size() && s[i + 1] == '\n')
                ++i;
        } else {
            out += s[i];
        }
    }
    return out;
}

// What an EventSource must report for these events, written in order on one stream.
outcome expected(const std::vector<ssepp::event>& events)
{
    outcome o;
    for (const auto& e : events) {
        if (e.comment)
            ssepp::detail::for_each_line(
                *e.comment, [&](std::string_view line) { o.comments.emplace_back(line); });
        if (e.id)
            o.last_event_id = *e.id;
        if (e.retry) {
            o.retries.push_back(e.retry->count());
            o.retry = e.retry->count();
        }
        if (e.data)
            o.events.push_back({e.event.empty() ? "message" : e.event, normalize_breaks(*e.data),
                                o.last_event_id});
    }
    return o;
}

outcome parse(const std::vector<std::string_view>& chunks)
{
    outcome o;
    ssepp::parser p;
    std::error_code ec;
    for (auto chunk : chunks) {
        if (auto e = p.feed(chunk, recorder{o}); e && !ec)
            ec = e;
    }
    REQUIRE(!ec);
    o.last_event_id = p.last_event_id();
    if (p.retry())
        o.retry = p.retry()->count();
    return o;
}

struct corpus {
    std::vector<ssepp::event> events;
    std::string wire;
};

corpus make_corpus(std::uint32_t seed, int n)
{
    generator gen(seed);
    corpus c;
    for (int i = 0; i < n; ++i) {
        c.events.push_back(gen.next());
        REQUIRE(!ssepp::format_to(c.wire, c.events.back()));
    }
    return c;
}

} // namespace

TEST_CASE("parse(format(e)) round-trips, fed whole", "[round-trip]")
{
    const auto c = make_corpus(20240601, 3000);
    const auto want = expected(c.events);
    REQUIRE(want.events.size() > 2000);
    CHECK(parse({c.wire}) == want);
    // A BOM in front changes nothing.
    const std::string with_bom = "\xEF\xBB\xBF" + c.wire;
    CHECK(parse({with_bom}) == want);
}

TEST_CASE("parse(format(e)) round-trips, one byte at a time", "[round-trip]")
{
    const auto c = make_corpus(7, 3000);
    std::vector<std::string_view> bytes;
    const std::string_view wire = c.wire;
    for (std::size_t i = 0; i < wire.size(); ++i)
        bytes.push_back(wire.substr(i, 1));
    CHECK(parse(bytes) == expected(c.events));
}

TEST_CASE("parse(format(e)) round-trips, split at every byte boundary", "[round-trip]")
{
    // Short streams, so that every split point of each is tried within a second or so.
    for (std::uint32_t seed = 1; seed <= 40; ++seed) {
        const auto c = make_corpus(seed, 8);
        const auto want = expected(c.events);
        const std::string_view wire = c.wire;
        if (wire.size() > 4000)
            continue; // a long generated text; the other cases cover those
        for (std::size_t i = 0; i <= wire.size(); ++i) {
            const auto got = parse({wire.substr(0, i), wire.substr(i)});
            if (!(got == want)) {
                INFO("seed " << seed << ", split at " << i);
                CHECK(got == want);
            }
        }
    }
}

TEST_CASE("parse(format(e)) round-trips, random chunk sizes", "[round-trip]")
{
    const auto c = make_corpus(99, 3000);
    const auto want = expected(c.events);
    std::mt19937 rng(5);
    for (int round = 0; round < 10; ++round) {
        std::vector<std::string_view> chunks;
        const std::string_view wire = c.wire;
        const std::size_t max_chunk = std::size_t{1} << (round + 1);
        for (std::size_t at = 0; at < wire.size();) {
            const auto n = std::uniform_int_distribution<std::size_t>(0, max_chunk)(rng);
            chunks.push_back(wire.substr(at, n));
            at += n;
        }
        INFO("chunks up to " << max_chunk << " bytes");
        CHECK(parse(chunks) == want);
    }
}
