// examples/common/http_flags.hpp
// The HTTP front's limits (common::http::server_options) as command-line flags, so that a
// server's user can set them and its tests can make them small.
#pragma once

#include "common/cli.hpp"
#include "common/http.hpp"

#include <chrono>
#include <cstdint>

namespace common {

/// The HTTP front's limits (common::http::server_options) as flags, defaults included; a
/// server's own body limit goes in max_body_bytes.
struct http_flags {
    http::server_options options{};

    cli& add_to(cli& c)
    {
        return c.flag("--max-connections", options.max_connections, "HTTP connections at once; past it: 503")
            .flag("--max-head-bytes", options.max_head_bytes, "largest request head, as sent; past it: 431")
            .flag("--idle-timeout-ms", idle_ms_, "an idle keep-alive connection closes after this long")
            .flag("--head-timeout-ms", head_ms_, "a request head must arrive whole within this long; else 408")
            .flag("--body-timeout-ms", body_ms_, "a body must arrive within this long of its head (more at --min-body-rate), and never pause this long; else 408")
            .flag("--min-body-rate", options.min_body_rate, "bytes/s of body that earn it 1 s more each (0: none)");
    }

    /// The options with the flags' values.
    http::server_options get() const
    {
        auto o = options;
        o.idle_timeout = std::chrono::milliseconds(idle_ms_);
        o.head_timeout = std::chrono::milliseconds(head_ms_);
        o.body_timeout = std::chrono::milliseconds(body_ms_);
        return o;
    }

private:
    std::int64_t idle_ms_ = http::server_options{}.idle_timeout.count();
    std::int64_t head_ms_ = http::server_options{}.head_timeout.count();
    std::int64_t body_ms_ = http::server_options{}.body_timeout.count();
};

} // namespace common
