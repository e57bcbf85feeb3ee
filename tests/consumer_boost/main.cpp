// A Beast user's program: Boost.Asio's io_context and sockets, ssepp's emitter over them, and
// Boost.System's error_code in ssepp's API. Streams one event over a local socket pair and
// checks the bytes the peer reads. Exits non-zero otherwise.
#include <ssepp/ssepp.hpp>
#ifdef CONSUMER_HAS_REDIS
#include <ssepp/redis/cluster.hpp>
#endif

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/connect_pair.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/read.hpp>
#include <boost/system/error_code.hpp>

#include <chrono>
#include <cstdio>
#include <string>
#include <type_traits>

static_assert(std::is_same_v<ssepp::error_code, boost::system::error_code>);
static_assert(std::is_same_v<ssepp::asio::io_context, boost::asio::io_context>);

int main()
{
    namespace asio = boost::asio;
    using local = asio::local::stream_protocol::socket;
    asio::io_context io;
    local mine(io), peer(io);
    asio::local::connect_pair(mine, peer);

    ssepp::emitter_options options;
    options.retry_hint.reset();
    options.heartbeat = std::chrono::milliseconds(0);
    auto em = ssepp::make_emitter(ssepp::http_body(std::move(mine)), options);
    boost::system::error_code ec;
    em->send({.id = "1", .data = "hello"}, ec);
    em->start();
    bool closed = false;
    boost::system::error_code close_ec;
    em->on_close([&](ssepp::close_reason, boost::system::error_code e) {
        closed = true;
        close_ec = e;
    });
    em->complete({.data = "bye"}, ec);
    io.run_for(std::chrono::seconds(5));

    std::string got(4096, '\0');
    boost::system::error_code read_ec;
    got.resize(asio::read(peer, asio::buffer(got), read_ec));  // until the emitter's close: eof
    std::fwrite(got.data(), 1, got.size(), stdout);
    const std::string events = "id: 1\ndata: hello\n\ndata: bye\n\n";
    const bool ok = !ec && closed && !close_ec && got.starts_with("HTTP/1.1 200 OK\r\n")
        && got.ends_with("\r\n\r\n" + events) && read_ec == asio::error::eof
        // the codec's std::error_code and ssepp::errc, in Boost.System's error_code
        && boost::system::error_code(ssepp::validate({.id = "a\nb"})) == ssepp::errc::invalid_id;
    if (!ok) {
        std::fprintf(stderr, "consumer: unexpected stream (ec: %s, closed: %d, close: %s, read: %s)\n",
                     ec.message().c_str(), int(closed), close_ec.message().c_str(), read_ec.message().c_str());
        return 1;
    }
    return 0;
}
