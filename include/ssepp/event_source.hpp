// ssepp/event_source.hpp
// The client side of EventSource as a transport-agnostic state machine: fed a response's status,
// content type and body chunks, it decides when to open, fail or reconnect and with what delay.
// Pure like the parser: no sockets, no clock (delays are returned, never waited for).
// SPDX-License-Identifier: BSL-1.0
#ifndef SSEPP_EVENT_SOURCE_HPP
#define SSEPP_EVENT_SOURCE_HPP

#include <ssepp/error.hpp>
#include <ssepp/parser.hpp>
#include <ssepp/request.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

namespace ssepp {

/// Whether a Content-Type field value names `text/event-stream`, as the WHATWG MIME type
/// parser reads it: case-insensitive, surrounding whitespace and parameters (`; charset=utf-8`)
/// allowed; nothing else (an empty value, `text/plain`, `text/event-stream-x`) is.
[[nodiscard]] inline bool is_event_stream(std::string_view content_type) noexcept
{
    const auto http_ws = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; };
    while (!content_type.empty() && http_ws(content_type.front()))
        content_type.remove_prefix(1);
    content_type = content_type.substr(0, content_type.find(';'));
    while (!content_type.empty() && http_ws(content_type.back()))
        content_type.remove_suffix(1);
    return detail::iequals(content_type, "text/event-stream");
}

/// How an event_source starts and when it reconnects.
struct event_source_options {
    /// The reconnection time until the stream sends `retry:` (browsers use about 3 s).
    std::chrono::milliseconds retry{3000};
    /// The back-off after consecutive failed attempts doubles the reconnection time up to this;
    /// a `retry:` larger than it still wins, as the server asked for at least that long.
    std::chrono::milliseconds max_backoff{30000};
    /// The least delay after a failed attempt, doubled after each further one, so that a
    /// `retry: 0` (or tiny) does not make a client hammer a server that is down. The first
    /// reconnection after an open stream still waits just the reconnection time.
    std::chrono::milliseconds min_backoff{1000};
    /// Each delay gets up to this fraction of itself added at random (0 for none), so that the
    /// clients of a restarted server do not all come back at the same instant. Never subtracted:
    /// EventSource waits at least the reconnection time.
    double jitter = 0.25;
    /// Uniform numbers in [0, 1) for the jitter (a value outside counts as 0). Empty: a built-in
    /// splitmix64 generator seeded by `seed`.
    std::function<double()> random{};
    /// The seed of the built-in generator; empty: one from std::random_device.
    std::optional<std::uint64_t> seed{};
    /// The id to resume from (sent as Last-Event-ID from the first request on, and the
    /// last_event_id of events until the stream sets one); it must not hold CR, LF or NUL.
    std::string last_event_id{};
    /// The parser's buffering limits.
    parser_limits limits{};
};

/// What to do once a response has ended, from event_source::on_end().
struct reconnect_decision {
    /// True: send a new request (with request_headers()) after `delay`. False: stop.
    bool reconnect;
    /// How long to wait before reconnecting; zero when not reconnecting.
    std::chrono::milliseconds delay;

    friend bool operator==(const reconnect_decision&, const reconnect_decision&) = default;
};

/// EventSource's connection logic (WHATWG HTML, "Server-sent events"), minus the transport.
///
/// The transport sends a GET with request_headers(), then reports what comes back:
/// - on_response() with the status and Content-Type of the final response (after redirects):
///   200 with `text/event-stream` opens; 204, any other status or content type fails for good;
/// - feed() with each body chunk, which delivers the events;
/// - on_end() when the response ends or the request fails for any network reason (before or
///   after the response started), which says whether and after how long to send the next one.
///
/// Reconnection: the first delay after an open stream ends (or after the very first attempt
/// fails) is the reconnection time (`retry:`, else the options' default); each further attempt
/// that fails before opening doubles it (starting from at least `min_backoff`), up to
/// `max_backoff`; jitter is then added. A response that opens resets the back-off. The last
/// event id and reconnection time persist across reconnections, and the id is sent as
/// `Last-Event-ID`. What the transport does not report (a stalled stream, say) is its business:
/// EventSource itself has no read timeout.
///
/// @par Example (the transport loop, in outline)
/// @code
/// ssepp::event_source es;
/// for (;;) {
///     // send a GET with es.request_headers(); when the headers are in:
///     if (auto a = es.on_response(status, content_type); !a.open)
///         return report(a.reason);
///     // for each body chunk:
///     es.feed(chunk, [](const ssepp::message& m) { fmt::print("{}\n", m.data); });
///     // when the body ends or the connection breaks:
///     auto d = es.on_end(ec);
///     if (!d.reconnect)
///         break;
///     sleep_for(d.delay);
/// }
/// @endcode
class event_source {
public:
    /// EventSource's `readyState`, with the same values.
    enum class ready_state { connecting = 0, open = 1, closed = 2 };

