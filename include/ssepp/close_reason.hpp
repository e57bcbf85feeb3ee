// ssepp/close_reason.hpp
// Why an event stream ended: what each emitter reports once to its close handlers, and what
// the registry's metrics and hooks count. Pure: no Asio.
// SPDX-License-Identifier: BSL-1.0
#ifndef SSEPP_CLOSE_REASON_HPP
#define SSEPP_CLOSE_REASON_HPP

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace ssepp {

/// Why a stream ended; each emitter reports exactly one.
enum class close_reason : std::uint8_t {
    /// complete() flushed the queue.
    completed,
    /// complete_with_error() flushed the queue; the close handlers get its error.
    completed_with_error,
    /// abort(): the queue was dropped.
    aborted,
    /// The peer closed or reset the connection, or a write failed because it left.
    client_gone,
    /// The lifetime expired (after the on_timeout() handlers, the queue is flushed), or a
    /// write made no progress for emitter_options::write_timeout.
    timeout,
    /// The queue passed max_queued_bytes under overflow_policy::close.
    overflow,
    /// A write failed for another reason than the peer leaving (a TLS failure, say).
    error,
};

/// The enumerator's name ("completed", "client_gone", ...), for logs and metrics labels.
[[nodiscard]] constexpr std::string_view describe(close_reason r) noexcept
{
    switch (r) {
    case close_reason::completed: return "completed";
    case close_reason::completed_with_error: return "completed_with_error";
    case close_reason::aborted: return "aborted";
    case close_reason::client_gone: return "client_gone";
    case close_reason::timeout: return "timeout";
    case close_reason::overflow: return "overflow";
    case close_reason::error: return "error";
    }
    return "unknown";
}

/// How many close_reason values there are (they run from 0): an array indexed by reason.
inline constexpr std::size_t close_reason_count = static_cast<std::size_t>(close_reason::error) + 1;

} // namespace ssepp

#endif
