// ssepp/parser.hpp
// The incremental text/event-stream parser: bytes in, events out, exactly as a browser's
// EventSource interprets them (WHATWG HTML, "Interpreting an event stream").
// SPDX-License-Identifier: BSL-1.0
#ifndef SSEPP_PARSER_HPP
#define SSEPP_PARSER_HPP

#include <ssepp/detail/lines.hpp>
#include <ssepp/detail/utf8.hpp>
#include <ssepp/error.hpp>

#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>

namespace ssepp {

/// A dispatched event as EventSource's MessageEvent sees it. The views are valid only during
/// the callback that receives it; all three are valid UTF-8.
struct message {
    /// The event type; `"message"` when the stream set none (or set it empty).
    std::string_view type;
    /// The `data:` lines joined by LF.
    std::string_view data;
    /// The last event id in force when the event was dispatched (possibly from an earlier event).
    std::string_view last_event_id;
};

/// Bounds on what one parser buffers, so a hostile or broken stream cannot exhaust memory.
struct parser_limits {
    /// Bytes in one line, its line end not counted.
    std::size_t max_line = 1 << 20;
    /// Bytes of data (with the LF after each line) plus type buffered for one event.
    std::size_t max_event = 16 << 20;
};

namespace detail {

template <class H>
concept event_object = requires(H& h, const message& m) { h.on_event(m); };

template <class H>
concept event_function = std::invocable<H&, const message&>;

} // namespace detail

/// Turns the bytes of one or more successive event streams into events.
///
/// Feed it chunks as they arrive, of any size and split anywhere (even inside a UTF-8 sequence,
/// a BOM or a CRLF): the events, comments and retries reported are the same as for the whole
/// stream at once. Call finish() when a response ends and reuse the parser for the reconnection.
///
/// A handler must not call back into the parser that is calling it. If it throws, the exception
/// propagates out of feed() and the rest of that chunk is dropped; the parser stays usable.
///
/// @par Example
/// @code
/// ssepp::parser p;
/// auto ec = p.feed(chunk, [](const ssepp::message& m) {
///     fmt::print("{}: {}\n", m.type, m.data);
/// });
/// @endcode
class parser {
public:
    /// A parser with the given buffering limits.
    explicit parser(parser_limits limits = {}) : limits_(limits) {}

    /// Feeds a chunk of any size; calls the handler for each dispatched event.
    ///
    /// The handler is either invocable as `h(const message&)`, or an object with
    /// `on_event(const message&)` (preferred when it has both) and, optionally,
    /// `on_retry(std::chrono::milliseconds)` (each valid `retry:` field) and
    /// `on_comment(std::string_view)` (each comment line, after its `:` and one optional space).
    /// @returns `errc::line_too_long` when a line passes `max_line`, `errc::event_too_large` when
    /// an event's data and type pass `max_event`; the error is sticky: every later feed() returns
    /// it at once, until reset().
    template <class Handler>
    std::error_code feed(std::string_view chunk, Handler&& h);

    /// Ends this stream (response): discards an unterminated line and event, and re-arms the BOM
    /// check for the next stream. Keeps last_event_id() and retry(), as EventSource does across
    /// reconnections; an `id:` of the discarded event is discarded with it.
    void finish() noexcept
    {
        partial_.clear();
        data_.clear();
        type_.clear();
        id_pending_ = false; // an id: of the discarded event goes with it
        bom_ = 0;
        skip_lf_ = false;
    }

    /// The id of the last dispatched event (what to send as `Last-Event-ID` when reconnecting).
    std::string_view last_event_id() const noexcept { return last_id_; }

    /// The reconnection time from the last valid `retry:` field, if any.
    std::optional<std::chrono::milliseconds> retry() const noexcept { return retry_; }

    /// Back to a brand-new parser: clears everything, including the last id, retry and error.
    void reset() noexcept
    {
        finish();
        id_.clear();
        last_id_.clear();
        retry_.reset();
        error_.clear();
    }

private:
    // bom_ counts the BOM bytes matched at the start of the stream; bom_done once past it.
    static constexpr unsigned bom_done = 4;
    static constexpr std::string_view bom_bytes{"\xEF\xBB\xBF", 3};

    template <class Handler>
    void process_line(std::string_view line, Handler& h);
    template <class Handler>
    void process_field(std::string_view name, std::string_view value, Handler& h);
    template <class Handler>
    void dispatch(Handler& h);

    bool fail(errc e) noexcept
    {
        error_ = e;
        return false;
    }
    bool event_fits() noexcept
    {
        return data_.size() + type_.size() <= limits_.max_event || fail(errc::event_too_large);
    }

