// examples/common/stream_limits.hpp
// The caps on event streams (ssepp::connection_limits, checked by a registry's admits() before
// a stream is answered) and the 503 a refused stream gets: before any SSE byte, so that it is
// an HTTP answer with Retry-After and a reason, not a stream that opens and dies.
#pragma once

#include "common/request_parser.hpp"

#include <ssepp/registry.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace common {

/// Which cap a stream under `keys` meets in a registry holding what it holds now, if any:
/// from its counts, so that the refusal can say which, and so that a registry whose attach()
/// must not be refused (a cluster node's, see README) can be checked without limits of its own.
enum class stream_cap { none, total, key };

template <class Registry, class Key>
stream_cap full_cap(const Registry& r, std::span<const Key> keys, const ssepp::connection_limits& limits)
{
    if (limits.max_connections && r.size() >= limits.max_connections)
        return stream_cap::total;
    if (limits.max_connections_per_key)
        for (const auto& k : keys)
            if (r.size(k) >= limits.max_connections_per_key)
                return stream_cap::key;
    return stream_cap::none;
}

/// 503 with Retry-After (whole seconds, at least 1) and `{"error": reason}`. A browser's
/// EventSource does not reconnect after it (it fails, readyState CLOSED): the pages fetch the
/// stream's URL once to learn why, and open it again after Retry-After.
inline http::response stream_refused(std::string_view reason, std::chrono::seconds retry_after)
{
    auto r = http::response::error(503, reason);
    r.headers.emplace_back("Retry-After", std::to_string(std::max<std::int64_t>(1, retry_after.count())));
    return r;
}

} // namespace common
