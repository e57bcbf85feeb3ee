// ssepp/error.hpp
// Error codes of the ssepp category: what the formatter, the parser and the connection layer
// report. Part of the codec, so its category is a std::error_category and it includes neither
// Asio nor Boost; with Boost.Asio, ssepp::error_code (boost::system::error_code) is built from
// and compared with ssepp::errc through Boost.System's std interoperability.
// SPDX-License-Identifier: BSL-1.0
#ifndef SSEPP_ERROR_HPP
#define SSEPP_ERROR_HPP

#include <string>
#include <system_error>

namespace ssepp {

/// Errors reported by ssepp. Each enumerator says when it occurs.
enum class errc {
    /// An event's `id` contains CR, LF or NUL, which the protocol cannot carry.
    invalid_id = 1,
    /// An event's `event` (type) contains CR or LF.
    invalid_event_name,
    /// An event's `retry` is negative; the protocol carries only digits.
    invalid_retry,
    /// An event has no field at all, so there is nothing to write.
    empty_event,
    /// The parser met a line longer than its configured limit.
    line_too_long,
    /// An event larger than a configured limit: the parser's, a connection's queue bound, or
    /// the registry's history_options::max_event_bytes. Nothing was queued or retained.
    event_too_large,
    /// The connection is closed; the event was not queued.
    closed,
    /// The connection's queue passed its byte bound (slow consumer).
    overflow,
    /// A stream lifetime or write-stall timeout expired.
    timeout,
    /// The registry's connection_limits refused another connection (overall or for a key).
    too_many_connections,
};

namespace detail {

class error_category final : public std::error_category {
public:
    const char* name() const noexcept override { return "ssepp"; }

    std::string message(int ev) const override
    {
        switch (static_cast<errc>(ev)) {
        case errc::invalid_id: return "event id contains CR, LF or NUL";
        case errc::invalid_event_name: return "event type contains CR or LF";
        case errc::invalid_retry: return "event retry is negative";
        case errc::empty_event: return "event has no field to write";
        case errc::line_too_long: return "line longer than the parser's limit";
        case errc::event_too_large: return "event larger than the configured limit";
        case errc::closed: return "connection closed";
        case errc::overflow: return "connection queue overflow (slow consumer)";
        case errc::timeout: return "timeout";
        case errc::too_many_connections: return "too many connections";
        }
        return "unknown ssepp error";
    }
};

} // namespace detail

/// The category of every ssepp::errc.
inline const std::error_category& error_category() noexcept
{
    static const detail::error_category category;
    return category;
}

inline std::error_code make_error_code(errc e) noexcept
{
    return {static_cast<int>(e), error_category()};
}

} // namespace ssepp

template <>
struct std::is_error_code_enum<ssepp::errc> : std::true_type {};

#endif