    /// Why the source stopped; `none` while it has not. (Named apart from ssepp::close_reason,
    /// which says why a server-side stream ended.)
    enum class stop_reason {
        none,
        /// close() was called.
        closed,
        /// The server answered 204 No Content: its way of telling a client to stop.
        no_content,
        /// The server answered a status other than 200 (and 204).
        bad_status,
        /// The response's content type is not `text/event-stream`.
        bad_content_type,
        /// The parser hit one of its limits (see event_source::feed()).
        stream_error,
    };

    /// A short English description of `r`, for messages (found by ADL: `describe(es.reason())`).
    [[nodiscard]] friend constexpr std::string_view describe(stop_reason r) noexcept
    {
        switch (r) {
        case stop_reason::none: return "not closed";
        case stop_reason::closed: return "closed by the client";
        case stop_reason::no_content: return "the server answered 204 No Content";
        case stop_reason::bad_status: return "the response status is not 200";
        case stop_reason::bad_content_type:
            return "the response content type is not text/event-stream";
        case stop_reason::stream_error: return "the event stream broke the parser's limits";
        }
        return "unknown";
    }

    /// What to do with a response, from on_response().
    struct response_action {
        /// True: the stream is open, feed it the body. False: the connection failed, abort the
        /// response and do not reconnect.
        bool open;
        /// Why it failed; `stop_reason::none` when open.
        stop_reason reason;
    };

    /// A source in the connecting state, about to send its first request.
    /// @throws std::system_error with errc::invalid_id when `options.last_event_id` holds CR,
    /// LF or NUL, errc::line_too_long when it is longer than the parser's line limit.
    explicit event_source(event_source_options options = {})
        : options_(std::move(options)), parser_(options_.limits)
    {
        if (!options_.random)
            rng_ = options_.seed ? *options_.seed : seed_from_device();
        if (!options_.last_event_id.empty()) {
            if (auto ec = seed_last_event_id(options_.last_event_id))
                throw std::system_error(ec, "ssepp::event_source: last_event_id");
        }
    }

    /// Reports the final response's status and Content-Type field value (empty when absent).
    ///
    /// 200 with a `text/event-stream` type (see is_event_stream()) opens the stream and resets the
    /// back-off. Anything else closes it for good ("fail the connection"): 204 with
    /// stop_reason::no_content, which servers use to say "stop", another status with
    /// stop_reason::bad_status, another type with stop_reason::bad_content_type.
    /// On a closed source, returns `{false, reason()}` and changes nothing.
    response_action on_response(int status, std::string_view content_type)
    {
        if (state_ == ready_state::closed)
            return {false, reason_};
        if (state_ == ready_state::open)
            parser_.finish(); // a response that was never ended: its tail cannot carry over
        if (status == 204)
            return fail(stop_reason::no_content);
        if (status != 200)
            return fail(stop_reason::bad_status);
        if (!is_event_stream(content_type))
            return fail(stop_reason::bad_content_type);
        state_ = ready_state::open;
        attempts_ = 0;
        return {true, stop_reason::none};
    }

