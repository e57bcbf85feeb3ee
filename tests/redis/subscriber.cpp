// Tests of ssepp/redis/subscriber.hpp against a real redis-server: delivery in order, patterns,
// resubscription after the server died, unsubscribing.
#include <ssepp/redis/subscriber.hpp>

#include "helpers.hpp"

using namespace test;
using redis::errc;
using redis::reply;

namespace {

struct message {
    std::string channel, payload;
    friend bool operator==(const message&, const message&) = default;
};

/// A subscriber on its own io_context thread, its messages and hooks recorded.
class sub_client {
public:
    explicit sub_client(redis::endpoint server)
    {
        auto o = fast_options(std::move(server));
        o.on_connect = [this] { ++subscribed; };
        o.on_disconnect = [this](ssepp::error_code ec) { disconnects.push(ec); };
        sub = redis::subscriber::create(io.get_executor(), std::move(o));
    }
    ~sub_client()
    {
        run_on(io.get_executor(), [s = sub] { s->close(); });
    }

    redis::subscriber::message_handler recorder()
    {
        return [this](std::string_view ch, std::string_view payload) {
            messages.push({std::string(ch), std::string(payload)});
        };
    }

    /// subscribe (or psubscribe) on the executor; waits for the server's confirmation.
    ssepp::error_code subscribe(std::string name, bool pattern = false)
    {
        auto done = std::make_shared<std::promise<ssepp::error_code>>();
        auto fut = done->get_future();
        run_on(io.get_executor(), [&] {
            auto d = [done](ssepp::error_code ec) { done->set_value(ec); };
            if (pattern)
                sub->psubscribe(name, recorder(), d);
            else
                sub->subscribe(name, recorder(), d);
        });
        if (fut.wait_for(5s) != std::future_status::ready)
            throw std::runtime_error("subscribe: no confirmation in time");
        return fut.get();
    }

    asio::io_context io;
    std::atomic<int> subscribed{0};
    collector<ssepp::error_code> disconnects;
    collector<message> messages;
    std::shared_ptr<redis::subscriber> sub;

private:
    asio::executor_work_guard<asio::io_context::executor_type> work_{io.get_executor()};
    run_in_background runner_{io};
};

/// Publishes n messages "<prefix><i>" to channel from one handler (pipelined); waits for all.
void publish(redis_client& pub, const std::string& channel, const std::string& prefix, int n, int expect_receivers = 1)
{
    std::atomic<int> done{0}, wrong{0};
    REQUIRE(run_on(pub.io.get_executor(), [&, conn = pub.conn] {
        for (int i = 0; i < n; ++i)
            conn->async_command({"PUBLISH", channel, prefix + std::to_string(i)}, [&](ssepp::error_code ec, reply r) {
                if (ec || r.integer() != expect_receivers)
                    ++wrong;
                ++done;
            });
    }));
    REQUIRE(eventually([&] { return done.load() == n; }));
    CHECK(wrong.load() == 0);
}

} // namespace

TEST_CASE("subscriber: messages arrive in order, byte for byte")
{
    redis_server server;
    sub_client s(server.endpoint());
    redis_client pub(server.endpoint());
    REQUIRE(pub.wait_connected());
    CHECK_FALSE(s.subscribe("news"));
    CHECK(eventually([&] { return s.subscribed.load() == 1; }));

    const std::string binary("a\0b\r\n\xff", 6);
    CHECK(pub({"PUBLISH", "news", binary}).value == reply::integer(1));
    REQUIRE(s.messages.wait(1));
    CHECK(s.messages.at(0) == message{"news", binary});

    constexpr int n = 2'000;
    publish(pub, "news", "m", n);
    REQUIRE(s.messages.wait(1 + n, 10s));
    bool in_order = true;
    for (int i = 0; i < n; ++i)
        in_order = in_order && s.messages.at(static_cast<std::size_t>(1 + i)) == message{"news", "m" + std::to_string(i)};
    CHECK(in_order);
    CHECK(pub({"PUBLISH", "other", "x"}).value == reply::integer(0));  // not subscribed there
    CHECK(s.subscribed.load() == 1);
}

TEST_CASE("subscriber: patterns deliver the matching channel")
{
    redis_server server;
    sub_client s(server.endpoint());
    redis_client pub(server.endpoint());
    REQUIRE(pub.wait_connected());
    CHECK_FALSE(s.subscribe("user.*", true));
    CHECK(pub({"PUBLISH", "user.42", "hi"}).value == reply::integer(1));
    CHECK(pub({"PUBLISH", "admin.1", "no"}).value == reply::integer(0));
    CHECK(pub({"PUBLISH", "user.7", "yo"}).value == reply::integer(1));
    REQUIRE(s.messages.wait(2));
    CHECK(s.messages.at(0) == message{"user.42", "hi"});
    CHECK(s.messages.at(1) == message{"user.7", "yo"});
}

