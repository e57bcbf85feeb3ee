// Tests of ssepp/redis/connection.hpp against a real redis-server on 127.0.0.1: replies, binary
// safety, pipelining, errors, reconnection after the server dies, shutdown with work in flight.
#include <ssepp/redis/connection.hpp>

#include "helpers.hpp"

#include <set>

using namespace test;
using redis::errc;
using redis::reply;

TEST_CASE("connection: commands and every reply type")
{
    redis_server server;
    redis_client c(server.endpoint());
    REQUIRE(c.wait_connected());
    CHECK(c.conn->is_connected());

    CHECK(c({"PING"}).value == reply::status("PONG"));
    CHECK(c({"SET", "k", "v"}).value == reply::status("OK"));
    auto got = c({"GET", "k"});
    CHECK_FALSE(got.ec);
    CHECK(got.value == reply::string("v"));
    CHECK(c({"GET", "missing"}).value.is_nil());
    CHECK(c({"INCRBY", "n", "-5"}).value == reply::integer(-5));
    c({"RPUSH", "l", "a", "b"});
    CHECK(c({"LRANGE", "l", "0", "-1"}).value == reply::array({reply::string("a"), reply::string("b")}));
    CHECK(c({"LRANGE", "none", "0", "-1"}).value == reply::array({}));
    CHECK(c({"EVAL", "return {1, 'two', {3, redis.status_reply('FINE')}, false}", "0"}).value ==
          reply::array({reply::integer(1), reply::string("two"),
                        reply::array({reply::integer(3), reply::status("FINE")}), reply{}}));
    // More than 16 arguments take the other argv path.
    std::vector<std::string> mset{"MSET"};
    for (int i = 0; i < 20; ++i) {
        mset.push_back("m" + std::to_string(i));
        mset.push_back(std::to_string(i * i));
    }
    CHECK(c(mset).value == reply::status("OK"));
    CHECK(c({"GET", "m19"}).value == reply::string("361"));
}

TEST_CASE("connection: a server error is server_error with its text in the reply")
{
    redis_server server;
    redis_client c(server.endpoint());
    REQUIRE(c.wait_connected());
    c({"SET", "s", "text"});
    auto r = c({"INCR", "s"});
    CHECK(r.ec == errc::server_error);
    REQUIRE(r.value.is_error());
    CHECK_THAT(r.value.str(), Catch::Matchers::StartsWith("ERR value is not an integer"));
    r = c({"NOSUCHCOMMAND", "x"});
    CHECK(r.ec == errc::server_error);
    CHECK_THAT(r.value.str(), Catch::Matchers::Contains("unknown command"));
    // The link survives it.
    CHECK(c({"PING"}).value == reply::status("PONG"));
    CHECK(c({}).ec == errc::empty_command);
}

TEST_CASE("connection: binary-safe keys and values, and values larger than hiredis's read size")
{
    redis_server server;
    redis_client c(server.endpoint());
    REQUIRE(c.wait_connected());
    const std::string key("k\0\r\n", 4);
    const std::string value("\0\r\n*3\r\n$-1\r\n\xff\n\r", 15);
    CHECK(c({key, value}).ec == errc::server_error);  // not a command: the key is its name
    CHECK(c({"SET", key, value}).value == reply::status("OK"));
    CHECK(c({"GET", key}).value == reply::string(value));
    CHECK(c({"STRLEN", key}).value == reply::integer(15));

    // 1 MiB of every byte value: many reads of 16 KiB, so the read wait is armed again and again.
    std::string big(1 << 20, '\0');
    for (std::size_t i = 0; i < big.size(); ++i)
        big[i] = static_cast<char>(i * 131 % 256);
    CHECK(c({"SET", "big", big}).value == reply::status("OK"));
    auto r = c({"GET", "big"});
    REQUIRE(r.value.is_string());
    CHECK(r.value.str() == big);
}

