// Test that the header is self-contained.
#include <ssepp/transport.hpp>

#include <ssepp/emitter.hpp>

#include "catch.hpp"
#include "support/loopback.hpp"
#include "support/tls.hpp"

#include "support/asio_ssl.hpp"

#include <future>
#include <string>

using namespace std::chrono_literals;
using tcp = asio::ip::tcp;
using tls_stream = asio::ssl::stream<tcp::socket>;
using local_socket = asio::local::stream_protocol::socket;

namespace {

// The three Asio streams are transports as they are.
static_assert(ssepp::transport<tcp::socket>);
static_assert(ssepp::transport<tls_stream>);
static_assert(ssepp::transport<local_socket>);
// How the emitter watches each for a vanished peer: readability on a plain socket (no buffer),
// a small read on a layered stream.
static_assert(ssepp::detail::is_plain_socket<tcp::socket>);
static_assert(ssepp::detail::is_plain_socket<local_socket>);
static_assert(!ssepp::detail::is_plain_socket<tls_stream>);
static_assert(ssepp::detail::has_lowest_socket<tls_stream>);
static_assert(ssepp::detail::has_async_read_some<tls_stream>);
// A custom transport that is no Asio socket: what the concept asks, nothing more.
static_assert(ssepp::transport<test::counting_transport>);
static_assert(!ssepp::detail::has_lowest_socket<test::counting_transport>);
static_assert(!ssepp::detail::has_async_read_some<test::counting_transport>);
static_assert(!ssepp::detail::is_plain_socket<test::counting_transport>);

// Not transports.
struct cannot_close {
    using executor_type = asio::any_io_executor;
    executor_type get_executor();
    template <class B, class H>
    void async_write_some(const B&, H&&);
};
struct cannot_write {
    using executor_type = asio::any_io_executor;
    executor_type get_executor();
    void close(ssepp::error_code&);
};
static_assert(!ssepp::transport<cannot_close>);
static_assert(!ssepp::transport<cannot_write>);
static_assert(!ssepp::transport<tcp::acceptor>);
static_assert(!ssepp::transport<int>);

using test::quiet;

/// A TLS server: the handshake and the request head over TLS, then an emitter on the stream.
class tls_server {
public:
    tls_server(const test::self_signed& cert, ssepp::emitter_options options)
        : ctx_(cert.server_context())
    {
        srv_.accept([this, options](tcp::socket s) {
            auto tls = std::make_shared<tls_stream>(std::move(s), ctx_);
            tls->async_handshake(asio::ssl::stream_base::server, [this, tls, options](ssepp::error_code ec) {
                if (ec)
                    return;
                auto head = std::make_shared<std::string>();
                asio::async_read_until(*tls, asio::dynamic_buffer(*head), "\r\n\r\n",
                                       [this, tls, head, options](ssepp::error_code ec, std::size_t) {
                                           if (ec)
                                               return;
                                           auto em = ssepp::make_emitter(ssepp::http_body(std::move(*tls)), options);
                                           em->on_close(closes.handler());
                                           em->start();
                                           heads.push(*head);
                                           ems.push(em);
                                       });
            });
        });
    }

    asio::ip::port_type port() const { return srv_.port(); }
    asio::io_context& io() { return srv_.io(); }

private:
    asio::ssl::context ctx_;
    test::server srv_;

public:
    test::collector<std::string> heads;
    test::collector<std::shared_ptr<ssepp::basic_emitter<ssepp::http_body<tls_stream>>>> ems;
    test::close_log closes;
};

} // namespace

TEST_CASE("events stream over TLS with a self-signed certificate made at run time", "[transport]")
{
    const auto cert = test::self_signed::make();
    tls_server srv(cert, quiet());
    test::tls_client c(srv.port(), cert);
    auto em = srv.ems.at(0);
    CHECK(srv.heads.at(0).starts_with("GET /events HTTP/1.1\r\n"));
    REQUIRE(c.read_until([&] { return c.retries.size() == 1; }));
    CHECK(c.head == ssepp::response_head());
    for (int i = 0; i < 100; ++i)
        CHECK(test::send_ec(*em, {.id = std::to_string(i), .data = std::string(1000, 'z')}).value() == 0);
    test::complete_ec(*em, {.event = "done", .data = "over TLS"});
    REQUIRE(c.read_to_eof());
    REQUIRE(c.events.size() == 101);
    for (std::size_t i = 0; i < 100; ++i)
        CHECK(c.events[i].id == std::to_string(i));
    CHECK(c.events.back() == test::received{"done", "over TLS", "99"});
    // complete() ends the TLS stream with close_notify: the client sees the end of the stream,
    // not a truncation.
    CHECK(c.end_error() == asio::error::eof);
    // The client sends no close_notify back: the server waits a bounded time for it.
    REQUIRE(srv.closes.wait(1, 5s));
    CHECK(srv.closes.reason() == ssepp::close_reason::completed);
    // The emitter counts plaintext body bytes: what the client decrypted, after the head.
    CHECK(em->bytes_written() == c.raw.size() - c.head.size());
}

TEST_CASE("abort() ends a TLS stream at once, without close_notify", "[transport]")
{
    const auto cert = test::self_signed::make();
    tls_server srv(cert, quiet());
    test::tls_client c(srv.port(), cert);
    auto em = srv.ems.at(0);
    REQUIRE(c.read_until([&] { return c.retries.size() == 1; }));
    em->abort();
    REQUIRE(c.read_to_eof());
    CHECK(c.end_error() == asio::ssl::error::stream_truncated);
    REQUIRE(srv.closes.wait(1, 5s));
    CHECK(srv.closes.reason() == ssepp::close_reason::aborted);
}

