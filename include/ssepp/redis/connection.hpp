// ssepp/redis/connection.hpp
// ssepp::redis::connection: one Redis link over hiredis's async API, driven by Asio on the
// caller's executor (no thread of its own): pipelined commands, owning replies, reconnection.
// SPDX-License-Identifier: BSL-1.0
#ifndef SSEPP_REDIS_CONNECTION_HPP
#define SSEPP_REDIS_CONNECTION_HPP

#include <ssepp/redis/detail/asio_adapter.hpp>
#include <ssepp/redis/detail/hiredis.hpp>
#include <ssepp/redis/error.hpp>
#include <ssepp/redis/reply.hpp>
#include <ssepp/redis/url.hpp>

#include <ssepp/detail/asio.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <deque>
#include <functional>
#include <initializer_list>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

namespace ssepp::redis {

class subscriber;

namespace detail {

/// A command's completion handler while hiredis holds it (as the callback's privdata).
class command_op {
public:
    /// Deletes this, then hands (ec, r) to the handler on its associated executor.
    virtual void complete(error_code ec, reply r) = 0;
    /// Deletes this without running the handler (the connection is being destroyed).
    virtual void destroy() noexcept = 0;

protected:
    ~command_op() = default;
};

template <class Handler>
class command_op_impl final : public command_op {
public:
    command_op_impl(Handler h, const asio::any_io_executor& ex) : handler_(std::move(h)), ex_(ex) {}

    void complete(error_code ec, reply r) override
    {
        auto ex = asio::get_associated_executor(handler_, ex_);
        Handler h(std::move(handler_));
        delete this;  // first: the handler may issue the next command
        asio::dispatch(ex, [h = std::move(h), ec, r = std::move(r)]() mutable { std::move(h)(ec, std::move(r)); });
    }
    void destroy() noexcept override { delete this; }

private:
    Handler handler_;
    asio::any_io_executor ex_;
};

/// Owns an op until it is completed: a handler posted to a context that is destroyed before
/// running it frees the op instead of leaking it.
struct op_ptr {
    command_op* op;
    explicit op_ptr(command_op* o) noexcept : op(o) {}
    op_ptr(op_ptr&& o) noexcept : op(std::exchange(o.op, nullptr)) {}
    op_ptr& operator=(op_ptr&&) = delete;
    ~op_ptr()
    {
        if (op)
            op->destroy();
    }
    void complete(error_code ec) { std::exchange(op, nullptr)->complete(ec, reply{}); }
};

} // namespace detail

/// One Redis link. Create it with create() on an executor (an io_context's, or a strand when
/// several threads run the context); it connects at once, and again by itself (capped
/// back-off) whenever the link drops, until close().
///
/// Threading: like an Asio socket, a connection is not thread-safe. Call its member functions
/// on its executor (post to it from elsewhere); hooks and command handlers run there too.
///
/// Lifetime: pending operations do not keep it alive. Dropping the last shared_ptr frees the
/// link at once and destroys the handlers of commands still in flight without running them;
/// call close() first to have them run with errc::closed.
class connection : public std::enable_shared_from_this<connection>, private detail::link_owner {
    struct pass_key {};

public:
    using executor_type = asio::any_io_executor;

    struct options {
        endpoint server{};
        /// A connection attempt that has not completed by then counts as failed.
        std::chrono::milliseconds connect_timeout{2000};
        /// The wait before the first retry after a failure; doubled after each failed attempt
        /// up to max_reconnect_delay, and reset once a link is up.
        std::chrono::milliseconds reconnect_delay{100};
        std::chrono::milliseconds max_reconnect_delay{2000};
        /// Called each time a link is up and ready for commands (after the SELECT of
        /// server.db, if any): resubscribe or catch up here.
        std::function<void()> on_connect{};
        /// Called each time a link is lost (connection_lost, protocol_error; after the
        /// in-flight commands' handlers) or an attempt fails (connect_failed), before the wait
        /// for the next attempt. Not called for close().
        std::function<void(error_code)> on_disconnect{};
    };

    enum class status { connecting, connected, disconnected, closed };

    /// A connection to opts.server on `ex`; the first attempt starts at once (on `ex`).
    static std::shared_ptr<connection> create(executor_type ex, options opts)
    {
        auto c = create_impl(std::move(ex), std::move(opts), {});
        c->start();
        return c;
    }

