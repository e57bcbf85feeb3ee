// ssepp/redis/error.hpp
// Error codes of the ssepp.redis category: what a Redis connection, its commands and the URL
// parser report through ssepp::error_code.
// SPDX-License-Identifier: BSL-1.0
#ifndef SSEPP_REDIS_ERROR_HPP
#define SSEPP_REDIS_ERROR_HPP

#include <ssepp/detail/asio.hpp>

#include <string>

namespace ssepp::redis {

/// Errors reported by ssepp::redis. Each enumerator says when it occurs.
enum class errc {
    /// The command was not sent: the connection had no ready link (connecting, waiting to
    /// reconnect). Nothing reached the server; retrying is safe.
    not_connected = 1,
    /// The link dropped after the command was sent and before its reply: the server may or may
    /// not have run it.
    connection_lost,
    /// The server answered with an error reply (`-ERR ...`); the reply carries its text.
    server_error,
    /// The server sent bytes that are not RESP; the link was dropped.
    protocol_error,
    /// A connection attempt failed (refused, unreachable, timed out, or the SELECT of the
    /// configured database was refused). Reported to the disconnect hook; a retry follows.
    connect_failed,
    /// close() was called, or the owner went away, before the reply came.
    closed,
    /// A command with no argument at all.
    empty_command,
    /// A `redis://` URL that parse_url() cannot read.
    invalid_url,
};

namespace detail {

// Derives from the flavour's category, so that a Boost.System error_code holds it natively.
class error_category final : public ssepp::detail::error_category_base {
public:
    using ssepp::detail::error_category_base::message;  // Boost's has a buffer overload too
    const char* name() const noexcept override { return "ssepp.redis"; }

    std::string message(int ev) const override
    {
        switch (static_cast<errc>(ev)) {
        case errc::not_connected: return "not connected to Redis (command not sent)";
        case errc::connection_lost: return "connection to Redis lost before the reply";
        case errc::server_error: return "Redis replied with an error";
        case errc::protocol_error: return "Redis protocol error";
        case errc::connect_failed: return "could not connect to Redis";
        case errc::closed: return "Redis connection closed";
        case errc::empty_command: return "empty Redis command";
        case errc::invalid_url: return "invalid Redis URL";
        }
        return "unknown ssepp.redis error";
    }
};

} // namespace detail

/// The category of every ssepp::redis::errc.
inline const ssepp::detail::error_category_base& error_category() noexcept
{
    static const detail::error_category category;
    return category;
}

inline error_code make_error_code(errc e) noexcept
{
    return {static_cast<int>(e), error_category()};
}

} // namespace ssepp::redis

SSEPP_ERROR_CODE_ENUM(ssepp::redis::errc)

#endif
