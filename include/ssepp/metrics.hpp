// ssepp/metrics.hpp
// A snapshot of a registry's counters (basic_registry::metrics()) and its Prometheus text
// exposition, so that a server's /metrics needs no metrics library. Pure: no Asio, no I/O.
// SPDX-License-Identifier: BSL-1.0
#ifndef SSEPP_METRICS_HPP
#define SSEPP_METRICS_HPP

#include <ssepp/close_reason.hpp>

#include <fmt/format.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <string>
#include <string_view>

namespace ssepp {

/// What a registry has done since it was made (`_total`: counters, which only grow) and holds
/// now (gauges).
struct metrics {
    std::uint64_t connections = 0;                 ///< open now
    std::uint64_t keys = 0;                        ///< keys held (connections, history or a finish)
    std::uint64_t queued_bytes = 0;                ///< queued or being written, over all connections
    std::uint64_t connections_total = 0;           ///< attached
    std::uint64_t connections_refused_total = 0;   ///< refused by a connection limit
    std::uint64_t events_total = 0;                ///< sent, broadcast or finished (and retained)
    std::uint64_t replayed_events_total = 0;       ///< queued by replays at attach
    std::uint64_t gaps_total = 0;                  ///< attaches that could not resume without a gap
    std::uint64_t bytes_written_total = 0;         ///< body bytes the transports took, as written
    std::uint64_t dropped_events_total = 0;        ///< dropped under overflow_policy::drop_oldest
    std::uint64_t heartbeats_total = 0;            ///< heartbeat comments queued
    /// Connections that ended, by close_reason (indexed by its value).
    std::array<std::uint64_t, close_reason_count> closed_total{};
};

/// Adds `b` to `a`, field by field: several registries (a server's, a cluster node's local
/// one) exposed as one.
inline metrics& operator+=(metrics& a, const metrics& b) noexcept
{
    a.connections += b.connections;
    a.keys += b.keys;
    a.queued_bytes += b.queued_bytes;
    a.connections_total += b.connections_total;
    a.connections_refused_total += b.connections_refused_total;
    a.events_total += b.events_total;
    a.replayed_events_total += b.replayed_events_total;
    a.gaps_total += b.gaps_total;
    a.bytes_written_total += b.bytes_written_total;
    a.dropped_events_total += b.dropped_events_total;
    a.heartbeats_total += b.heartbeats_total;
    for (std::size_t i = 0; i < close_reason_count; ++i)
        a.closed_total[i] += b.closed_total[i];
    return a;
}

/// Appends `m` in the Prometheus text format (version 0.0.4: serve it as
/// `text/plain; version=0.0.4`), each family with its `# HELP` and `# TYPE` line, names
/// prefixed with `prefix` and `_` (a valid metric name prefix: letters, digits, `_`, `:`).
inline void format_prometheus(std::string& out, const metrics& m, std::string_view prefix = "ssepp")
{
    auto it = std::back_inserter(out);
    const auto family = [&](std::string_view name, std::string_view type, std::string_view help) {
        fmt::format_to(it, "# HELP {}_{} {}\n# TYPE {}_{} {}\n", prefix, name, help, prefix, name, type);
    };
    const auto one = [&](std::string_view name, std::string_view type, std::string_view help, std::uint64_t v) {
        family(name, type, help);
        fmt::format_to(it, "{}_{} {}\n", prefix, name, v);
    };
    // Not "<prefix>_connections": a gauge of that name and the counter connections_total
    // would be one family to a Prometheus parser.
    one("open_connections", "gauge", "Open event streams.", m.connections);
    one("keys", "gauge", "Keys held: with connections, a history or a lingering finish.", m.keys);
    one("queued_bytes", "gauge", "Bytes queued or being written, over all connections.", m.queued_bytes);
    one("connections_total", "counter", "Event streams attached.", m.connections_total);
    one("connections_refused_total", "counter", "Event streams refused by a connection limit.",
        m.connections_refused_total);
    one("events_total", "counter", "Events sent, broadcast or finished.", m.events_total);
    one("replayed_events_total", "counter", "Events queued by replays (Last-Event-ID, late subscribers).",
        m.replayed_events_total);
    one("gaps_total", "counter", "Attaches whose client may have missed events.", m.gaps_total);
    one("bytes_written_total", "counter", "Body bytes written to the transports.", m.bytes_written_total);
    one("dropped_events_total", "counter", "Events dropped by the drop_oldest overflow policy.",
        m.dropped_events_total);
    one("heartbeats_total", "counter", "Heartbeat comments queued.", m.heartbeats_total);
    family("closed_total", "counter", "Event streams ended, by reason.");
    for (std::size_t i = 0; i < close_reason_count; ++i)
        fmt::format_to(it, "{}_closed_total{{reason=\"{}\"}} {}\n", prefix, describe(static_cast<close_reason>(i)),
                       m.closed_total[i]);
}

/// format_prometheus() into a new string.
inline std::string format_prometheus(const metrics& m, std::string_view prefix = "ssepp")
{
    std::string out;
    format_prometheus(out, m, prefix);
    return out;
}

} // namespace ssepp

#endif
