// examples/common/server_main.hpp
// What every example server's main() shares: the --host/--port/--threads flags, running the
// io_context on that many threads, and the graceful shutdown's flags and bounded wait.
#pragma once

#include "common/cli.hpp"

#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <sys/resource.h>

namespace common {

/// Where a server listens and how many threads run its io_context.
struct server_flags {
    std::string host = "127.0.0.1";
    std::uint16_t port = 8080;
    int threads = 2;

    cli& add_to(cli& c)
    {
        return c.flag("--host", host, "address to listen on")
            .flag("--port", port, "port; 0 picks a free one and prints it")
            .flag("--threads", threads, "I/O threads");
    }

    asio::ip::tcp::endpoint endpoint() const { return {asio::ip::make_address(host), port}; }
};

/// Graceful shutdown (SIGINT, SIGTERM): every event stream is told to come back after a
/// `retry` drawn from [retry_min, retry_max], so that after a restart its clients return spread
/// over that window instead of all in the same second, and is completed; the server exits once
/// the streams closed, or after drain_timeout with what is left.
struct shutdown_flags {
    std::int64_t retry_min_ms = 1000;
    std::int64_t retry_max_ms = 10000;
    std::int64_t drain_timeout_ms = 5000;

    cli& add_to(cli& c)
    {
        return c.flag("--shutdown-retry-min-ms", retry_min_ms, "on SIGINT/SIGTERM each stream is told to reconnect after a time drawn from min..max")
            .flag("--shutdown-retry-max-ms", retry_max_ms, "(see --shutdown-retry-min-ms)")
            .flag("--shutdown-drain-ms", drain_timeout_ms, "then how long the streams may take to close before the server exits anyway");
    }

    /// Why the values cannot be used, or empty.
    std::string problem() const
    {
        if (retry_min_ms < 0 || retry_max_ms < retry_min_ms)
            return "--shutdown-retry-min-ms and --shutdown-retry-max-ms need 0 <= min <= max";
        if (drain_timeout_ms < 0)
            return "--shutdown-drain-ms must not be negative";
        return {};
    }

    std::chrono::milliseconds retry_min() const { return std::chrono::milliseconds(retry_min_ms); }
    std::chrono::milliseconds retry_max() const { return std::chrono::milliseconds(retry_max_ms); }
    std::chrono::milliseconds drain_timeout() const { return std::chrono::milliseconds(drain_timeout_ms); }
};

/// After the streams were completed (on a thread of its own, not one running `io`): waits until
/// `open()` is 0 or `bound` passed; then, if streams are still open (clients that do not read
/// what is left of theirs), stops `io`, which drops them. Whether they all closed in time.
inline bool wait_drained(asio::io_context& io, const std::function<std::size_t()>& open, std::chrono::milliseconds bound)
{
    const auto deadline = std::chrono::steady_clock::now() + bound;
    while (open() > 0) {
        if (std::chrono::steady_clock::now() >= deadline) {
            io.stop();
            return false;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return true;
}

/// Raises the soft limit of open files to the hard one: the connections and event streams the
/// servers' limits allow (512 + 1024 by default) need more descriptors than the usual soft limit
/// of 1024, and running out makes accept() fail for everyone. (Go's runtime does the same.)
inline void raise_open_files_limit()
{
    rlimit r{};
    if (::getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur < r.rlim_max) {
        r.rlim_cur = r.rlim_max;
        ::setrlimit(RLIMIT_NOFILE, &r);
    }
}

/// Runs `io` on `threads` threads, this one included, until it runs out of work or stops.
inline void run(asio::io_context& io, int threads)
{
    raise_open_files_limit();
    std::vector<std::thread> pool;
    for (int i = 1; i < std::max(1, threads); ++i)
        pool.emplace_back([&io] { io.run(); });
    io.run();
    for (auto& t : pool)
        t.join();
}

} // namespace common