TEST_CASE("subscriber: subscriptions made before the link is up are confirmed once it is")
{
    redis_server server;
    const auto ep = server.endpoint();
    server.stop();
    sub_client s(ep);
    auto done = std::make_shared<std::promise<ssepp::error_code>>();
    auto fut = done->get_future();
    run_on(s.io.get_executor(), [&] {
        s.sub->subscribe("early", s.recorder(), [done](ssepp::error_code ec) { done->set_value(ec); });
    });
    REQUIRE(s.disconnects.wait(1));
    CHECK(fut.wait_for(100ms) == std::future_status::timeout);
    server.start();
    REQUIRE(fut.wait_for(5s) == std::future_status::ready);
    CHECK_FALSE(fut.get());
    CHECK(eventually([&] { return s.subscribed.load() == 1; }));
    redis_client pub(ep);
    REQUIRE(pub.wait_connected());
    CHECK(pub({"PUBLISH", "early", "1"}).value == reply::integer(1));
    REQUIRE(s.messages.wait(1));
}

TEST_CASE("subscriber: after the server dies it subscribes again by itself and reports it")
{
    redis_server server;
    sub_client s(server.endpoint());
    redis_client pub(server.endpoint());
    REQUIRE(pub.wait_connected());
    CHECK_FALSE(s.subscribe("a"));
    CHECK_FALSE(s.subscribe("b.*", true));
    REQUIRE(eventually([&] { return s.subscribed.load() == 1; }));
    publish(pub, "a", "first", 10);
    REQUIRE(s.messages.wait(10));

    server.kill();
    REQUIRE(s.disconnects.wait(1));
    CHECK(s.disconnects.at(0) == errc::connection_lost);
    bool active = true;
    run_on(s.io.get_executor(), [&] { active = s.sub->is_active(); });
    CHECK_FALSE(active);
    server.start();
    // The report comes once both subscriptions are active again on the new link.
    REQUIRE(eventually([&] { return s.subscribed.load() == 2; }, 5s));
    run_on(s.io.get_executor(), [&] { active = s.sub->is_active(); });
    CHECK(active);
    REQUIRE(pub.wait_connected(2));
    // Published right after the report: every one arrives, in order.
    publish(pub, "a", "second", 500);
    CHECK(pub({"PUBLISH", "b.x", "pattern"}).value == reply::integer(1));
    REQUIRE(s.messages.wait(10 + 500 + 1, 10s));
    bool in_order = true;
    for (int i = 0; i < 500; ++i)
        in_order = in_order && s.messages.at(static_cast<std::size_t>(10 + i)) == message{"a", "second" + std::to_string(i)};
    CHECK(in_order);
    CHECK(s.messages.at(510) == message{"b.x", "pattern"});
}

TEST_CASE("subscriber: unsubscribe stops deliveries, subscribing again at once works")
{
    redis_server server;
    sub_client s(server.endpoint());
    redis_client pub(server.endpoint());
    REQUIRE(pub.wait_connected());
    CHECK_FALSE(s.subscribe("c"));
    run_on(s.io.get_executor(), [&] { s.sub->unsubscribe("c"); });
    REQUIRE(eventually([&] {
        return pub({"PUBSUB", "NUMSUB", "c"}).value == reply::array({reply::string("c"), reply::integer(0)});
    }, 5s, 10ms));
    CHECK(pub({"PUBLISH", "c", "dropped"}).value == reply::integer(0));

    // UNSUBSCRIBE and SUBSCRIBE of the same channel in one go, then of the only channel and a
    // new one (the subscription count on the server passes through 0 without the anchor).
    auto confirmed = std::make_shared<std::promise<ssepp::error_code>>();
    auto fut = confirmed->get_future();
    run_on(s.io.get_executor(), [&] {
        s.sub->subscribe("d", s.recorder());
        s.sub->unsubscribe("d");
        s.sub->subscribe("d", s.recorder(), [confirmed](ssepp::error_code ec) { confirmed->set_value(ec); });
    });
    REQUIRE(fut.wait_for(5s) == std::future_status::ready);
    CHECK_FALSE(fut.get());
    REQUIRE(eventually([&] {
        return pub({"PUBSUB", "NUMSUB", "d"}).value == reply::array({reply::string("d"), reply::integer(1)});
    }, 5s, 10ms));
    CHECK(pub({"PUBLISH", "d", "kept"}).value == reply::integer(1));
    REQUIRE(s.messages.wait(1));
    CHECK(s.messages.at(0) == message{"d", "kept"});

    run_on(s.io.get_executor(), [&] {
        s.sub->unsubscribe("d");
        s.sub->subscribe("e", s.recorder());
    });
    REQUIRE(eventually([&] {
        return pub({"PUBSUB", "NUMSUB", "e"}).value == reply::array({reply::string("e"), reply::integer(1)});
    }, 5s, 10ms));
    CHECK(pub({"PUBLISH", "e", "new"}).value == reply::integer(1));
    REQUIRE(s.messages.wait(2));
    CHECK(s.messages.at(1) == message{"e", "new"});
    CHECK(s.messages.size() == 2);
}

TEST_CASE("subscriber: close() fails pending confirmations with closed")
{
    redis_server server;
    const auto ep = server.endpoint();
    server.stop();
    sub_client s(ep);
    auto done = std::make_shared<std::promise<ssepp::error_code>>();
    auto fut = done->get_future();
    run_on(s.io.get_executor(), [&] {
        s.sub->subscribe("x", s.recorder(), [done](ssepp::error_code ec) { done->set_value(ec); });
        s.sub->close();
    });
    REQUIRE(fut.wait_for(5s) == std::future_status::ready);
    CHECK(fut.get() == errc::closed);
}
