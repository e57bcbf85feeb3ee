// ssepp/frame.hpp
// An event formatted once into immutable bytes that any number of connections can queue and
// write without copying: the unit of the one path an event takes to the wire.
// SPDX-License-Identifier: BSL-1.0
#ifndef SSEPP_FRAME_HPP
#define SSEPP_FRAME_HPP

#include <ssepp/detail/asio.hpp>
#include <ssepp/format.hpp>

#include <memory>
#include <string>
#include <system_error>

namespace ssepp {

/// Wire bytes of one or more whole frames, shared read-only between queues.
using shared_frame = std::shared_ptr<const std::string>;

/// Formats `e` once; empty (and `ec` set) when `e` is invalid.
[[nodiscard]] inline shared_frame make_frame(const event& e, error_code& ec)
{
    auto bytes = std::make_shared<std::string>();
    ec = format_to(*bytes, e);
    if (ec)
        return nullptr;
    return bytes;
}

/// Wraps bytes that are already valid wire format (no validation).
[[nodiscard]] inline shared_frame make_raw_frame(std::string bytes)
{
    return std::make_shared<const std::string>(std::move(bytes));
}

} // namespace ssepp

#endif