    connection(pass_key, executor_type ex, options opts)
        : ex_(std::move(ex)), opts_(std::move(opts)), timer_(ex_), delay_(opts_.reconnect_delay)
    {
    }
    connection(const connection&) = delete;
    connection& operator=(const connection&) = delete;

    ~connection()
    {
        destroying_ = true;
        if (ac_ != nullptr)
            redisAsyncFree(ac_);  // the callbacks destroy their ops; cleanup releases the fd
        for (auto& e : events_)
            if (e.op)
                e.op->destroy();
    }

    executor_type get_executor() const noexcept { return ex_; }
    status state() const noexcept { return state_; }
    bool is_connected() const noexcept { return state_ == status::connected; }
    const options& config() const noexcept { return opts_; }
    /// What ended the last link or attempt, in hiredis's or the server's words; empty if none.
    const std::string& last_error() const noexcept { return last_error_; }

    /// Sends one command (binary-safe arguments: any bytes) and completes with (error_code,
    /// reply): success with the reply; errc::server_error with the error reply (its text in
    /// reply.str()); errc::connection_lost, errc::protocol_error or errc::closed when the link
    /// ended first. Commands are pipelined: issue many without waiting; handlers run in the
    /// order the commands were issued. Without a ready link (connecting, reconnecting, closed)
    /// the command is not sent and completes soon with errc::not_connected (errc::closed after
    /// close()): the caller decides whether to retry. `args` is read before this returns.
    /// Any Asio completion token works (a handler, asio::use_future, asio::use_awaitable...);
    /// a handler runs on its associated executor, by default the connection's.
    template <class CompletionToken>
    auto async_command(std::span<const std::string_view> args, CompletionToken&& token)
    {
        return asio::async_initiate<CompletionToken, void(error_code, reply)>(
            [this](auto handler, std::span<const std::string_view> a) {
                using handler_type = std::decay_t<decltype(handler)>;
                submit(a, new detail::command_op_impl<handler_type>(std::move(handler), ex_));
            },
            token, args);
    }

    template <class CompletionToken>
    auto async_command(std::initializer_list<std::string_view> args, CompletionToken&& token)
    {
        return async_command(std::span<const std::string_view>(args.begin(), args.size()),
                             std::forward<CompletionToken>(token));
    }

    /// Ends the link at once and for good: commands in flight complete with errc::closed, no
    /// hook runs, no reconnect follows. Idempotent.
    void close()
    {
        if (state_ == status::closed)
            return;
        auto keep = shared_from_this();  // a handler run below may drop the caller's reference
        state_ = status::closed;
        ++timer_generation_;
        timer_.cancel();
        if (ac_ != nullptr) {
            freeing_reason_ = errc::closed;
            redisAsyncFree(ac_);
        }
        drain();
    }

private:
    friend class subscriber;

    struct event {
        enum class what { reply, push, up, down, select_failed } type;
        detail::command_op* op = nullptr;
        error_code ec{};
        reply value{};
    };

    // For subscriber: replies of (P)SUBSCRIBE and the messages that follow go to `push`.
    // Not started: the owner stores the pointer first, then calls start(), so that no hook
    // runs on the executor before the store (the caller may be on another thread).
    static std::shared_ptr<connection> create_impl(executor_type ex, options opts,
                                                   std::function<void(reply)> push)
    {
        auto c = std::make_shared<connection>(pass_key{}, std::move(ex), std::move(opts));
        c->push_handler_ = std::move(push);
        return c;
    }

    void start()
    {
        asio::dispatch(ex_, [w = weak_from_this()] {
            if (auto c = w.lock(); c && c->state_ == status::connecting)
                c->start_connect();
        });
    }

    /// Sends a pub/sub command whose replies are pushes; false when there is no ready link.
    bool send_push_command(std::span<const std::string_view> args)
    {
        if (state_ != status::connected || ac_ == nullptr || args.empty())
            return false;
        return send_argv(args, &push_tag_);
    }