TEST_CASE("connection: 10,000 pipelined commands complete in order")
{
    redis_server server;
    redis_client c(server.endpoint());
    REQUIRE(c.wait_connected());
    constexpr int n = 10'000;
    auto results = std::make_shared<std::vector<long long>>();
    std::atomic<int> errors{0};
    std::atomic<int> done{0};
    const auto start = clock::now();
    // Issued all at once from one handler: nothing waits for a reply before the next command.
    REQUIRE(run_on(c.io.get_executor(), [&, conn = c.conn] {
        for (int i = 0; i < n; ++i)
            conn->async_command({"INCR", "counter"}, [&, results](ssepp::error_code ec, reply r) {
                if (ec)
                    ++errors;
                results->push_back(r.integer());
                ++done;
            });
    }));
    REQUIRE(eventually([&] { return done.load() == n; }, 10s));
    const auto elapsed = clock::now() - start;
    CHECK(errors.load() == 0);
    bool in_order = true;
    for (int i = 0; i < n; ++i)
        in_order = in_order && (*results)[static_cast<std::size_t>(i)] == i + 1;
    CHECK(in_order);
    WARN("10,000 pipelined INCR: "
         << std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count() << " ms");
}

TEST_CASE("connection: commands while disconnected fail at once with not_connected")
{
    redis_server server;
    const auto ep = server.endpoint();
    server.stop();  // nothing listens on the port now
    redis_client c(ep);
    REQUIRE(c.hooks.disconnects.wait(2, 5s));  // attempts fail and are retried
    CHECK(c.hooks.disconnects.at(0) == errc::connect_failed);
    CHECK(c.hooks.disconnects.at(1) == errc::connect_failed);
    CHECK(c.hooks.connects.load() == 0);
    const auto start = clock::now();
    auto r = c({"PING"}, 1s);
    CHECK(r.ec == errc::not_connected);
    CHECK(clock::now() - start < 500ms);  // not held until a link comes
    std::string last_error;
    run_on(c.io.get_executor(), [&] { last_error = c.conn->last_error(); });
    CHECK_THAT(last_error, Catch::Matchers::Contains("refused"));

    // And once a server is there, the next attempt connects by itself.
    server.start();
    CHECK(c.wait_connected(1, 5s));
    CHECK(c({"PING"}).value == reply::status("PONG"));
}

TEST_CASE("connection: a killed server fails what was in flight, then the link comes back by itself")
{
    redis_server server;
    redis_client c(server.endpoint());
    REQUIRE(c.wait_connected());
    CHECK(c({"SET", "before", "1"}).value == reply::status("OK"));

    // A BLPOP that never returns, then 100 commands queued behind it on the server.
    auto codes = std::make_shared<std::vector<ssepp::error_code>>();
    std::atomic<int> done{0};
    REQUIRE(run_on(c.io.get_executor(), [&, conn = c.conn] {
        conn->async_command({"BLPOP", "never", "0"}, [&, codes](ssepp::error_code ec, reply) {
            codes->push_back(ec);
            ++done;
        });
        for (int i = 0; i < 100; ++i)
            conn->async_command({"PING"}, [&, codes](ssepp::error_code ec, reply) {
                codes->push_back(ec);
                ++done;
            });
    }));
    std::this_thread::sleep_for(50ms);  // let them reach the server (only makes the test stronger)
    CHECK(done.load() == 0);
    server.kill();

    REQUIRE(eventually([&] { return done.load() == 101; }, 5s));
    for (auto ec : *codes)
        CHECK(ec == errc::connection_lost);
    REQUIRE(c.hooks.disconnects.wait(1, 5s));
    CHECK(c.hooks.disconnects.at(0) == errc::connection_lost);
    CHECK(c({"PING"}, 1s).ec == errc::not_connected);

    server.start();
    const auto back = clock::now();
    REQUIRE(c.wait_connected(2, 5s));
    // Back-off capped at 200 ms: the link is back within a few of them.
    CHECK(clock::now() - back < 2s);
    CHECK(c({"PING"}).value == reply::status("PONG"));
    CHECK(c({"GET", "before"}).value.is_nil());  // a new server without persistence
    CHECK(c.hooks.connects.load() == 2);
}

