// fanout_server: the load-test server built the way an application would use ssepp: raw Asio,
// one emitter per subscriber, the registry's broadcast. Same flags and paths as ideal_server.
#include "bench_front.hpp"

#include <ssepp/ssepp.hpp>

#include <mutex>

int main(int argc, char** argv)
{
    bench::options o;
    o.parse("fanout_server", argc, argv);
    asio::io_context io;
    ssepp::registry subscribers({.max_events = 64});
    std::mutex mtx;
    std::vector<std::weak_ptr<ssepp::emitter>> streams;  // for the publisher's flow control

    bench::front front(
        io, o,
        [&](asio::ip::tcp::socket s) {
            auto stream = ssepp::make_emitter(std::move(s));
            {
                std::lock_guard lock(mtx);
                streams.push_back(stream);
            }
            subscribers.attach("events", stream, {.otherwise = ssepp::replay::none});
        },
        [&](std::string body) { subscribers.broadcast({.data = std::move(body)}); });
    fmt::print("fanout_server listening on http://{}:{}/events\n", o.host, front.port());
    std::fflush(stdout);

    bench::publisher publisher(
        o, [&](std::string data) { subscribers.broadcast({.data = std::move(data)}); },
        [&] {
            std::lock_guard lock(mtx);
            std::size_t total = 0;
            std::erase_if(streams, [&](const auto& w) {
                auto s = w.lock();
                if (s)
                    total += s->queued_bytes();
                return !s;
            });
            return total / std::max<std::size_t>(1, streams.size());
        });
    bench::run(io, o.threads);
}