    parser_limits limits_;
    std::string partial_; // the unterminated line carried over from the previous chunk
    std::string data_;    // data buffer: each data line plus LF
    std::string type_;    // event type buffer
    std::string id_;      // last event ID buffer, while id_pending_; else last_id_ is the buffer
    std::string last_id_; // the id as of the last dispatch
    std::string scratch_; // repaired copies of invalid UTF-8 that need no buffer of their own
    std::optional<std::chrono::milliseconds> retry_;
    std::error_code error_;
    unsigned bom_ = 0;
    bool skip_lf_ = false;    // the previous chunk ended with CR: a leading LF completes a CRLF
    bool id_pending_ = false; // id_ was set since the last dispatch
};

template <class Handler>
std::error_code parser::feed(std::string_view chunk, Handler&& h)
{
    static_assert(detail::event_object<Handler> || detail::event_function<Handler>,
                  "ssepp::parser::feed: the handler needs operator()(const ssepp::message&) or "
                  "on_event(const ssepp::message&)");
    if (error_)
        return error_;
    const char* p = chunk.data();
    const char* const end = p + chunk.size();
    if (p == end)
        return {};

    if (bom_ != bom_done) {
        // Match the BOM byte by byte, as it may arrive split across chunks.
        while (bom_ < bom_bytes.size() && p != end && *p == bom_bytes[bom_]) {
            ++bom_;
            ++p;
        }
        if (bom_ < bom_bytes.size()) {
            if (p == end)
                return {};
            // Not a BOM after all: the bytes held back start the first line.
            partial_.assign(bom_bytes.data(), bom_);
        }
        bom_ = bom_done;
        if (p == end)
            return {};
    }
    if (skip_lf_) {
        skip_lf_ = false;
        if (*p == '\n' && ++p == end)
            return {};
    }

    while (p != end) {
        const char* const eol = detail::find_line_end(p, end);
        const auto n = static_cast<std::size_t>(eol - p);
        if (eol == end) {
            // An unterminated line: keep it for the next chunk, within the limit.
            if (partial_.size() + n > limits_.max_line)
                return error_ = errc::line_too_long;
            partial_.append(p, n);
            break;
        }
        const char* next = eol + 1;
        if (*eol == '\r') {
            if (next == end)
                skip_lf_ = true;
            else if (*next == '\n')
                ++next;
        }
        if (partial_.empty()) {
            // The usual case: the whole line is in the chunk and is parsed in place.
            if (n > limits_.max_line)
                return error_ = errc::line_too_long;
            process_line(std::string_view(p, n), h);
        } else {
            if (partial_.size() + n > limits_.max_line)
                return error_ = errc::line_too_long;
            partial_.append(p, n);
            // Cleared even when the handler throws, so the next chunk starts a fresh line.
            struct clear_on_exit {
                std::string& s;
                ~clear_on_exit() { s.clear(); }
            } guard{partial_};
            process_line(partial_, h);
        }
        if (error_)
            return error_;
        p = next;
    }
    return {};
}

template <class Handler>
void parser::process_line(std::string_view line, Handler& h)
{
    if (line.empty()) {
        dispatch(h);
        return;
    }
    if (line.front() == ':') {
        if constexpr (requires(std::string_view s) { h.on_comment(s); }) {
            line.remove_prefix(1);
            if (!line.empty() && line.front() == ' ')
                line.remove_prefix(1);
            h.on_comment(detail::repair_utf8(line, scratch_));
        }
        return;
    }
    const auto* colon = static_cast<const char*>(std::memchr(line.data(), ':', line.size()));
    if (!colon) {
        process_field(line, {}, h);
        return;
    }
    const auto name_size = static_cast<std::size_t>(colon - line.data());
    std::string_view value = line.substr(name_size + 1);
    if (!value.empty() && value.front() == ' ')
        value.remove_prefix(1);
    process_field(line.substr(0, name_size), value, h);
}

template <class Handler>
void parser::process_field(std::string_view name, std::string_view value, Handler& h)
{
    // A name with invalid UTF-8 decodes to one with U+FFFD, never a known name, so only
    // values need repairing.
    switch (name.size()) {
    case 4:
        if (name == "data") {
            // Checked before appending too, so a huge line never grows data_ past the limit
            // (repair can still triple a line, bounded by max_line).
            if (data_.size() + type_.size() + value.size() + 1 > limits_.max_event) {
                fail(errc::event_too_large);
                return;
            }
            detail::append_utf8(data_, value);
            data_.push_back('\n');
            event_fits();
        }
        return;
    case 5:
        if (name == "event") {
            type_.clear();
            detail::append_utf8(type_, value);
            event_fits();
        } else if (name == "retry") {
            if (value.empty())
                return;
            // Saturates rather than wraps: an absurd retry still means "wait long".
            constexpr auto max = std::chrono::milliseconds::max().count();
            std::chrono::milliseconds::rep ms = 0;
            for (const char c : value) {
                if (c < '0' || c > '9')
                    return;
                const int digit = c - '0';
                ms = ms > (max - digit) / 10 ? max : ms * 10 + digit;
            }
            retry_ = std::chrono::milliseconds(ms);
            if constexpr (requires(std::chrono::milliseconds r) { h.on_retry(r); })
                h.on_retry(*retry_);
        }
        return;
    case 2:
        if (name == "id" && value.find('\0') == std::string_view::npos) {
            id_.clear();
            detail::append_utf8(id_, value);
            id_pending_ = true;
        }
        return;
    default:
        return;
    }
}

template <class Handler>
void parser::dispatch(Handler& h)
{
    if (id_pending_) {
        last_id_.swap(id_); // id_ is dead until the next id: field
        id_pending_ = false;
    }
    if (data_.empty()) {
        type_.clear();
        return;
    }
    // Reset even when the handler throws: the event has been delivered either way.
    struct clear_on_exit {
        parser& self;
        ~clear_on_exit()
        {
            self.data_.clear();
            self.type_.clear();
        }
    } guard{*this};
    const message m{
        type_.empty() ? std::string_view("message") : std::string_view(type_),
        std::string_view(data_.data(), data_.size() - 1), // less the LF after the last line
        last_id_,
    };
    if constexpr (detail::event_object<Handler>)
        h.on_event(m);
    else
        h(m);
}

} // namespace ssepp

#endif
