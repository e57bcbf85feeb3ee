// tests/redis/helpers.hpp
// What the ssepp::redis tests share: a redis_client (an io_context on a thread of its own, a
// connection on it, its hooks recorded) and call(), one command run on the connection's
// executor and waited for with a bound.
#pragma once

#include <ssepp/redis/connection.hpp>
#include <ssepp/redis/subscriber.hpp>

#include "../support/loopback.hpp"
#include "../support/redis_server.hpp"

#include "../support/asio.hpp"
#include "../catch.hpp"

#include <atomic>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace test {

namespace redis = ssepp::redis;

struct result {
    ssepp::error_code ec;
    redis::reply value;
};

/// Short delays so that reconnect tests take tenths of seconds, not seconds.
inline redis::connection::options fast_options(redis::endpoint server)
{
    redis::connection::options o;
    o.server = std::move(server);
    o.connect_timeout = 2s;
    o.reconnect_delay = 20ms;
    o.max_reconnect_delay = 200ms;
    return o;
}

/// Records a connection's hooks (they run on its executor; the test reads from its thread).
struct hook_log {
    std::atomic<int> connects{0};
    collector<ssepp::error_code> disconnects;

    void install(redis::connection::options& o)
    {
        o.on_connect = [this] { ++connects; };
        o.on_disconnect = [this](ssepp::error_code ec) { disconnects.push(ec); };
    }
};

/// Runs one command on c's executor; throws if it does not complete within `timeout`.
inline result call(const std::shared_ptr<redis::connection>& c, std::vector<std::string> args,
                   std::chrono::milliseconds timeout = 5s)
{
    auto done = std::make_shared<std::promise<result>>();
    auto fut = done->get_future();
    asio::post(c->get_executor(), [c, done, args = std::move(args)] {
        std::vector<std::string_view> views(args.begin(), args.end());
        c->async_command(views, [done](ssepp::error_code ec, redis::reply r) { done->set_value({ec, std::move(r)}); });
    });
    if (fut.wait_for(timeout) != std::future_status::ready)
        throw std::runtime_error("test::call: no completion in time");
    return fut.get();
}

/// An io_context on a thread of its own with one connection on it, hooks recorded.
class redis_client {
public:
    explicit redis_client(redis::endpoint server, std::optional<redis::connection::options> opts = std::nullopt)
    {
        auto o = opts ? std::move(*opts) : fast_options(std::move(server));
        hooks.install(o);
        conn = redis::connection::create(io.get_executor(), std::move(o));
    }
    ~redis_client()
    {
        run_on(io.get_executor(), [c = conn] { c->close(); });
    }

    bool wait_connected(int n = 1, std::chrono::milliseconds timeout = 5s)
    {
        return eventually([&] { return hooks.connects.load() >= n; }, timeout);
    }

    result operator()(std::vector<std::string> args, std::chrono::milliseconds timeout = 5s)
    {
        return call(conn, std::move(args), timeout);
    }

    asio::io_context io;
    hook_log hooks;
    std::shared_ptr<redis::connection> conn;

private:
    asio::executor_work_guard<asio::io_context::executor_type> work_{io.get_executor()};
    run_in_background runner_{io};
};

} // namespace test

namespace Catch {
template <>
struct StringMaker<ssepp::redis::reply> {
    static std::string convert(const ssepp::redis::reply& r) { return ssepp::redis::to_string(r); }
};
} // namespace Catch
