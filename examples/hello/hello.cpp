// A complete SSE server on raw Asio in one screen: GET /events streams a tick every second to
// every client (curl -N, or the page at /), and a client that reconnects with Last-Event-ID
// resumes from the registry's history. Usage: hello [port]   (0 picks a free port)
#include <ssepp/ssepp.hpp>

#include <asio.hpp>
#include <fmt/format.h>

#include <memory>
#include <string>

constexpr std::string_view page = R"(<!doctype html><title>ssepp hello</title><pre id=log></pre><script>
new EventSource('/events').addEventListener('tick', e => log.textContent += e.lastEventId + ' ' + e.data + '\n');
</script>)";

void serve(asio::ip::tcp::socket socket, ssepp::registry& clients)
{
    auto sock = std::make_shared<asio::ip::tcp::socket>(std::move(socket));
    auto head = std::make_shared<std::string>();
    asio::async_read_until(*sock, asio::dynamic_buffer(*head, 8192), "\r\n\r\n",
                           [sock, head, &clients](std::error_code ec, std::size_t) {
        if (ec)
            return;
        if (head->starts_with("GET /events")) {
            auto stream = ssepp::make_emitter(std::move(*sock));
            clients.attach("ticks", stream, {.last_event_id = ssepp::last_event_id(*head)});
            return;
        }
        auto reply = std::make_shared<std::string>(fmt::format(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{}", page.size(), page));
        asio::async_write(*sock, asio::buffer(*reply), [sock, reply](std::error_code, std::size_t) {});
    });
}

int main(int argc, char** argv)
{
    asio::io_context io;
    ssepp::registry clients;
    const auto port = static_cast<asio::ip::port_type>(argc > 1 ? std::stoi(argv[1]) : 8080);
    asio::ip::tcp::acceptor acceptor(io, {asio::ip::make_address("127.0.0.1"), port});
    fmt::print("listening on http://127.0.0.1:{}/ (events at /events)\n", acceptor.local_endpoint().port());
    std::fflush(stdout);

    std::function<void()> accept = [&] {
        acceptor.async_accept([&](std::error_code ec, asio::ip::tcp::socket socket) {
            if (!ec)
                serve(std::move(socket), clients);
            accept();
        });
    };
    accept();

    asio::steady_timer timer(io);
    std::function<void(int)> tick = [&](int n) {
        clients.send("ticks", {.event = "tick", .data = fmt::format("{{\"n\":{}}}", n)});
        timer.expires_after(std::chrono::seconds(1));
        timer.async_wait([&, n](std::error_code) { tick(n + 1); });
    };
    tick(0);
    io.run();
}
