// hello: a whole SSE server on raw Asio. GET /events streams a tick a second (curl -N, or the
// page at /); a client reconnecting with Last-Event-ID resumes from the registry's history.
#include <ssepp/ssepp.hpp>
#include <asio.hpp>
#include <fmt/format.h>

constexpr std::string_view page = "<!doctype html><pre id=log></pre><script>new EventSource('/events')"
    ".addEventListener('tick', e => log.textContent += e.lastEventId + ' ' + e.data + '\\n')</script>";

int main(int argc, char** argv)
{
    asio::io_context io;
    ssepp::registry clients;
    asio::ip::tcp::acceptor acceptor(io, {asio::ip::make_address("127.0.0.1"),
                                          static_cast<asio::ip::port_type>(argc > 1 ? std::stoi(argv[1]) : 8080)});
    fmt::print("listening on http://127.0.0.1:{}/\n", acceptor.local_endpoint().port());
    std::fflush(stdout);

    std::function<void()> accept = [&] {
        acceptor.async_accept([&](std::error_code ec, asio::ip::tcp::socket socket) {
            auto s = std::make_shared<asio::ip::tcp::socket>(std::move(socket));
            auto head = std::make_shared<std::string>();
            if (!ec)  // read the request head, then either subscribe or serve the page
                asio::async_read_until(*s, asio::dynamic_buffer(*head, 8192), "\r\n\r\n", [&, s, head](auto ec, auto) {
                    if (!ec && head->starts_with("GET /events"))
                        clients.attach("ticks", ssepp::make_emitter(ssepp::http_body(std::move(*s))),
                                       {.last_event_id = ssepp::last_event_id(*head)});
                    else if (!ec)
                        asio::async_write(*s, asio::buffer(*head = fmt::format("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n"
                            "Content-Length: {}\r\n\r\n{}", page.size(), page)), [s, head](auto, auto) {});
                });
            accept();
        });
    };
    accept();

    asio::steady_timer timer(io);
    std::function<void(int)> tick = [&](int n) {
        clients.send("ticks", {.event = "tick", .data = fmt::format(R"({{"n":{}}})", n)});
        timer.expires_after(std::chrono::seconds(1));
        timer.async_wait([&, n](auto) { tick(n + 1); });
    };
    tick(0);
    io.run();
}
