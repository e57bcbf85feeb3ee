// ssepp/event.hpp
// The value type of one Server-Sent Event: the five fields of the text/event-stream protocol.
// Pure data: no I/O, no validation (see ssepp/format.hpp for both).
// SPDX-License-Identifier: BSL-1.0
#ifndef SSEPP_EVENT_HPP
#define SSEPP_EVENT_HPP

#include <chrono>
#include <optional>
#include <string>

namespace ssepp {

/// One event as the server writes it.
///
/// Absent and empty differ where the protocol makes them differ:
/// - `data`: `std::nullopt` writes no `data:` line, so a client dispatches nothing (a
///   comment-only, id-only or retry-only frame); `""` is an event whose data is empty.
/// - `id`: `std::nullopt` writes no `id:` line; `""` writes `id:` alone, which resets the
///   client's last event id.
/// - `comment`: `std::nullopt` writes none; `""` writes a lone `:` line (a heartbeat).
///
/// @par Example
/// @code
/// ssepp::event e{.id = "42", .event = "progress", .data = R"({"percent":50})"};
/// @endcode
struct event {
    // Every member has an initializer so that `event{.data = ...}` compiles quietly under
    // GCC's -Wmissing-field-initializers.
    std::optional<std::string> id{};
    /// The event type; empty means the client's default, `message`.
    std::string event{};
    std::optional<std::string> data{};
    std::optional<std::chrono::milliseconds> retry{};
    std::optional<std::string> comment{};

    friend bool operator==(const ssepp::event&, const ssepp::event&) = default;
};

} // namespace ssepp

#endif