    void submit(std::span<const std::string_view> args, detail::command_op* op)
    {
        detail::op_ptr p(op);
        error_code ec;
        if (args.empty())
            ec = errc::empty_command;
        else if (state_ == status::closed)
            ec = errc::closed;
        else if (state_ != status::connected || ac_ == nullptr)
            ec = errc::not_connected;
        else if (send_argv(args, op)) {
            p.op = nullptr;  // hiredis holds it now
            return;
        } else
            ec = errc::not_connected;
        // Never from inside the initiating call (the caller may hold a lock, or loop).
        asio::post(ex_, [p = std::move(p), ec]() mutable { p.complete(ec); });
    }

    bool send_argv(std::span<const std::string_view> args, void* privdata)
    {
        constexpr std::size_t small = 16;
        std::array<const char*, small> argv_small;
        std::array<std::size_t, small> len_small;
        std::vector<const char*> argv_big;
        std::vector<std::size_t> len_big;
        const char** argv = argv_small.data();
        std::size_t* lens = len_small.data();
        if (args.size() > small) {
            argv_big.resize(args.size());
            len_big.resize(args.size());
            argv = argv_big.data();
            lens = len_big.data();
        }
        for (std::size_t i = 0; i < args.size(); ++i) {
            argv[i] = args[i].data();
            lens[i] = args[i].size();
        }
        return redisAsyncCommandArgv(ac_, &on_reply_cb, privdata, static_cast<int>(args.size()), argv, lens) ==
               REDIS_OK;
    }

    void start_connect()
    {
        state_ = status::connecting;
        redisAsyncContext* ac = redisAsyncConnect(opts_.server.host.c_str(), opts_.server.port);
        if (ac == nullptr || ac->err) {
            last_error_ = ac ? ac->errstr : "out of memory";
            if (ac)
                redisAsyncFree(ac);  // no hook attached yet: nothing else runs
            state_ = status::disconnected;
            events_.push_back({event::what::down, nullptr, errc::connect_failed});
            drain();
            return;
        }
        ac->data = this;
        // Aliasing: the owner is a private base, which shared_ptr's conversion cannot see.
        std::shared_ptr<detail::link_owner> me(shared_from_this(), static_cast<detail::link_owner*>(this));
        watcher_ = detail::asio_watcher::attach(ex_, ac, me, this);
        if (!watcher_) {
            last_error_ = "the reactor refused the socket";
            redisAsyncFree(ac);
            state_ = status::disconnected;
            events_.push_back({event::what::down, nullptr, errc::connect_failed});
            drain();
            return;
        }
        ac_ = ac;
        redisAsyncSetConnectCallback(ac, &on_connect_cb);  // after attach: it arms the write wait
        if (opts_.server.db != 0)
            redisAsyncCommand(ac, &on_reply_cb, &select_tag_, "SELECT %d", opts_.server.db);
        arm_timer(opts_.connect_timeout, [](connection& c) {
            if (c.state_ == status::connecting && c.ac_ != nullptr) {
                c.last_error_ = "connect timed out";
                c.freeing_reason_ = errc::connect_failed;
                redisAsyncFree(c.ac_);
                c.drain();
            }
        });
    }

    template <class F>
    void arm_timer(std::chrono::milliseconds d, F f)
    {
        const auto generation = ++timer_generation_;
        timer_.expires_after(d);
        timer_.async_wait([w = weak_from_this(), generation, f](error_code) {
            auto c = w.lock();
            if (c && c->timer_generation_ == generation)
                f(*c);
        });
    }

    void schedule_reconnect()
    {
        const auto d = delay_;
        delay_ = std::min(delay_ * 2, opts_.max_reconnect_delay);
        arm_timer(d, [](connection& c) {
            if (c.state_ == status::disconnected)
                c.start_connect();
        });
    }

    void link_up()
    {
        state_ = status::connected;
        delay_ = opts_.reconnect_delay;
        ++timer_generation_;
        timer_.cancel();
        events_.push_back({event::what::up});
    }

    // hiredis callbacks: they only record what happened; drain() runs user code afterwards,
    // never inside hiredis.
    static void on_connect_cb(const redisAsyncContext* ac, int status)
    {
        auto* c = static_cast<connection*>(ac->data);
        if (status != REDIS_OK || c->destroying_)
            return;  // a failed attempt: hiredis frees the context now, and cleanup reports it
        if (c->opts_.server.db == 0)
            c->link_up();  // else once SELECT succeeded
    }

