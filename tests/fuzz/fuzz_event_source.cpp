// fuzz_event_source: ssepp::event_source driven by a fuzzed transport.
//
// The input picks the options (retry, back-off bounds, jitter, the random numbers, the id to
// resume from, the parser's limits), then a sequence of steps: a response (status and
// Content-Type), a body chunk (whose handler may close() the source or throw on some event),
// the end of a response or a failed attempt (whose delay is the transport's timer step),
// close(). A model beside it says what each step must do:
// - state() and reason() follow the documented transitions (200 with text/event-stream opens,
//   204/other status/other type close for good, a parser limit closes with stream_error,
//   close() closes, on_end() goes back to connecting unless closed; closed is final);
// - feed() on a source that is not open parses nothing; no handler call after close();
// - attempts() counts on_end() since the last open; with no jitter the delay is exactly the
//   documented back-off, and with jitter it lies between that and that times (1 + jitter);
// - last_event_id() never holds CR, LF or NUL, and request_headers() carries it.
#include <ssepp/event_source.hpp>

#include "check.hpp"

#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace {

using std::chrono::milliseconds;
using es_t = ssepp::event_source;
using rep = milliseconds::rep;

constexpr rep rep_max = std::numeric_limits<rep>::max();

struct thrown {};

milliseconds pick_ms(FuzzedDataProvider& in)
{
    switch (in.ConsumeIntegralInRange(0, 3)) {
    case 0: return milliseconds(in.ConsumeIntegralInRange<rep>(0, 100));
    case 1: return milliseconds(in.ConsumeIntegralInRange<rep>(0, 100'000));
    case 2: return milliseconds(rep_max - in.ConsumeIntegralInRange<rep>(0, 2));
    default: return milliseconds(in.ConsumeIntegral<rep>()); // negative too
    }
}

double pick_double(FuzzedDataProvider& in)
{
    switch (in.ConsumeIntegralInRange(0, 7)) {
    case 0: return 0;
    case 1: return 0.25;
    case 2: return 1;
    case 3: return std::nextafter(1.0, 0.0);
    case 4: return -0.5;
    case 5: return std::numeric_limits<double>::quiet_NaN();
    case 6: return in.ConsumeProbability<double>();
    default: return in.ConsumeFloatingPoint<double>();
    }
}

// Case-insensitive "text/event-stream" after trimming, parameters ignored: the reference for
// is_event_stream(), written independently of it.
bool is_event_stream_ref(std::string_view v)
{
    const auto ws = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; };
    if (const auto semi = v.find(';'); semi != std::string_view::npos)
        v = v.substr(0, semi);
    std::size_t b = 0, e = v.size();
    while (b < e && ws(v[b]))
        ++b;
    while (e > b && ws(v[e - 1]))
        --e;
    v = v.substr(b, e - b);
    constexpr std::string_view want = "text/event-stream";
    if (v.size() != want.size())
        return false;
    for (std::size_t i = 0; i < v.size(); ++i) {
        char c = v[i];
        if (c >= 'A' && c <= 'Z')
            c = static_cast<char>(c - 'A' + 'a');
        if (c != want[i])
            return false;
    }
    return true;
}

// The documented back-off before jitter, in wide arithmetic that cannot overflow.
rep expected_base(rep retry, unsigned attempts, const ssepp::event_source_options& o)
{
    using wide = __int128;
    const wide r = std::max<rep>(0, retry);
    if (attempts == 0)
        return static_cast<rep>(r);
    const wide cap = wide{1} << 100;
    wide b = std::max<wide>(2 * r, o.min_backoff.count());
    for (unsigned i = 1; i < attempts && b < cap; ++i)
        b *= 2;
    const wide base = std::max<wide>(r, std::min<wide>(b, o.max_backoff.count()));
    return static_cast<rep>(std::min<wide>(base, rep_max));
}

// The most a delay of `base` may become with `fraction` of it added, allowing for the rounding
// of the double arithmetic (relative 2^-52 per operation).
long double at_most(rep base, double fraction)
{
    return static_cast<long double>(base) * (1 + static_cast<long double>(fraction)) * (1 + 1e-12L) + 1;
}

struct model {
    es_t::ready_state state = es_t::ready_state::connecting;
    es_t::stop_reason reason = es_t::stop_reason::none;
    unsigned attempts = 0;
};

void check_consistent(const es_t& es, const model& m)
{
    FUZZ_CHECK(es.state() == m.state);
    FUZZ_CHECK(es.reason() == m.reason);
    FUZZ_CHECK((es.state() == es_t::ready_state::closed) == (es.reason() != es_t::stop_reason::none));
    FUZZ_CHECK(!es.stream_error() || es.reason() == es_t::stop_reason::stream_error);
    FUZZ_CHECK(es.attempts() == m.attempts);
    const auto id = es.last_event_id();
    FUZZ_CHECK(id.find_first_of(std::string_view("\r\n\0", 3)) == std::string_view::npos);
    const auto headers = es.request_headers();
    FUZZ_CHECK(headers.size() == (id.empty() ? 2u : 3u));
    if (!id.empty())
        FUZZ_CHECK(headers.back().first == "Last-Event-ID" && headers.back().second == id);
}

struct handler {
    es_t& es;
    std::size_t calls = 0;
    std::size_t close_at;
    std::size_t throw_at;
    std::optional<rep> last_retry;

    void step()
    {
        FUZZ_CHECK(es.state() == es_t::ready_state::open);
        ++calls;
        if (calls == close_at)
            es.close();
        else if (calls == throw_at)
            throw thrown{};
    }
    void on_event(const ssepp::message& m)
    {
        FUZZ_CHECK(!m.type.empty());
        FUZZ_CHECK(m.last_event_id == es.last_event_id());
        step();
    }
    void on_retry(milliseconds r)
    {
        last_retry = r.count();
        FUZZ_CHECK(es.retry() == r);
        step();
    }
    void on_comment(std::string_view) { step(); }
};

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* bytes, std::size_t size)
{
    FuzzedDataProvider in(bytes, size);

    ssepp::event_source_options o;
    o.retry = pick_ms(in);
    o.max_backoff = pick_ms(in);
    o.min_backoff = pick_ms(in);
    o.jitter = pick_double(in);
    // The random numbers: from the input (any double, in range or not) or the built-in generator.
    std::vector<double> randoms;
    if (in.ConsumeBool()) {
        for (int n = in.ConsumeIntegralInRange(1, 4); n > 0; --n)
            randoms.push_back(pick_double(in));
    }
    std::size_t next_random = 0;
    double last_random = 0;
    if (!randoms.empty()) {
        o.random = [&] { return last_random = randoms[next_random++ % randoms.size()]; };
    } else {
        o.seed = in.ConsumeIntegral<std::uint64_t>();
    }
    if (in.ConsumeBool())
        o.limits = {.max_line = in.ConsumeIntegralInRange<std::size_t>(0, 64),
                    .max_event = in.ConsumeIntegralInRange<std::size_t>(0, 128)};
    o.last_event_id = in.ConsumeRandomLengthString(24);
    const auto options = o; // o is moved into the source

    std::optional<es_t> source;
    try {
        source.emplace(std::move(o));
    } catch (const std::system_error& e) {
        const auto& id = options.last_event_id;
        const bool bad_chars = id.find_first_of(std::string_view("\r\n\0", 3)) != std::string::npos;
        FUZZ_CHECK(e.code() == (bad_chars ? ssepp::errc::invalid_id : ssepp::errc::line_too_long));
        FUZZ_CHECK(bad_chars || id.size() + 4 > options.limits.max_line);
        return 0;
    }
    es_t& es = *source;
    // The id is read as the stream's own `id:` would be: invalid UTF-8 becomes U+FFFD.
    std::string repaired;
    ssepp::detail::append_utf8(repaired, options.last_event_id);
    FUZZ_CHECK(es.last_event_id() == repaired);
    model m;
    check_consistent(es, m);
    std::optional<rep> prev_delay; // since the last open, for the monotonic back-off

    static constexpr int statuses[] = {200, 200, 200, 204, 404, 500, 301, 0, -1};
    static constexpr std::string_view types[] = {
        "text/event-stream", "Text/Event-Stream; charset=utf-8", " \ttext/event-stream ;x=y",
        "text/event-stream-x", "text/plain", "", "text/event-stream\r\n"};

    while (in.remaining_bytes() > 0) {
        switch (in.ConsumeIntegralInRange(0, 7)) {
        case 0: { // response headers
            const int status = in.ConsumeBool() ? in.PickValueInArray(statuses) : in.ConsumeIntegral<int>();
            const std::string type = in.ConsumeBool() ? std::string(in.PickValueInArray(types))
                                                      : in.ConsumeRandomLengthString(24);
            const auto a = es.on_response(status, type);
            if (m.state == es_t::ready_state::closed) {
                FUZZ_CHECK(!a.open && a.reason == m.reason);
            } else if (status == 204) {
                m.state = es_t::ready_state::closed;
                m.reason = es_t::stop_reason::no_content;
            } else if (status != 200) {
                m.state = es_t::ready_state::closed;
                m.reason = es_t::stop_reason::bad_status;
            } else if (!is_event_stream_ref(type)) {
                m.state = es_t::ready_state::closed;
                m.reason = es_t::stop_reason::bad_content_type;
            } else {
                m.state = es_t::ready_state::open;
                m.attempts = 0;
                prev_delay.reset();
            }
            FUZZ_CHECK(ssepp::is_event_stream(type) == is_event_stream_ref(type));
            FUZZ_CHECK(a.open == (m.state == es_t::ready_state::open));
            FUZZ_CHECK(a.reason == m.reason);
            break;
        }
        case 1:
        case 2:
        case 3: { // a body chunk
            handler h{es, 0, in.ConsumeIntegralInRange<std::size_t>(0, 8),
                      in.ConsumeIntegralInRange<std::size_t>(0, 8), std::nullopt};
            const std::string chunk = in.ConsumeRandomLengthString(256);
            const bool was_open = m.state == es_t::ready_state::open;
            std::error_code ec;
            bool threw = false;
            try {
                ec = es.feed(chunk, h);
            } catch (const thrown&) {
                threw = true;
                FUZZ_CHECK(h.calls == h.throw_at);
            }
            if (!was_open) {
                FUZZ_CHECK(ec == ssepp::errc::closed && h.calls == 0 && !threw);
            } else if (h.close_at != 0 && h.calls >= h.close_at) {
                FUZZ_CHECK(h.calls == h.close_at); // nothing after close()
                FUZZ_CHECK(ec == ssepp::errc::closed && !threw);
                m.state = es_t::ready_state::closed;
                m.reason = es_t::stop_reason::closed;
            } else if (ec) {
                FUZZ_CHECK(!threw);
                FUZZ_CHECK(ec == ssepp::errc::line_too_long || ec == ssepp::errc::event_too_large);
                FUZZ_CHECK(es.stream_error() == ec);
                m.state = es_t::ready_state::closed;
                m.reason = es_t::stop_reason::stream_error;
            }
            // The retry in force is the last one reported, also after a close() from the
            // handler (the rest of that chunk does not count).
            if (h.last_retry)
                FUZZ_CHECK(es.retry().count() == *h.last_retry);
            break;
        }
        case 4:
        case 5: { // the response ends or the attempt fails; the delay is the next timer step
            const std::error_code transport =
                in.ConsumeBool() ? std::make_error_code(std::errc::connection_reset) : std::error_code();
            const rep retry = es.retry().count();
            const unsigned attempts = m.attempts;
            const std::size_t randoms_before = next_random;
            const auto d = es.on_end(transport);
            FUZZ_CHECK(es.last_transport_error() == transport);
            if (m.state == es_t::ready_state::closed) {
                FUZZ_CHECK(!d.reconnect && d.delay.count() == 0);
                break;
            }
            m.state = es_t::ready_state::connecting;
            if (m.attempts != std::numeric_limits<unsigned>::max())
                ++m.attempts;
            FUZZ_CHECK(d.reconnect);
            const rep base = expected_base(retry, attempts, options);
            const rep delay = d.delay.count();
            FUZZ_CHECK(delay >= base); // jitter only adds
            const double j = options.jitter;
            if (!(j > 0) || base == 0) {
                FUZZ_CHECK(delay == base);
            } else if (!randoms.empty()) {
                FUZZ_CHECK(next_random == randoms_before + 1);
                const double r = last_random;
                if (!(r >= 0 && r < 1))
                    FUZZ_CHECK(delay == base); // a bad random number counts as 0
                else
                    FUZZ_CHECK(static_cast<long double>(delay) <= at_most(base, j * r));
            } else {
                FUZZ_CHECK(static_cast<long double>(delay) <= at_most(base, j));
            }
            if (j == 0 && prev_delay)
                FUZZ_CHECK(delay >= *prev_delay); // back-off never shrinks between opens
            prev_delay = delay;
            break;
        }
        case 6: // EventSource.close()
            es.close();
            if (m.state != es_t::ready_state::closed) {
                m.state = es_t::ready_state::closed;
                m.reason = es_t::stop_reason::closed;
            }
            break;
        default: // retry() in force
            FUZZ_CHECK(es.retry() >= milliseconds(0) || options.retry < milliseconds(0));
            break;
        }
        check_consistent(es, m);
    }
    return 0;
}
