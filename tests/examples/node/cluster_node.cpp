// tests/examples/node/cluster_node.cpp
// The smallest cluster node, as a process the failover tests can SIGKILL: one
// ssepp::redis::node on a strand behind the examples' HTTP front.
//   GET  /events/<key>                 the key's stream: resumes from Last-Event-ID (header, or
//                                      ?lastEventId=), else replays the shared history; an
//                                      "event: gap" first when the node says events were lost
//   POST /publish/<key>?count=N&from=I publishes data "I" .. "I+N-1" in that order; answers
//                                      {"ids": [id or null, ...]} once every send completed:
//                                      200 when all were published, 503 when any failed
//   GET  /ready                        200 once the node's bus is subscribed, else 503
// It prints "cluster_node listening on http://HOST:PORT/" first (tests/examples/support/process.hpp).
#include "common/cli.hpp"
#include "common/http.hpp"
#include "common/server_main.hpp"

#include <ssepp/redis/cluster.hpp>
#include <ssepp/request.hpp>

#include <asio.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <charconv>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace {

using common::http::request;
using common::http::response;
namespace redis = ssepp::redis;

std::optional<long long> number(const std::optional<std::string>& s)
{
    long long v = 0;
    if (!s || std::from_chars(s->data(), s->data() + s->size(), v).ec != std::errc{})
        return std::nullopt;
    return v;
}

// An answer on a socket the HTTP front gave away (take_socket): the publish answers once Redis
// did, after the front's handler returned. Runs on the socket's strand.
void answer(std::shared_ptr<asio::ip::tcp::socket> socket, int status, const std::string& body)
{
    auto text = std::make_shared<std::string>(fmt::format(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        status, common::http::reason_phrase(status), body.size(), body));
    asio::async_write(*socket, asio::buffer(*text), [socket, text](std::error_code, std::size_t) {
        std::error_code ignored;
        socket->shutdown(asio::socket_base::shutdown_send, ignored);
        socket->close(ignored);
    });
}

// One POST /publish: the ids as the sends complete (on the node's strand, in any order).
struct batch {
    std::shared_ptr<asio::ip::tcp::socket> socket;
    std::vector<std::optional<std::string>> ids;
    std::string first_error;
    std::size_t left;

    void done(std::size_t i, std::error_code ec, std::string id)
    {
        if (ec && first_error.empty())
            first_error = ec.message();
        if (!ec)
            ids[i] = std::move(id);
        if (--left > 0)
            return;
        nlohmann::json j{{"ids", nlohmann::json::array()}};
        bool all = true;
        for (auto& id : ids) {
            all = all && id.has_value();
            j["ids"].push_back(id ? nlohmann::json(*id) : nlohmann::json(nullptr));
        }
        if (!all)
            j["error"] = first_error;
        asio::post(socket->get_executor(), [s = socket, all, body = j.dump()] { answer(s, all ? 200 : 503, body); });
    }
};

class front {
public:
    explicit front(std::shared_ptr<redis::node> node) : node_(std::move(node)) {}

    common::http::reply handle(request& r)
    {
        if (r.method == "GET" && r.path == "/ready")
            return node_->is_ready() ? response::text(200, "ready\n") : response::error(503, "bus not subscribed");
        if (r.method == "GET" && r.path.starts_with("/events/") && r.path.size() > 8)
            return events(r.path.substr(8), r);
        if (r.method == "POST" && r.path.starts_with("/publish/") && r.path.size() > 9)
            return publish(r.path.substr(9), r);
        return response::error(404, "GET /events/<key>, POST /publish/<key>?count=N&from=I, GET /ready");
    }

private:
    common::http::reply events(std::string key, const request& r)
    {
        ssepp::attach_options o;
        o.last_event_id = ssepp::last_event_id(r.header("Last-Event-ID"), r.target);
        o.otherwise = ssepp::replay::all;
        o.on_gap = ssepp::event{.event = "gap", .data = o.last_event_id.value_or("")};
        return common::http::take_socket{[node = node_, key = std::move(key), o = std::move(o)](asio::ip::tcp::socket s) {
            auto em = ssepp::make_emitter(ssepp::http_body(std::move(s)));
            node->async_attach(key, em, o, [em](std::error_code ec, ssepp::attach_result) {
                if (!ec)
                    return;
                // Nothing attached, nothing written yet (an emitter writes only once started):
                // the client gets a 503 it can retry, not a stream that never comes. The socket
                // is taken from under the http_body, whose head was never sent.
                asio::post(em->get_executor(), [em, ec] {
                    auto socket = std::make_shared<asio::ip::tcp::socket>(std::move(em->transport().next_layer()));
                    answer(socket, 503, nlohmann::json{{"error", ec.message()}}.dump());
                });
            });
        }};
    }

    common::http::reply publish(std::string key, const request& r)
    {
        const auto count = number(r.query("count")).value_or(1);
        const auto from = number(r.query("from"));
        if (!from || count < 1 || count > 10000)
            return response::error(400, "count (1..10000) and from are numbers");
        return common::http::take_socket{[node = node_, key = std::move(key), count, from = *from](asio::ip::tcp::socket s) {
            auto b = std::make_shared<batch>();
            b->socket = std::make_shared<asio::ip::tcp::socket>(std::move(s));
            b->ids.resize(static_cast<std::size_t>(count));
            b->left = b->ids.size();
            // From this one thread, in order: the node publishes them in this order.
            for (std::size_t i = 0; i < b->ids.size(); ++i)
                node->async_send(key, ssepp::event{.data = std::to_string(from + static_cast<long long>(i))},
                                 [b, i](std::error_code ec, std::string id) { b->done(i, ec, std::move(id)); });
        }};
    }

    std::shared_ptr<redis::node> node_;
};

} // namespace

int main(int argc, char** argv)
{
    common::server_flags server;
    std::string url = "redis://127.0.0.1:6379";
    std::int64_t reconnect_ms = 20;
    std::int64_t max_reconnect_ms = 200;
    std::size_t stream_max_events = redis::cluster_options{}.stream_max_events;
    std::size_t history_events = 4096;
    common::cli args("cluster_node");
    server.add_to(args)
        .flag("--redis", url, "the cluster's Redis (redis://host:port/db)")
        .flag("--reconnect-ms", reconnect_ms, "first wait before reconnecting to Redis")
        .flag("--max-reconnect-ms", max_reconnect_ms, "longest wait between reconnection attempts")
        .flag("--stream-max-events", stream_max_events, "entries each key's stream keeps (about)")
        .flag("--history-events", history_events, "events this node keeps per key")
        .parse(argc, argv);
    try {
        asio::io_context io;
        redis::cluster_options o;
        o.server = redis::parse_url(url);
        o.reconnect_delay = std::chrono::milliseconds(reconnect_ms);
        o.max_reconnect_delay = std::chrono::milliseconds(max_reconnect_ms);
        o.stream_max_events = stream_max_events;
        // A strand: the front's handlers run on several threads.
        auto node = redis::node::create(asio::make_strand(io), std::move(o), {.max_events = history_events});
        front f(node);
        common::http::server http(io, server.endpoint(), [&](request& r) { return f.handle(r); });
        fmt::print("cluster_node listening on http://{}:{}/\n", server.host, http.local_endpoint().port());
        std::fflush(stdout);
        asio::signal_set signals(io, SIGINT, SIGTERM);
        signals.async_wait([&](std::error_code, int) {
            http.stop();
            node->close();
            io.stop();
        });
        common::run(io, server.threads);
    } catch (const std::exception& e) {
        fmt::print(stderr, "cluster_node: {}\n", e.what());
        return 1;
    }
    return 0;
}
