// ssepp/format.hpp
// The formatter: turns an ssepp::event into the exact text/event-stream bytes, validating
// first so that no payload can end a frame early or inject a field.
// SPDX-License-Identifier: BSL-1.0
#ifndef SSEPP_FORMAT_HPP
#define SSEPP_FORMAT_HPP

#include <ssepp/detail/lines.hpp>
#include <ssepp/error.hpp>
#include <ssepp/event.hpp>

#include <fmt/format.h>

#include <concepts>
#include <string>
#include <string_view>
#include <system_error>

namespace ssepp {

/// A contiguous growable byte buffer that the formatter can append to:
/// `std::string`, `std::vector<char>`, `fmt::memory_buffer` and the like.
template <class Out>
concept output_buffer = requires(Out& out, const char* p) { out.append(p, p); }
    || requires(Out& out, const char* p) { out.insert(out.end(), p, p); };

/// Checks that `e` can be written as given.
/// @returns `errc::invalid_id` when `id` holds CR, LF or NUL, `errc::invalid_event_name` when
/// `event` holds CR or LF, `errc::invalid_retry` for a negative retry, `errc::empty_event` when
/// no field is set; an empty error_code otherwise.
[[nodiscard]] inline std::error_code validate(const event& e) noexcept
{
    if (e.id && e.id->find_first_of(std::string_view("\r\n\0", 3)) != std::string::npos)
        return errc::invalid_id;
    if (e.event.find_first_of("\r\n") != std::string::npos)
        return errc::invalid_event_name;
    if (e.retry && e.retry->count() < 0)
        return errc::invalid_retry;
    if (!e.id && e.event.empty() && !e.data && !e.retry && !e.comment)
        return errc::empty_event;
    return {};
}

namespace detail {

template <output_buffer Out>
void append(Out& out, std::string_view s)
{
    if constexpr (requires(const char* p) { out.append(p, p); })
        out.append(s.data(), s.data() + s.size());
    else
        out.insert(out.end(), s.data(), s.data() + s.size());
}

// Writes `value` as one `<prefix><line>\n` per line, splitting on CRLF, CR and LF.
template <output_buffer Out>
void append_lines(Out& out, std::string_view prefix, std::string_view value)
{
    for_each_line(value, [&](std::string_view line) {
        append(out, prefix);
        append(out, line);
        append(out, "\n");
    });
}

} // namespace detail

/// Appends the wire bytes of `e` to `out`: comment, id, event, retry, then data lines, then
/// the blank line that ends the frame. Nothing is written when `e` is invalid.
///
/// `data` and `comment` are split on every CRLF, CR and LF into one line each, so a payload
/// can never end the frame early; `data: ` always carries its space, so data that itself starts
/// with a space survives the client stripping one.
/// @returns the error of validate(e), or an empty error_code.
template <output_buffer Out>
std::error_code format_to(Out& out, const event& e)
{
    if (auto ec = validate(e))
        return ec;
    if constexpr (requires(std::size_t n) { out.reserve(n); }) {
        out.reserve(out.size() + e.event.size() + 64 + (e.id ? e.id->size() : 0)
                    + (e.data ? e.data->size() : 0) + (e.comment ? e.comment->size() : 0));
    }
    if (e.comment) {
        // An empty comment line is a bare ':' (the usual heartbeat).
        detail::for_each_line(*e.comment, [&](std::string_view line) {
            detail::append(out, line.empty() ? std::string_view(":") : std::string_view(": "));
            detail::append(out, line);
            detail::append(out, "\n");
        });
    }
    if (e.id) {
        detail::append(out, e.id->empty() ? std::string_view("id") : std::string_view("id: "));
        detail::append(out, *e.id);
        detail::append(out, "\n");
    }
    if (!e.event.empty()) {
        detail::append(out, "event: ");
        detail::append(out, e.event);
        detail::append(out, "\n");
    }
    if (e.retry) {
        detail::append(out, "retry: ");
        const fmt::format_int ms(e.retry->count());
        detail::append(out, std::string_view(ms.data(), ms.size()));
        detail::append(out, "\n");
    }
    if (e.data)
        detail::append_lines(out, "data: ", *e.data);
    detail::append(out, "\n");
    return {};
}

/// The wire bytes of `e` as a string; `ec` is set and the result empty when `e` is invalid.
[[nodiscard]] inline std::string format(const event& e, std::error_code& ec)
{
    std::string out;
    ec = format_to(out, e);
    return out;
}

/// The wire bytes of `e` as a string.
/// @throws std::system_error when `e` is invalid (see validate()).
[[nodiscard]] inline std::string format(const event& e)
{
    std::error_code ec;
    auto out = format(e, ec);
    if (ec)
        throw std::system_error(ec, "ssepp::format");
    return out;
}

} // namespace ssepp

#endif