    static void on_reply_cb(redisAsyncContext* ac, void* r, void* privdata)
    {
        static_cast<connection*>(ac->data)->on_reply(ac, static_cast<redisReply*>(r), privdata);
    }

    void on_reply(redisAsyncContext* ac, redisReply* r, void* privdata)
    {
        if (privdata == &select_tag_) {
            if (r == nullptr || destroying_)
                return;
            if (r->type == REDIS_REPLY_ERROR) {
                last_error_ = std::string(r->str, r->len);
                events_.push_back({event::what::select_failed});
            } else {
                link_up();
            }
            return;
        }
        if (privdata == &push_tag_) {
            if (r != nullptr && !destroying_)  // null: the link's end, which cleanup reports
                events_.push_back({event::what::push, nullptr, {}, detail::to_reply(r)});
            return;
        }
        auto* op = static_cast<detail::command_op*>(privdata);
        if (destroying_) {
            op->destroy();
            return;
        }
        if (r == nullptr) {
            events_.push_back({event::what::reply, op, ended_code(ac)});
            return;
        }
        reply value = detail::to_reply(r);
        const error_code ec = value.is_error() ? make_error_code(errc::server_error) : error_code{};
        events_.push_back({event::what::reply, op, ec, std::move(value)});
    }

    error_code ended_code(const redisAsyncContext* ac) const
    {
        if (freeing_reason_)
            return *freeing_reason_;
        if (ac->err == REDIS_ERR_PROTOCOL)
            return errc::protocol_error;
        return errc::connection_lost;
    }

    // From the watcher's cleanup hook, inside hiredis, after the in-flight callbacks ran.
    void link_freed(redisAsyncContext* ac) override
    {
        if (ac != ac_)
            return;
        ac_ = nullptr;
        retired_ = std::move(watcher_);  // its hook is still on the stack
        if (destroying_)
            return;
        error_code ec;
        if (freeing_reason_)
            ec = *freeing_reason_;
        else if (state_ == status::connected)
            ec = ac->err == REDIS_ERR_PROTOCOL ? errc::protocol_error : errc::connection_lost;
        else
            ec = errc::connect_failed;
        if (!freeing_reason_ && ac->err)
            last_error_ = ac->errstr;
        freeing_reason_.reset();
        if (state_ != status::closed)
            state_ = status::disconnected;
        events_.push_back({event::what::down, nullptr, ec});
    }

    void after_io() override { drain(); }

    /// Runs what the hiredis callbacks recorded, in order. Re-entrant calls (a handler that
    /// closes or issues commands) append to the queue this loop is draining.
    void drain()
    {
        if (draining_)
            return;
        draining_ = true;
        struct reset {
            bool& flag;
            ~reset() { flag = false; }
        } guard{draining_};
        retired_.reset();
        while (!events_.empty()) {
            event e = std::move(events_.front());
            events_.pop_front();
            switch (e.type) {
            case event::what::reply: e.op->complete(e.ec, std::move(e.value)); break;
            case event::what::push:
                if (push_handler_)
                    push_handler_(std::move(e.value));
                break;
            case event::what::up:
                if (opts_.on_connect)
                    opts_.on_connect();
                break;
            case event::what::select_failed:
                if (ac_ != nullptr && state_ == status::connecting) {
                    freeing_reason_ = errc::connect_failed;
                    redisAsyncFree(ac_);  // appends the down event
                }
                break;
            case event::what::down:
                if (state_ == status::closed)
                    break;
                if (opts_.on_disconnect)
                    opts_.on_disconnect(e.ec);
                if (state_ == status::disconnected)
                    schedule_reconnect();
                break;
            }
        }
    }

    executor_type ex_;
    options opts_;
    asio::steady_timer timer_;
    unsigned long timer_generation_ = 0;
    std::chrono::milliseconds delay_;
    status state_ = status::connecting;
    redisAsyncContext* ac_ = nullptr;
    std::shared_ptr<detail::asio_watcher> watcher_, retired_;
    std::optional<error_code> freeing_reason_;
    std::deque<event> events_;
    bool draining_ = false;
    bool destroying_ = false;
    std::string last_error_;
    std::function<void(reply)> push_handler_;
    char select_tag_ = 0, push_tag_ = 0;  // addresses that mark internal callbacks' privdata
};

} // namespace ssepp::redis

#endif
