// cluster_server: one node of a cluster on Redis (ssepp::redis::node), for benchmarks/cluster.sh.
// The same front and publisher as fanout_server, but every event goes through Redis: the
// publisher calls node->async_send (one EVAL: XADD + PUBLISH) and each node, this one too,
// delivers what comes back on the bus to its own subscribers. Run two (or more) on one Redis,
// the publisher on one of them (--rate), the others with --rate 0.
//   GET /events        subscribes to the key "events" (what --keys 0 publishes to)
//   GET /events/<key>  subscribes to <key> (--keys N publishes to u0 ... u<N-1> in turn)
// On SIGINT/SIGTERM it prints one line: published, acknowledged, failed sends.
#include "bench_front.hpp"

#include <ssepp/redis/cluster.hpp>
#include <ssepp/ssepp.hpp>

#include <cstdio>
#include <cstdlib>

// As in fanout_server: sockets typed on io_context's own executor (smaller per connection).
using socket_type = asio::basic_stream_socket<asio::ip::tcp, asio::io_context::executor_type>;
using emitter_type = ssepp::basic_emitter<socket_type>;
using node_type = ssepp::redis::basic_node<emitter_type>;

int main(int argc, char** argv)
{
    bench::options o;
    std::string redis_url = "redis://127.0.0.1:6379";
    std::size_t keys = 0;
    std::size_t max_in_flight = 256;
    common::cli args("cluster_server");
    o.add_flags(args)
        .flag("--redis", redis_url, "the cluster's Redis (redis://host:port[/db])")
        .flag("--keys", keys, "0: publish to the key \"events\"; N: to u0 ... u<N-1>, one at a time, in turn")
        .flag("--max-in-flight", max_in_flight, "with --rate max, sends not yet acknowledged by Redis at most")
        .parse(argc, argv);

    asio::io_context io;
    auto node = node_type::create(asio::make_strand(io), {.server = ssepp::redis::parse_url(redis_url)},
                                  {.max_events = 64});

    bench::front front(
        io, o,
        [&](asio::ip::tcp::socket s, std::string key) {
            auto stream = ssepp::make_emitter(socket_type(io.get_executor(), asio::ip::tcp::v4(), s.release()));
            node->async_attach(std::move(key), stream, {.otherwise = ssepp::replay::none},
                               [](std::error_code, ssepp::attach_result) {});
        },
        [&](std::string body) { node->async_send("events", {.data = std::move(body)}, [](std::error_code, std::string) {}); });

    std::jthread io_thread([&] { bench::run(io, o.threads); });
    // Publish only once the bus is subscribed: before that, this node would miss its own events.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!node->is_ready() && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    if (!node->is_ready()) {
        fmt::print(stderr, "cluster_server: no bus subscription on {} after 10 s\n", redis_url);
        std::_Exit(1);
    }
    fmt::print("cluster_server listening on http://{}:{}/events\n", o.host, front.port());
    std::fflush(stdout);

    std::atomic<std::uint64_t> published{0}, acked{0}, failed{0};
    std::atomic<std::size_t> in_flight{0};
    std::uint64_t next_key = 0;  // the publisher's thread only
    {
        bench::publisher publisher(
            o,
            [&](std::string data) {
                std::string key = keys == 0 ? std::string("events") : fmt::format("u{}", next_key++ % keys);
                ++published;
                ++in_flight;
                node->async_send(std::move(key), {.data = std::move(data)}, [&](std::error_code ec, std::string) {
                    --in_flight;
                    ++(ec ? failed : acked);
                });
            },
            [&]() -> std::size_t {
                // Redis's pace first (sends in flight), then the local subscribers' (unwritten bytes).
                if (in_flight.load() > max_in_flight)
                    return SIZE_MAX;
                return node->local().queued_bytes() / std::max<std::size_t>(1, node->local().size());
            });
        io_thread.join();  // until SIGINT/SIGTERM
    }
    fmt::print("cluster_server: published {} acked {} failed {}\n", published.load(), acked.load(), failed.load());
    std::fflush(stdout);
    // The node's handlers still queued in the stopped io_context own it and its emitters:
    // tearing that down buys a benchmark nothing.
    std::_Exit(0);
}