TEST_CASE("connection: a server that restarts again and again, the client keeps coming back")
{
    redis_server server;
    redis_client c(server.endpoint());
    REQUIRE(c.wait_connected());
    for (int round = 0; round < 3; ++round) {
        if (round % 2)
            server.kill();
        else
            server.stop();
        REQUIRE(c.hooks.disconnects.wait(static_cast<std::size_t>(round + 1), 5s));
        server.start();
        REQUIRE(c.wait_connected(round + 2, 5s));
        CHECK(c({"INCR", "x"}).value == reply::integer(1));
    }
}

TEST_CASE("connection: SELECT of the URL's database on every link, a refused one is connect_failed")
{
    redis_server server;
    redis_client in3(server.endpoint(3));
    redis_client in0(server.endpoint(0));
    REQUIRE(in3.wait_connected());
    REQUIRE(in0.wait_connected());
    CHECK(in3({"SET", "where", "three"}).value == reply::status("OK"));
    CHECK(in0({"GET", "where"}).value.is_nil());
    server.kill();
    server.start();
    REQUIRE(in3.wait_connected(2, 5s));
    CHECK(in3({"SET", "again", "3"}).value == reply::status("OK"));
    REQUIRE(in0.wait_connected(2, 5s));
    CHECK(in0({"GET", "again"}).value.is_nil());

    redis_client bad(server.endpoint(99));  // the server has 16 databases
    REQUIRE(bad.hooks.disconnects.wait(1, 5s));
    CHECK(bad.hooks.disconnects.at(0) == errc::connect_failed);
    CHECK(bad.hooks.connects.load() == 0);
    std::string last_error;
    run_on(bad.io.get_executor(), [&] { last_error = bad.conn->last_error(); });
    CHECK_THAT(last_error, Catch::Matchers::Contains("DB index"));
}

TEST_CASE("connection: XADD / XRANGE round trip of a binary payload")
{
    redis_server server;
    redis_client c(server.endpoint());
    REQUIRE(c.wait_connected());
    const std::string payload("data: x\n\0\r\n\xc3\x28 end", 17);
    auto added = c({"XADD", "events:k", "MAXLEN", "~", "1000", "*", "e", payload});
    REQUIRE_FALSE(added.ec);
    REQUIRE(added.value.is_string());
    const std::string id = added.value.str();
    auto range = c({"XRANGE", "events:k", "-", "+"});
    REQUIRE_FALSE(range.ec);
    CHECK(range.value ==
          reply::array({reply::array({reply::string(id), reply::array({reply::string("e"), reply::string(payload)})})}));
    // Exclusive start after the id: nothing more.
    CHECK(c({"XRANGE", "events:k", "(" + id, "+"}).value == reply::array({}));
}

TEST_CASE("connection: close() with commands in flight completes them with closed, in order")
{
    redis_server server;
    redis_client c(server.endpoint());
    REQUIRE(c.wait_connected());
    auto codes = std::make_shared<std::vector<ssepp::error_code>>();
    std::atomic<int> done{0};
    REQUIRE(run_on(c.io.get_executor(), [&, conn = c.conn] {
        conn->async_command({"BLPOP", "never", "0"}, [&, codes](ssepp::error_code ec, reply) {
            codes->push_back(ec);
            ++done;
        });
        for (int i = 0; i < 1000; ++i)
            conn->async_command({"INCR", "n"}, [&, codes](ssepp::error_code ec, reply) {
                codes->push_back(ec);
                ++done;
            });
        conn->close();
        conn->async_command({"PING"}, [&, codes](ssepp::error_code ec, reply) {
            codes->push_back(ec);
            ++done;
        });
    }));
    REQUIRE(eventually([&] { return done.load() == 1002; }));
    for (auto ec : *codes)
        CHECK(ec == errc::closed);
    CHECK(c.conn->state() == redis::connection::status::closed);
    std::this_thread::sleep_for(100ms);  // no hook, no reconnect after close
    CHECK(c.hooks.disconnects.size() == 0);
    CHECK(c.hooks.connects.load() == 1);
}

