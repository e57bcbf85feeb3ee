// examples/common/http.cpp
// One connection = one llhttp parser, one read buffer, an ordered write queue and an idle
// timer, all on the connection's strand. A request is dispatched when llhttp reports the
// message complete; the parser is paused meanwhile so pipelined bytes wait their turn.
#include "common/http.hpp"

#include <ssepp/request.hpp>

#include <asio/bind_executor.hpp>
#include <asio/post.hpp>
#include <asio/steady_timer.hpp>
#include <asio/strand.hpp>
#include <asio/write.hpp>
#include <fmt/format.h>
#include <llhttp.h>

#include <array>
#include <deque>
#include <mutex>
#include <set>

namespace common::http {

namespace {

bool iequals(std::string_view a, std::string_view b)
{
    return ssepp::detail::iequals(a, b);
}

} // namespace

std::string_view request::header(std::string_view name) const
{
    for (const auto& [k, v] : headers)
        if (iequals(k, name))
            return v;
    return {};
}

std::optional<std::string> request::query(std::string_view name) const
{
    return ssepp::query_parameter(target, name);
}

std::optional<std::string> request::cookie(std::string_view name) const
{
    auto cookies = header("Cookie");
    while (!cookies.empty()) {
        const auto semi = cookies.find(';');
        auto pair = ssepp::detail::trim_ows(cookies.substr(0, semi));
        const auto eq = pair.find('=');
        if (eq != std::string_view::npos && pair.substr(0, eq) == name)
            return std::string(pair.substr(eq + 1));
        if (semi == std::string_view::npos)
            break;
        cookies.remove_prefix(semi + 1);
    }
    return std::nullopt;
}

response response::json(int status, const nlohmann::json& body)
{
    return {status, "application/json", body.dump(), {}};
}

response response::error(int status, std::string_view reason)
{
    return json(status, {{"error", reason}});
}

response response::html(std::string body)
{
    return {200, "text/html; charset=utf-8", std::move(body), {}};
}

response response::text(int status, std::string body)
{
    return {status, "text/plain; charset=utf-8", std::move(body), {}};
}

response response::empty(int status)
{
    return {status, "", "", {}};
}

std::string_view reason_phrase(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Content Too Large";
    case 415: return "Unsupported Media Type";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Unknown";
    }
}

class connection;

struct server::state {
    asio::io_context& io;
    // On a strand: the accept loop's handlers, the retry timer and stop()'s close never run at
    // once.
    asio::ip::tcp::acceptor acceptor;
    server::handler on_request;
    server::head_check check;
    server_options options;
    std::mutex mtx;
    std::set<std::weak_ptr<connection>, std::owner_less<>> connections;
    bool stopped = false;
    asio::steady_timer retry; // accept again after an error

    state(asio::io_context& io, const asio::ip::tcp::endpoint& ep, server::handler h, server::head_check c,
          server_options o)
        : io(io), acceptor(asio::make_strand(io), ep), on_request(std::move(h)), check(std::move(c)), options(o),
          retry(acceptor.get_executor())
    {
    }

    void accept(std::shared_ptr<state> self);
};

class connection : public std::enable_shared_from_this<connection> {
public:
    connection(asio::ip::tcp::socket socket, std::shared_ptr<server::state> srv)
        : socket_(std::move(socket)), timer_(socket_.get_executor()), srv_(std::move(srv))
    {
        llhttp_settings_init(&settings_);
        settings_.on_message_begin = [](llhttp_t* p) { return self(p)->on_message_begin(); };
        settings_.on_url = [](llhttp_t* p, const char* d, size_t n) { return self(p)->on_url(d, n); };
        settings_.on_header_field = [](llhttp_t* p, const char* d, size_t n) { return self(p)->on_field(d, n); };
        settings_.on_header_value = [](llhttp_t* p, const char* d, size_t n) { return self(p)->on_value(d, n); };
        settings_.on_header_value_complete = [](llhttp_t* p) { return self(p)->on_value_complete(); };
        settings_.on_headers_complete = [](llhttp_t* p) { return self(p)->on_headers_complete(); };
        settings_.on_body = [](llhttp_t* p, const char* d, size_t n) { return self(p)->on_body(d, n); };
        settings_.on_message_complete = [](llhttp_t*) { return int(HPE_PAUSED); };
        llhttp_init(&parser_, HTTP_REQUEST, &settings_);
        parser_.data = this;
    }

    void start()
    {
        arm_idle();
        read();
    }

    void close()
    {
        asio::post(socket_.get_executor(), [self = shared_from_this()] {
            std::error_code ec;
            self->timer_.cancel();
            self->socket_.close(ec);
        });
    }

private:
    static connection* self(llhttp_t* p) { return static_cast<connection*>(p->data); }

