// Adapting an HTTP stack whose connection is not a plain stream. Many stacks hand a streaming
// handler a response object that sends whole body pieces and frames them itself (Drogon's
// ResponseStream, cpp-httplib's DataSink, a Beast serializer, an HTTP/2 stream). ssepp needs
// only get_executor(), async_write_some() and close() from it: a dozen lines of glue.
//
// `toy::streaming_response` stands in for such a stack: it has written its own head and frames
// each piece as an HTTP/1.1 chunk. Run it and `curl -N http://127.0.0.1:<port>/`.
#include <ssepp/ssepp.hpp>

#include <asio.hpp>
#include <fmt/format.h>

#include <deque>
#include <memory>
#include <string>

namespace toy {

/// The stack's object: sends body pieces in order, one completion per piece.
class streaming_response : public std::enable_shared_from_this<streaming_response> {
public:
    explicit streaming_response(asio::ip::tcp::socket s) : socket_(std::move(s)) {}
    asio::any_io_executor get_executor() { return socket_.get_executor(); }

    void begin()  // the stack writes its head, chunked
    {
        send_piece("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache, no-transform\r\n"
                   "Transfer-Encoding: chunked\r\n\r\n", false, [](std::error_code) {});
    }
    void async_send(std::string piece, std::function<void(std::error_code)> done)
    {
        send_piece(std::move(piece), true, std::move(done));
    }
    void finish(std::error_code& ec)
    {
        socket_.shutdown(asio::socket_base::shutdown_send, ec);
        socket_.close(ec);
    }

private:
    void send_piece(std::string piece, bool chunk, std::function<void(std::error_code)> done)
    {
        if (chunk)
            piece = fmt::format("{:x}\r\n{}\r\n", piece.size(), piece);
        auto bytes = std::make_shared<std::string>(std::move(piece));
        asio::async_write(socket_, asio::buffer(*bytes),
                          [bytes, done = std::move(done)](std::error_code ec, std::size_t) { done(ec); });
    }
    asio::ip::tcp::socket socket_;
};

} // namespace toy

/// The glue: an ssepp::transport over the stack's response object.
struct stack_transport {
    using executor_type = asio::any_io_executor;
    std::shared_ptr<toy::streaming_response> response;

    executor_type get_executor() { return response->get_executor(); }

    template <class ConstBuffers, class Handler>
    void async_write_some(const ConstBuffers& buffers, Handler&& handler)
    {
        // The emitter gathers whole frames; hand them to the stack as one piece.
        std::string piece(asio::buffer_size(buffers), '\0');
        asio::buffer_copy(asio::buffer(piece), buffers);
        const auto n = piece.size();
        response->async_send(std::move(piece),
                             [h = std::forward<Handler>(handler), n](std::error_code ec) mutable {
                                 std::move(h)(ec, ec ? 0 : n);
                             });
    }

    void close(std::error_code& ec) { response->finish(ec); }
};
static_assert(ssepp::transport<stack_transport>);

int main(int argc, char** argv)
{
    asio::io_context io;
    const auto port = static_cast<asio::ip::port_type>(argc > 1 ? std::stoi(argv[1]) : 8081);
    asio::ip::tcp::acceptor acceptor(io, {asio::ip::make_address("127.0.0.1"), port});
    fmt::print("listening on http://127.0.0.1:{}/\n", acceptor.local_endpoint().port());
    std::fflush(stdout);

    ssepp::basic_registry<std::string, ssepp::basic_emitter<stack_transport>> clients;
    std::function<void()> accept = [&] {
        acceptor.async_accept([&](std::error_code ec, asio::ip::tcp::socket socket) {
            if (!ec) {
                auto response = std::make_shared<toy::streaming_response>(std::move(socket));
                response->begin();
                // The stack wrote the head and frames the body, so its transport goes to the
                // emitter as it is: no ssepp::http_body around it.
                clients.attach("all", ssepp::make_emitter(stack_transport{response}));
            }
            accept();
        });
    };
    accept();

    asio::steady_timer timer(io);
    std::function<void(int)> tick = [&](int n) {
        clients.send("all", {.data = fmt::format("tick {}", n)});
        timer.expires_after(std::chrono::seconds(1));
        timer.async_wait([&, n](std::error_code) { tick(n + 1); });
    };
    tick(0);
    io.run();
}