TEST_CASE("a TLS client that goes away is noticed without a send", "[transport]")
{
    const auto cert = test::self_signed::make();
    tls_server srv(cert, quiet());  // no heartbeat: only the watch (a read on the TLS stream)
    test::tls_client c(srv.port(), cert);
    auto em = srv.ems.at(0);
    REQUIRE(c.read_until([&] { return c.retries.size() == 1; }));
    c.close();
    REQUIRE(srv.closes.wait(1, 5s));
    CHECK(srv.closes.reason() == ssepp::close_reason::client_gone);
    CHECK(test::send_ec(*em, {.data = "x"}) == ssepp::errc::closed);
    REQUIRE(test::run_on(srv.io().get_executor(), [] {}));
    CHECK(srv.closes.count() == 1);
}

TEST_CASE("a TLS handshake with an unpinned certificate fails", "[transport]")
{
    // The pinning client really verifies: a server with another certificate is refused.
    const auto cert = test::self_signed::make();
    const auto other = test::self_signed::make();
    tls_server srv(other, quiet());
    CHECK_THROWS_AS(test::tls_client(srv.port(), cert), ssepp::system_error);
}

TEST_CASE("events stream over a local stream socket", "[transport]")
{
    asio::io_context io;
    test::stream_client<local_socket> c(true);
    local_socket mine(io);
    asio::local::connect_pair(mine, c.stream());
    auto em = ssepp::make_emitter(ssepp::http_body(std::move(mine)), quiet());
    test::close_log closes;
    em->on_close(closes.handler());
    test::send_ec(*em, {.data = "before start"});
    em->start();
    test::run_in_background ran(io);  // stopped at the end of the scope, whatever fails
    for (int i = 0; i < 50; ++i)
        test::send_ec(*em, {.id = std::to_string(i), .data = "over AF_UNIX"});
    em->complete();
    REQUIRE(c.read_to_eof());
    CHECK(c.head == ssepp::response_head());
    REQUIRE(c.events.size() == 51);
    CHECK(c.events[0].data == "before start");
    CHECK(c.events.back() == test::received{"message", "over AF_UNIX", "49"});
    REQUIRE(closes.wait(1, 5s));
    CHECK(closes.reason() == ssepp::close_reason::completed);
    REQUIRE(ran.wait_for(3s) == std::future_status::ready);  // nothing left behind
}

TEST_CASE("a local socket peer that goes away is noticed without a send", "[transport]")
{
    asio::io_context io;
    asio::io_context peer_io;
    local_socket mine(io), peer(peer_io);
    asio::local::connect_pair(mine, peer);
    auto em = ssepp::make_emitter(ssepp::http_body(std::move(mine)), quiet());
    test::close_log closes;
    em->on_close(closes.handler());
    em->start();
    test::run_in_background ran(io);  // stopped at the end of the scope, whatever fails
    peer.close();
    REQUIRE(closes.wait(1, 5s));
    CHECK(closes.reason() == ssepp::close_reason::client_gone);
    REQUIRE(ran.wait_for(3s) == std::future_status::ready);
    CHECK(closes.count() == 1);
}

TEST_CASE("a custom transport that is no Asio socket streams events", "[transport]")
{
    auto stats = std::make_shared<test::write_stats>();
    test::server srv;
    test::collector<std::shared_ptr<ssepp::basic_emitter<ssepp::http_body<test::counting_transport>>>> ems;
    test::close_log closes;
    srv.serve([&](tcp::socket s, std::string) {
        auto em = ssepp::make_emitter(ssepp::http_body(test::counting_transport(std::move(s), stats)), quiet());
        em->on_close(closes.handler());
        em->start();
        ems.push(em);
    });
    test::client c(srv.port());
    auto em = ems.at(0);
    for (int i = 0; i < 20; ++i) {
        test::send_ec(*em, {.data = std::to_string(i)});
        REQUIRE(c.read_events(static_cast<std::size_t>(i + 1)));
    }
    em->complete();
    REQUIRE(c.read_to_eof());
    CHECK(c.events.size() == 20);
    CHECK(c.events.back().data == "19");
    REQUIRE(closes.wait(1, 5s));
    CHECK(closes.reason() == ssepp::close_reason::completed);
    CHECK(stats->calls >= 20);  // one write (at least) per event sent while idle
    CHECK(stats->bytes == c.raw.size());
}

TEST_CASE("a custom transport without a peer watch finds a vanished client at the next heartbeat", "[transport]")
{
    auto stats = std::make_shared<test::write_stats>();
    auto options = quiet();
    options.heartbeat = 50ms;
    test::server srv;
    test::collector<std::shared_ptr<ssepp::basic_emitter<ssepp::http_body<test::counting_transport>>>> ems;
    test::close_log closes;
    srv.serve([&](tcp::socket s, std::string) {
        auto em = ssepp::make_emitter(ssepp::http_body(test::counting_transport(std::move(s), stats)), options);
        em->on_close(closes.handler());
        em->start();
        ems.push(em);
    });
    test::client c(srv.port());
    auto em = ems.at(0);
    REQUIRE(c.read_until([&] { return !c.comments.empty(); }, 3s));
    c.reset();
    REQUIRE(closes.wait(1, 5s));
    CHECK(closes.reason() == ssepp::close_reason::client_gone);
    CHECK(closes.count() == 1);
}
