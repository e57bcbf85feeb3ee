// fuzz_parser: ssepp::parser on arbitrary bytes.
//
// Input: byte 0 picks the mode (bits 0-2: how many split points, bit 3: feed one byte at a
// time, bits 4-5: the parser's limits, small ones reaching the error paths), then two bytes per
// split point (an offset into the stream), then the stream itself.
//
// Checks:
// - whole and split: the stream fed at once and fed in chunks gives the same callbacks (events,
//   retries, comments, in order), the same error, last_event_id() and retry();
// - what it yields is well formed: valid UTF-8, a non-empty type, no line break where none can
//   be, retry() equal to the last retry reported;
// - round trip: each callback written back with ssepp::format (an event with its type, data
//   and the id in force, a retry-only frame, a comment-only frame) and parsed again gives the
//   same callbacks. The normalisations the parser documents make this exact: CRLF and CR in
//   data arrive as LF (and format splits on LF again), an absent type arrives as "message",
//   and comments arrive without their ':' and one space.
#include <ssepp/format.hpp>
#include <ssepp/parser.hpp>

#include "check.hpp"

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace {

using std::chrono::milliseconds;

struct item {
    enum kind_t { event, retry, comment } kind;
    std::string type; // event
    std::string data; // event: data; comment: text
    std::string id;   // event: the last event id in force
    milliseconds::rep ms = 0;
    friend bool operator==(const item&, const item&) = default;
};

struct outcome {
    std::vector<item> items;
    std::error_code error;
    std::string last_event_id;
    std::optional<milliseconds::rep> retry;
    friend bool operator==(const outcome&, const outcome&) = default;
};

bool valid_utf8(std::string_view s)
{
    return ssepp::detail::utf8_valid_prefix(s) == s.size();
}

struct recorder {
    std::vector<item>& items;
    void on_event(const ssepp::message& m)
    {
        FUZZ_CHECK(!m.type.empty());
        FUZZ_CHECK(valid_utf8(m.type) && valid_utf8(m.data) && valid_utf8(m.last_event_id));
        FUZZ_CHECK(m.type.find_first_of("\r\n") == std::string_view::npos);
        FUZZ_CHECK(m.data.find('\r') == std::string_view::npos);
        FUZZ_CHECK(m.last_event_id.find_first_of(std::string_view("\r\n\0", 3))
                   == std::string_view::npos);
        items.push_back({item::event, std::string(m.type), std::string(m.data),
                         std::string(m.last_event_id)});
    }
    void on_retry(milliseconds r)
    {
        FUZZ_CHECK(r.count() >= 0);
        items.push_back({item::retry, {}, {}, {}, r.count()});
    }
    void on_comment(std::string_view c)
    {
        FUZZ_CHECK(valid_utf8(c));
        FUZZ_CHECK(c.find_first_of("\r\n") == std::string_view::npos);
        items.push_back({item::comment, {}, std::string(c), {}});
    }
};

outcome parse(const std::vector<std::string_view>& chunks, ssepp::parser_limits limits)
{
    outcome o;
    ssepp::parser p(limits);
    for (const auto chunk : chunks) {
        const auto ec = p.feed(chunk, recorder{o.items});
        if (ec && !o.error)
            o.error = ec;
        FUZZ_CHECK(!o.error || ec == o.error); // sticky
    }
    o.last_event_id = p.last_event_id();
    if (p.retry())
        o.retry = p.retry()->count();
    // retry() is the last retry reported.
    std::optional<milliseconds::rep> last_retry;
    for (const auto& i : o.items)
        if (i.kind == item::retry)
            last_retry = i.ms;
    FUZZ_CHECK(o.retry == last_retry);
    return o;
}

ssepp::parser_limits pick_limits(unsigned bits)
{
    switch (bits & 3) {
    case 1: return {.max_line = 16, .max_event = 64};
    case 2: return {.max_line = 64, .max_event = 24};
    case 3: return {.max_line = 200, .max_event = 200};
    default: return {};
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* bytes, std::size_t size)
{
    std::string_view in(reinterpret_cast<const char*>(bytes), size);
    if (in.empty())
        return 0;
    const auto mode = static_cast<unsigned char>(in.front());
    in.remove_prefix(1);
    const unsigned n_splits = mode & 7;
    const bool bytewise = (mode & 8) != 0;
    const auto limits = pick_limits(mode >> 4);

    const auto chunks = split_input(in, n_splits, bytewise);
    const std::string_view stream = in;

    const outcome whole = parse({stream}, limits);
    const outcome split = parse(chunks, limits);
    FUZZ_CHECK(whole == split);

    // Round trip through the formatter.
    std::string wire;
    for (const auto& i : whole.items) {
        ssepp::event e;
        switch (i.kind) {
        case item::event:
            e.id = i.id;
            e.event = i.type;
            e.data = i.data;
            break;
        case item::retry: e.retry = milliseconds(i.ms); break;
        case item::comment: e.comment = i.data; break;
        }
        FUZZ_CHECK(!ssepp::format_to(wire, e));
    }
    // The id last in force, which may have come after the last event.
    FUZZ_CHECK(!ssepp::format_to(wire, ssepp::event{.id = whole.last_event_id}));

    const outcome again = parse({wire}, {});
    FUZZ_CHECK(!again.error);
    FUZZ_CHECK(again.items == whole.items);
    FUZZ_CHECK(again.last_event_id == whole.last_event_id);
    FUZZ_CHECK(again.retry == whole.retry);
    return 0;
}