    void arm_idle()
    {
        timer_.expires_after(srv_->options.idle_timeout);
        timer_.async_wait([self = shared_from_this()](std::error_code ec) {
            if (!ec) {
                std::error_code ignored;
                self->socket_.close(ignored);
            }
        });
    }

    void read()
    {
        socket_.async_read_some(asio::buffer(buf_), [self = shared_from_this()](std::error_code ec, std::size_t n) {
            if (ec) {
                self->timer_.cancel();
                return;
            }
            self->arm_idle();
            self->feed(self->buf_.data(), n);
        });
    }

    // Feeds bytes to llhttp until they are used up (then reads more) or a request is ready.
    void feed(const char* data, std::size_t n)
    {
        const auto err = llhttp_execute(&parser_, data, n);
        if (err == HPE_OK) {
            read();
            return;
        }
        if (err == HPE_PAUSED) {
            const char* stop = llhttp_get_error_pos(&parser_);
            leftover_.assign(stop, static_cast<std::size_t>(data + n - stop));
            if (early_) {
                // The body was not read, so the connection cannot carry another request.
                send(std::move(*early_), true);
                return;
            }
            dispatch();
            return;
        }
        if (err == HPE_PAUSED_UPGRADE) {
            send(response::error(501, "protocol upgrade not supported"), true);
            return;
        }
        const int status = head_too_large_ ? 431 : 400;
        send(response::error(status, fmt::format("malformed request: {}", llhttp_get_error_reason(&parser_))), true);
    }

    void dispatch()
    {
        const bool keep_alive = llhttp_should_keep_alive(&parser_) != 0;
        reply r = [&]() -> reply {
            try {
                return srv_->on_request(req_);
            } catch (const std::exception& e) {
                return response::error(500, e.what());
            }
        }();
        if (auto* stream = std::get_if<take_socket>(&r)) {
            timer_.cancel();
            stream->handler(std::move(socket_));
            return;
        }
        send(std::move(std::get<response>(r)), !keep_alive);
    }

    void send(const response& res, bool close_after)
    {
        std::string out = fmt::format("HTTP/1.1 {} {}\r\n", res.status, reason_phrase(res.status));
        if (!res.content_type.empty())
            out += fmt::format("Content-Type: {}\r\n", res.content_type);
        if (res.status >= 200 && res.status != 204 && res.status != 304)
            out += fmt::format("Content-Length: {}\r\n", res.body.size());
        for (const auto& [k, v] : res.headers)
            out += fmt::format("{}: {}\r\n", k, v);
        if (close_after)
            out += "Connection: close\r\n";
        out += "\r\n";
        out += res.body;
        write(std::move(out), close_after ? after_write::close : after_write::next_request);
    }

    enum class after_write { nothing, next_request, close };

    // Writes go out one at a time in order: a 100 Continue may still be in flight when the
    // final response is ready.
    void write(std::string bytes, after_write then)
    {
        writes_.emplace_back(std::move(bytes), then);
        if (writes_.size() == 1)
            write_front();
    }

    void write_front()
    {
        asio::async_write(socket_, asio::buffer(writes_.front().first),
                          [self = shared_from_this()](std::error_code ec, std::size_t) {
                              const auto then = self->writes_.front().second;
                              self->writes_.pop_front();
                              if (ec) {
                                  self->timer_.cancel();
                                  return;
                              }
                              if (!self->writes_.empty())
                                  self->write_front();
                              if (then == after_write::close) {
                                  std::error_code ignored;
                                  self->socket_.shutdown(asio::socket_base::shutdown_send, ignored);
                                  self->timer_.cancel();
                                  self->drain_then_close();
                              } else if (then == after_write::next_request) {
                                  self->next_request();
                              }
                          });
    }

    // After a rejection the client may still be sending its body: read and discard it for a
    // moment so that closing does not reset the connection before the client reads our answer.
    void drain_then_close()
    {
        timer_.expires_after(std::chrono::seconds(2));
        timer_.async_wait([self = shared_from_this()](std::error_code ec) {
            if (!ec) {
                std::error_code ignored;
                self->socket_.close(ignored);
            }
        });
        drain();
    }

    void drain()
    {
        socket_.async_read_some(asio::buffer(buf_), [self = shared_from_this()](std::error_code ec, std::size_t) {
            if (!ec) {
                self->drain();
                return;
            }
            self->timer_.cancel();
            std::error_code ignored;
            self->socket_.close(ignored);
        });
    }

    void next_request()
    {
        llhttp_resume(&parser_);
        auto rest = std::move(leftover_);
        leftover_.clear();
        if (rest.empty())
            read();
        else
            feed(rest.data(), rest.size());
    }

    int on_message_begin()
    {
        req_ = request{};
        early_.reset();
        field_.clear();
        value_.clear();
        head_bytes_ = 0;
        head_too_large_ = false;
        max_body_ = srv_->options.max_body_bytes;
        return 0;
    }

