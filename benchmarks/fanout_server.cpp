// fanout_server: the load-test server built the way an application would use ssepp: raw Asio,
// one emitter per subscriber, the registry's broadcast. Same flags and paths as ideal_server.
#include "bench_front.hpp"

#include <ssepp/ssepp.hpp>


// A socket typed on io_context's own executor is 40 bytes instead of tcp::socket's 88 (whose
// executor is type-erased), and every operation pending on it is smaller too: with thousands
// of mostly idle streams that is a third of their memory. The emitter serialises its own use
// of a plain socket, so no strand is needed.
using socket_type = asio::basic_stream_socket<asio::ip::tcp, asio::io_context::executor_type>;
using emitter_type = ssepp::basic_emitter<ssepp::http_body<socket_type>>;

int main(int argc, char** argv)
{
    bench::options o;
    o.parse("fanout_server", argc, argv);
    asio::io_context io;
    // Events are handed to the subscribers on the I/O thread: the publisher's thread only
    // formats and retains them (see basic_registry's constructor).
    ssepp::basic_registry<std::string, emitter_type> subscribers(io.get_executor(), {.max_events = 64});

    bench::front front(
        io, o,
        [&](asio::ip::tcp::socket s) {
            auto stream = ssepp::make_emitter(
                ssepp::http_body(socket_type(io.get_executor(), asio::ip::tcp::v4(), s.release())));
            subscribers.attach("events", stream, {.otherwise = ssepp::replay::none});
        },
        [&](std::string body) { subscribers.broadcast({.data = std::move(body)}); });
    fmt::print("fanout_server listening on http://{}:{}/events\n", o.host, front.port());
    std::fflush(stdout);

    // At --rate max the publisher hands over --batch events at a time (broadcast_batch), as an
    // application with a burst at hand would; it waits while the subscriber furthest behind is
    // over a high-water mark (backlog(): O(1) here, refreshed by every hand-off).
    std::vector<ssepp::event> batch;
    bench::publisher publisher(
        o, [&](std::string data) { subscribers.broadcast({.data = std::move(data)}); },
        [&] { return subscribers.backlog(); },
        [&](std::vector<std::string>& data) {
            batch.clear();
            for (auto& d : data)
                batch.push_back({.data = std::move(d)});
            std::error_code ec;
            subscribers.broadcast_batch(batch, ec);
        });
    bench::run(io, o.threads);
}