TEST_CASE("connection: dropping the last reference frees it with commands in flight")
{
    redis_server server;
    asio::io_context io;
    hook_log hooks;
    auto opts = fast_options(server.endpoint());
    hooks.install(opts);
    auto conn = redis::connection::create(io.get_executor(), opts);
    std::weak_ptr<redis::connection> weak = conn;
    auto token = std::make_shared<int>(0);  // held by every handler: counts the live ones
    std::atomic<int> ran{0};
    {
        run_in_background runner(io);
        REQUIRE(eventually([&] { return hooks.connects.load() == 1; }));
        REQUIRE(run_on(io.get_executor(), [&, c = std::move(conn)]() mutable {
            c->async_command({"BLPOP", "never", "0"}, [&, token](ssepp::error_code, reply) { ++ran; });
            for (int i = 0; i < 100; ++i)
                c->async_command({"INCR", "n"}, [&, token](ssepp::error_code, reply) { ++ran; });
            c.reset();  // the last reference
        }));
        CHECK(weak.expired());
        // The handlers were destroyed without running (and ASan sees no leak).
        CHECK(token.use_count() == 1);
        CHECK(ran.load() == 0);
    }
    // A new redis_client sees the server still fine (nothing left half-written).
    redis_client c(server.endpoint());
    REQUIRE(c.wait_connected());
    CHECK(c({"PING"}).value == reply::status("PONG"));
}

TEST_CASE("connection: completion tokens (asio::use_future)")
{
    redis_server server;
    redis_client c(server.endpoint());
    REQUIRE(c.wait_connected());
    std::future<reply> fut;
    REQUIRE(run_on(c.io.get_executor(), [&] { fut = c.conn->async_command({"ECHO", "hi"}, asio::use_future); }));
    REQUIRE(fut.wait_for(5s) == std::future_status::ready);
    CHECK(fut.get() == reply::string("hi"));
    // The error through use_future(f), not as a thrown system_error: TSan cannot see the
    // reference counting of an exception_ptr inside the uninstrumented libstdc++.
    std::future<ssepp::error_code> failed;
    REQUIRE(run_on(c.io.get_executor(), [&] {
        failed = c.conn->async_command({"INCR", "k", "x"}, asio::use_future([](ssepp::error_code ec, reply) { return ec; }));
    }));
    REQUIRE(failed.wait_for(5s) == std::future_status::ready);
    CHECK(failed.get() == errc::server_error);
}

TEST_CASE("connection: two threads run the context, the connection on a strand")
{
    redis_server server;
    asio::io_context io;
    auto strand = asio::make_strand(io);
    hook_log hooks;
    auto opts = fast_options(server.endpoint());
    hooks.install(opts);
    auto conn = redis::connection::create(strand, opts);
    auto work = asio::make_work_guard(io);
    std::thread t1([&] { io.run(); });
    std::thread t2([&] { io.run(); });
    REQUIRE(eventually([&] { return hooks.connects.load() == 1; }));

    // Four batches posted from four threads; each handler checks the strand holds.
    constexpr int batches = 4, per_batch = 2'000;
    std::atomic<int> done{0}, errors{0}, off_strand{0};
    auto last = std::make_shared<long long>(0);  // touched on the strand only
    std::atomic<bool> ordered{true};
    std::vector<std::thread> posters;
    for (int b = 0; b < batches; ++b)
        posters.emplace_back([&] {
            asio::post(strand, [&] {
                for (int i = 0; i < per_batch; ++i)
                    conn->async_command({"INCR", "shared"}, [&, last](ssepp::error_code ec, reply r) {
                        if (!strand.running_in_this_thread())
                            ++off_strand;
                        if (ec)
                            ++errors;
                        if (r.integer() != *last + 1)
                            ordered = false;
                        *last = r.integer();
                        ++done;
                    });
            });
        });
    for (auto& p : posters)
        p.join();
    CHECK(eventually([&] { return done.load() == batches * per_batch; }, 10s));
    CHECK(errors.load() == 0);
    CHECK(off_strand.load() == 0);
    CHECK(ordered.load());

    // Kill the server under load, bring it back: still no race, and the link returns.
    asio::post(strand, [&] {
        for (int i = 0; i < 500; ++i)
            conn->async_command({"PING"}, [&](ssepp::error_code, reply) { ++done; });
    });
    server.kill();
    server.start();
    CHECK(eventually([&] { return hooks.connects.load() == 2; }, 5s));
    run_on(strand, [&] { conn->close(); });
    work.reset();
    t1.join();
    t2.join();
    CHECK(done.load() == batches * per_batch + 500);
}