    /// Feeds a chunk of the open response's body; the handler is called for each event, as by
    /// parser::feed() (a function of `const message&`, or an object with `on_event` and
    /// optionally `on_retry` and `on_comment`).
    ///
    /// The handler may call close(): no event is delivered after that, the rest of the chunk is
    /// dropped. It must not call feed(), on_response() or on_end(). If it throws, the exception
    /// propagates and the rest of the chunk is dropped; the source stays usable.
    /// @returns `errc::closed` when the source is not open (nothing is parsed) or was closed
    /// by the handler (abort the response either way); the parser's
    /// `errc::line_too_long` or `errc::event_too_large`, which close the source for good
    /// (stop_reason::stream_error; abort the response). Not a reconnection: the server would
    /// most likely replay the same oversized event from the same Last-Event-ID, forever.
    template <class Handler>
    std::error_code feed(std::string_view chunk, Handler&& h)
    {
        static_assert(detail::event_object<Handler> || detail::event_function<Handler>,
                      "ssepp::event_source::feed: the handler needs operator()(const "
                      "ssepp::message&) or on_event(const ssepp::message&)");
        if (state_ != ready_state::open)
            return errc::closed;
        guarded<std::remove_reference_t<Handler>> g{*this, h};
        const auto ec = parser_.feed(chunk, g);
        if (state_ == ready_state::closed)
            return errc::closed;
        if (ec) {
            fail(stop_reason::stream_error);
            stream_error_ = ec;
        }
        return ec;
    }

    /// Reports the end of a response (its body ended), or of an attempt (the connection failed
    /// or broke, with `transport_error`, before or after the response opened).
    ///
    /// Ends the current stream (an unterminated last event is discarded, as EventSource does)
    /// and, unless the source is closed, goes back to connecting and says to reconnect after the
    /// reconnection time with back-off and jitter. A network error before the stream opened
    /// reconnects too (counting as a failed attempt), as EventSource does; a transport that
    /// knows retrying is futile (a malformed URL, an unsupported scheme) should call close().
    reconnect_decision on_end(std::error_code transport_error = {})
    {
        last_transport_error_ = transport_error;
        if (state_ == ready_state::closed)
            return {false, std::chrono::milliseconds(0)};
        parser_.finish();
        state_ = ready_state::connecting;
        return {true, next_delay()};
    }

    /// Closes the source for good (EventSource's close()); on_end() will say not to reconnect.
    /// Safe to call from a feed() handler. Keeps the first reason when already closed.
    void close() noexcept
    {
        if (state_ != ready_state::closed)
            fail(stop_reason::closed);
    }

    /// The request header fields to send: `Accept: text/event-stream`, `Cache-Control:
    /// no-cache`, and `Last-Event-ID` when the last event id is not empty.
    [[nodiscard]] std::vector<std::pair<std::string, std::string>> request_headers() const
    {
        std::vector<std::pair<std::string, std::string>> h{{"Accept", "text/event-stream"},
                                                           {"Cache-Control", "no-cache"}};
        if (!last_event_id().empty())
            h.emplace_back("Last-Event-ID", std::string(last_event_id()));
        return h;
    }

    /// The last event id (of the last dispatched event, or the one resumed from): what
    /// `Last-Event-ID` carries. Never holds CR, LF or NUL.
    [[nodiscard]] std::string_view last_event_id() const noexcept
    {
        return frozen_ ? std::string_view(frozen_->last_event_id) : parser_.last_event_id();
    }

    /// The reconnection time in force: the last `retry:`, else the options' default.
    [[nodiscard]] std::chrono::milliseconds retry() const noexcept
    {
        return (frozen_ ? frozen_->retry : parser_.retry()).value_or(options_.retry);
    }

    /// Where the source is: connecting (before on_response() and after on_end()), open, closed.
    [[nodiscard]] ready_state state() const noexcept { return state_; }

    /// Why the source is closed; stop_reason::none while it is not.
    [[nodiscard]] stop_reason reason() const noexcept { return reason_; }

    /// The parser's error when the reason is stop_reason::stream_error.
    [[nodiscard]] std::error_code stream_error() const noexcept { return stream_error_; }

    /// The error last passed to on_end() (empty for a clean end), for diagnostics.
    [[nodiscard]] std::error_code last_transport_error() const noexcept
    {
        return last_transport_error_;
    }

    /// Reconnections on_end() has asked for since the stream last opened (or since the start):
    /// the attempts that have failed, plus the one under way.
    [[nodiscard]] unsigned attempts() const noexcept { return attempts_; }

private:
    // Forwards to the user's handler until close() is called from inside it.
    template <class H>
    struct guarded {
        event_source& self;
        H& h;