    bool count_head(std::size_t n)
    {
        head_bytes_ += n;
        head_too_large_ = head_bytes_ > srv_->options.max_head_bytes;
        return !head_too_large_;
    }

    int on_url(const char* d, std::size_t n)
    {
        if (!count_head(n))
            return -1;
        req_.target.append(d, n);
        return 0;
    }

    int on_field(const char* d, std::size_t n)
    {
        if (!count_head(n))
            return -1;
        field_.append(d, n);
        return 0;
    }

    int on_value(const char* d, std::size_t n)
    {
        if (!count_head(n))
            return -1;
        value_.append(d, n);
        return 0;
    }

    int on_value_complete()
    {
        req_.headers.emplace_back(std::move(field_), std::move(value_));
        field_.clear();
        value_.clear();
        return 0;
    }

    int on_headers_complete()
    {
        req_.method = llhttp_method_name(static_cast<llhttp_method_t>(parser_.method));
        req_.path = req_.target.substr(0, req_.target.find('?'));
        if (parser_.flags & F_CONTENT_LENGTH)
            req_.content_length = parser_.content_length;
        if (srv_->check) {
            if (auto rejected = srv_->check(req_, max_body_)) {
                early_ = std::move(*rejected);
                return HPE_PAUSED;
            }
        }
        if (req_.content_length && *req_.content_length > max_body_) {
            early_ = response::error(413, fmt::format("body of {} bytes is over the limit of {} bytes",
                                                      *req_.content_length, max_body_));
            return HPE_PAUSED;
        }
        if (iequals(req_.header("Expect"), "100-continue"))
            write("HTTP/1.1 100 Continue\r\n\r\n", after_write::nothing);
        if (req_.content_length)
            req_.body.reserve(static_cast<std::size_t>(*req_.content_length));
        return 0;
    }

    int on_body(const char* d, std::size_t n)
    {
        if (req_.body.size() + n > max_body_) {
            early_ = response::error(413, fmt::format("body is over the limit of {} bytes", max_body_));
            return HPE_PAUSED;
        }
        req_.body.append(d, n);
        return 0;
    }

    asio::ip::tcp::socket socket_;
    asio::steady_timer timer_;
    std::shared_ptr<server::state> srv_;
    llhttp_settings_t settings_{};
    llhttp_t parser_{};
    std::array<char, 16384> buf_{};
    request req_;
    std::string field_;
    std::string value_;
    std::string leftover_;
    std::optional<response> early_;
    std::deque<std::pair<std::string, after_write>> writes_;
    std::size_t head_bytes_ = 0;
    std::size_t max_body_ = 0;
    bool head_too_large_ = false;
};

void server::state::accept(std::shared_ptr<state> self)
{
    acceptor.async_accept(asio::make_strand(io), [self](std::error_code ec, asio::ip::tcp::socket socket) {
        {
            // After stop(), whatever the outcome: accepting again on the closed acceptor fails
            // at once (bad_descriptor), and retrying that would spin forever, keeping io.run()
            // from returning.
            std::lock_guard lock(self->mtx);
            if (self->stopped)
                return;
        }
        if (ec == asio::error::operation_aborted || ec == asio::error::bad_descriptor)
            return;
        if (ec) {
            // Out of descriptors, a connection reset before it was accepted...: try again in
            // a moment rather than at once.
            self->retry.expires_after(std::chrono::milliseconds(50));
            self->retry.async_wait([self](std::error_code wait_ec) {
                if (!wait_ec)
                    self->accept(self);
            });
            return;
        }
        {
            auto c = std::make_shared<connection>(std::move(socket), self);
            {
                std::lock_guard lock(self->mtx);
                if (self->stopped)
                    return;
                // Forget connections that are gone, so the set stays the size of the live ones.
                std::erase_if(self->connections, [](const auto& w) { return w.expired(); });
                self->connections.insert(c);
            }
            c->start();
        }
        self->accept(self);
    });
}

server::server(asio::io_context& io, const asio::ip::tcp::endpoint& endpoint, handler on_request,
               head_check check, server_options options)
    : state_(std::make_shared<state>(io, endpoint, std::move(on_request), std::move(check), options))
{
    state_->accept(state_);
}

server::~server()
{
    stop();
}

asio::ip::tcp::endpoint server::local_endpoint() const
{
    return state_->acceptor.local_endpoint();
}

void server::stop()
{
    std::set<std::weak_ptr<connection>, std::owner_less<>> connections;
    {
        std::lock_guard lock(state_->mtx);
        if (state_->stopped)
            return;
        state_->stopped = true;
        connections.swap(state_->connections);
    }
    asio::post(state_->acceptor.get_executor(), [s = state_] {
        std::error_code ec;
        s->acceptor.close(ec);
    });
    for (auto& w : connections)
        if (auto c = w.lock())
            c->close();
}

} // namespace common::http