namespace {
/// A TCP listener on 127.0.0.1 that is not Redis: it answers each read with `answer` (when
/// not empty) and counts connections.
class fake_server {
public:
    explicit fake_server(std::string answer, int backlog = asio::socket_base::max_listen_connections)
        : answer_(std::move(answer))
    {
        acceptor_.open(asio::ip::tcp::v4());
        acceptor_.bind({asio::ip::make_address("127.0.0.1"), 0});
        acceptor_.listen(backlog);
        if (!answer_.empty())
            accept();
    }
    ~fake_server()
    {
        run_on(io_.get_executor(), [this] {
            acceptor_.close();
            for (auto& s : sockets_)
                s->close();
        });
    }
    redis::endpoint endpoint() const { return {"127.0.0.1", acceptor_.local_endpoint().port(), 0}; }

private:
    void accept()
    {
        acceptor_.async_accept([this](ssepp::error_code ec, asio::ip::tcp::socket s) {
            if (ec)
                return;
            auto sock = std::make_shared<asio::ip::tcp::socket>(std::move(s));
            sockets_.push_back(sock);
            read(sock);
            accept();
        });
    }
    void read(std::shared_ptr<asio::ip::tcp::socket> s)
    {
        auto buf = std::make_shared<std::array<char, 4096>>();
        s->async_read_some(asio::buffer(*buf), [this, s, buf](ssepp::error_code ec, std::size_t) {
            if (ec)
                return;
            asio::async_write(*s, asio::buffer(answer_), [](ssepp::error_code, std::size_t) {});
            read(s);
        });
    }

    std::string answer_;
    asio::io_context io_;
    asio::ip::tcp::acceptor acceptor_{io_};
    std::vector<std::shared_ptr<asio::ip::tcp::socket>> sockets_;
    asio::executor_work_guard<asio::io_context::executor_type> work_{io_.get_executor()};
    run_in_background runner_{io_};
};
} // namespace

TEST_CASE("connection: bytes that are not RESP fail what was in flight with protocol_error")
{
    fake_server garbage("!not resp\r\n");
    redis_client c(garbage.endpoint());
    REQUIRE(c.wait_connected());  // TCP is up: a link, until the first reply
    auto r = c({"PING"});
    CHECK(r.ec == errc::protocol_error);
    REQUIRE(c.hooks.disconnects.wait(1));
    CHECK(c.hooks.disconnects.at(0) == errc::protocol_error);
    REQUIRE(c.wait_connected(2));  // and it tries again
}

TEST_CASE("connection: an attempt that hangs fails after connect_timeout")
{
    // A listener that never accepts, its queue filled: the kernel drops further SYNs, so the
    // next connect hangs.
    fake_server full("", 0);
    std::vector<int> fillers;  // non-blocking connects (Asio's connect would wait)
    for (int i = 0; i < 4; ++i) {
        const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        REQUIRE(fd >= 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons(full.endpoint().port);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        (void)::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
        fillers.push_back(fd);
    }
    struct closer {
        std::vector<int>& fds;
        ~closer()
        {
            for (int fd : fds)
                ::close(fd);
        }
    } close_fillers{fillers};
    std::this_thread::sleep_for(20ms);  // the fillers' handshakes complete
    auto opts = fast_options(full.endpoint());
    opts.connect_timeout = 150ms;
    redis_client c(full.endpoint(), opts);
    const auto start = clock::now();
    REQUIRE(c.hooks.disconnects.wait(1, 5s));
    CHECK(c.hooks.disconnects.at(0) == errc::connect_failed);
    CHECK(clock::now() - start >= 100ms);
    std::string last_error;
    run_on(c.io.get_executor(), [&] { last_error = c.conn->last_error(); });
    CHECK(last_error == "connect timed out");
    CHECK(c({"PING"}, 1s).ec == errc::not_connected);
}
