// A user's program of ssepp::redis: parses a URL, then connects with hiredis through Asio to a
// loopback port where nothing listens and expects the refusal to be reported as connect_failed.
// Exits non-zero otherwise. Needs no Redis server. ssepp::asio and ssepp::error_code: the same
// source builds in either Asio flavour (ssepp.consumer_redis_boost_add_subdirectory).
#include <ssepp/redis/connection.hpp>
#include <ssepp/redis/subscriber.hpp>

#include <chrono>
#include <cstdio>

int main()
{
    const ssepp::redis::endpoint ep = ssepp::redis::parse_url("redis://127.0.0.1:1/2");
    if (ep.port != 1 || ep.db != 2) {
        std::fputs("consumer: parse_url misread the URL\n", stderr);
        return 1;
    }
    ssepp::asio::io_context io;
    ssepp::error_code reported;
    std::shared_ptr<ssepp::redis::connection> conn;
    conn = ssepp::redis::connection::create(io.get_executor(),
                                            {.server = ep, .on_disconnect = [&](ssepp::error_code ec) {
                                                 reported = ec;
                                                 conn->close();
                                             }});
    io.run_for(std::chrono::seconds(5));
    std::printf("consumer: %s (%s)\n", reported.message().c_str(), conn->last_error().c_str());
    return reported == ssepp::redis::errc::connect_failed ? 0 : 1;
}
