// examples/common/server_main.hpp
// What every example server's main() shares: the --host/--port/--threads flags, and running
// the io_context on that many threads.
#pragma once

#include "common/cli.hpp"

#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>

#include <algorithm>
#include <cstdint>
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