        void on_event(const message& m)
        {
            if (self.state_ != ready_state::open)
                return;
            if constexpr (detail::event_object<H>)
                h.on_event(m);
            else
                std::invoke(h, m);
            freeze_if_closed();
        }
        void on_retry(std::chrono::milliseconds r)
            requires requires(H& x, std::chrono::milliseconds v) { x.on_retry(v); }
        {
            if (self.state_ == ready_state::open) {
                h.on_retry(r);
                freeze_if_closed();
            }
        }
        void on_comment(std::string_view c)
            requires requires(H& x, std::string_view v) { x.on_comment(v); }
        {
            if (self.state_ == ready_state::open) {
                h.on_comment(c);
                freeze_if_closed();
            }
        }
        // The handler closed the source: the parser still reads the rest of the chunk, whose
        // ids and retry must not count (a source resumed from them would skip events).
        void freeze_if_closed()
        {
            if (self.state_ == ready_state::closed && !self.frozen_)
                self.frozen_ = frozen{std::string(self.parser_.last_event_id()), self.parser_.retry()};
        }
    };

    struct frozen {
        std::string last_event_id;
        std::optional<std::chrono::milliseconds> retry;
    };

    response_action fail(stop_reason r) noexcept
    {
        state_ = ready_state::closed;
        reason_ = r;
        return {false, r};
    }

    // The parser has no setter for its last event id: an `id:` line followed by a blank line
    // sets it exactly as the stream would (dispatching nothing), and finish() re-arms the BOM
    // check so the first response is parsed as a fresh stream.
    std::error_code seed_last_event_id(std::string_view id)
    {
        if (id.find_first_of(std::string_view("\r\n\0", 3)) != std::string_view::npos)
            return errc::invalid_id;
        std::string line = "id: ";
        line.append(id);
        line.append("\n\n");
        const auto ec = parser_.feed(line, [](const message&) {});
        parser_.finish();
        return ec;
    }

    // Attempt n (0 after an open stream or at the start) waits retry for n = 0, then
    // max(2 retry, min_backoff) doubled n - 1 times, capped at max(max_backoff, retry); plus
    // jitter. Saturating: `retry:` itself saturates at milliseconds::max().
    std::chrono::milliseconds next_delay()
    {
        using ms = std::chrono::milliseconds;
        constexpr auto max = ms::max().count();
        const auto retry = std::max<ms::rep>(0, this->retry().count()); // options may be negative
        auto base = retry;
        if (attempts_ > 0) {
            auto b = std::max(retry > max / 2 ? max : retry * 2, options_.min_backoff.count());
            for (unsigned i = 1; i < attempts_ && b < options_.max_backoff.count(); ++i)
                b = b > max / 2 ? max : b * 2;
            base = std::max(retry, std::min(b, options_.max_backoff.count()));
        }
        if (attempts_ != std::numeric_limits<unsigned>::max())
            ++attempts_;
        if (!(options_.jitter > 0) || base <= 0)
            return ms(base);
        double r = options_.random ? options_.random() : next_random();
        if (!(r >= 0 && r < 1))
            r = 0; // a bad source must not shorten the delay
        if (r == 0)
            return ms(base);  // no jitter drawn: base * an infinite jitter * 0 would be NaN
        const double extra = std::floor(static_cast<double>(base) * options_.jitter * r);
        if (!(extra < static_cast<double>(max - base)))
            return ms(max);
        return ms(base + static_cast<ms::rep>(extra));
    }

    // splitmix64: tiny, fully specified (so a seed gives the same delays everywhere, unlike the
    // standard distributions), and good enough to spread reconnections.
    double next_random() noexcept
    {
        std::uint64_t z = (rng_ += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        return static_cast<double>(z >> 11) * 0x1.0p-53;
    }

    static std::uint64_t seed_from_device()
    {
        std::random_device rd;
        return (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
    }

    event_source_options options_;
    parser parser_;
    std::uint64_t rng_ = 0;
    ready_state state_ = ready_state::connecting;
    stop_reason reason_ = stop_reason::none;
    std::error_code stream_error_;
    std::optional<frozen> frozen_;  // ids and retry as they were when a handler closed the source
    std::error_code last_transport_error_;
    unsigned attempts_ = 0;
};

} // namespace ssepp

#endif
