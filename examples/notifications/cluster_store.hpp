// cluster_store.hpp: notify_server's cluster mode (--redis), the state every node shares in
// Redis and the links to it, kept apart so that notify_server.cpp reads in one sitting. The
// server's limits and the names the store shares with it (user_key) are here too: it enforces them.
#pragma once

#include <ssepp/ssepp.hpp>

#include <asio.hpp>
#include <fmt/format.h>

#if SSEPP_EXAMPLES_REDIS
#include <ssepp/redis/cluster.hpp>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

namespace notifications {

using steady = std::chrono::steady_clock;

/// What one client may make the server hold, and for how long (flags of the same names).
struct limits {
    std::size_t max_sessions = 10'000;
    /// Users the server keeps state for: a user who has a session, or for whom something is
    /// kept (notifications sent while they had no stream open, export files). Each holds at
    /// most 256 events and 256 KiB of history. At the limit a new user takes the place of
    /// the least recently active user without a session (and their kept notifications go).
    std::size_t max_users = 10'000;
    /// Admins get every order alert, so each one costs every order a send. At the limit a new
    /// admin takes the place of the least recently active admin without an admin session.
    std::size_t max_admins = 100;
    /// Exports running or queued, over all users, and per user.
    std::size_t max_exports = 8;
    std::size_t max_user_exports = 1;
    /// A session without an open stream that has not been used for this long is gone.
    std::chrono::milliseconds session_idle{std::chrono::minutes(30)};
    /// A user without a session and without exports running, for whom something is kept,
    /// is forgotten with it (and their admin role) after this long without activity. One for
    /// whom nothing is kept is forgotten as soon as their last session ends.
    std::chrono::milliseconds user_ttl{std::chrono::hours(24)};
    /// Event streams open at once (the registries' connection_limits): user streams in all,
    /// per user (every tab of every session of theirs: behind HTTP/2 one browser may have
    /// dozens, see deploy/README.md), and the public ticker's, which has a cap of its own
    /// (nobody has to log in for it, so it takes no place from logged-in users).
    std::size_t max_streams = 1024;
    std::size_t max_user_streams = 32;
    std::size_t max_ticker_streams = 256;
    /// A ticker stream whose writes make no progress for this long is closed: its client
    /// stopped reading (the ticker drops old ticks for a slow client, it does not wait).
    std::chrono::milliseconds ticker_write_timeout{std::chrono::seconds(30)};
    /// How often the ticker ticks.
    std::chrono::milliseconds tick{std::chrono::seconds(1)};
};

/// Finished exports kept per user (older ones are deleted with their files).
constexpr std::size_t kept_exports_per_user = 4;

inline std::string user_key(std::string_view user) { return fmt::format("user:{}", user); }

// --- Cluster mode (--redis) -------------------------------------------------------------------
// Several nodes behind one load balancer, without sticky sessions: what a request may need on
// any node lives in Redis (sessions, users, admins, export files), the events go through an
// ssepp::redis::node (a Redis Stream per key, pub/sub to every node), and a control channel
// ends a session's or a user's streams on every node. README.md, "Cluster", says why.

/// Redis failed or did not answer in time while serving a request: 503, try again.
struct store_unavailable : std::runtime_error {
    using std::runtime_error::runtime_error;
};

/// A cluster-wide cap a login or a notification met: which one, and when there may be room.
struct cluster_refusal {
    std::string cap;  // "sessions", "users" or "admins"
    std::chrono::milliseconds retry{};
};

struct cluster_export {
    std::string user;
    bool ready = false;
    std::string file;
};

struct cluster_counts {
    std::size_t sessions = 0, users = 0, admins = 0;
};

/// What a cluster node asks of the server it runs in.
struct cluster_hooks {
    /// Completes the streams this node holds for a session that ended (logout, expiry).
    std::function<std::size_t(const std::string& token)> end_session;
    /// The sessions with streams open on this node: kept alive, and checked for a logout
    /// this node may have missed.
    std::function<std::vector<std::string>()> streaming_sessions;
};

/// How long a request waits for Redis before it is answered 503.
constexpr std::chrono::seconds store_timeout{2};

#if SSEPP_EXAMPLES_REDIS

/// The state a cluster shares, in Redis; one per node.
///
/// The HTTP front's handlers are synchronous, so a request waits for Redis on its I/O thread.
/// The Redis links therefore run on a thread of their own (the node and the state link on one
/// strand of their own io_context): a handler waiting for a reply can never be what keeps that
/// reply from being read, whatever --threads says. Never wait for Redis holding a lock that
/// the hooks take (they run on that thread).
class cluster_store {
public:
    cluster_store(const std::string& url, const limits& lim, cluster_hooks hooks)
        : limits_(lim), hooks_(std::move(hooks))
    {
        ssepp::redis::cluster_options options;
        options.server = ssepp::redis::parse_url(url);  // throws, naming what is wrong
        options.prefix = std::string(prefix);
        options.stream_max_events = 256;  // as a user's history on a single server
        options.stream_ttl = limits_.user_ttl;  // what waits for a user goes with them
        // The node's own copy of each key's history: enough to resume on the same node without
        // reading Redis; every node gets every event, so keys without streams are swept.
        node_ = ssepp::redis::node::create(strand_, options, {.max_events = 64, .max_bytes = 256 * 1024});
        ssepp::redis::connection::options link;
        link.server = options.server;
        state_ = ssepp::redis::connection::create(strand_, link);
        link.on_connect = [this] {
            // Subscribed again after the link dropped: a logout published meanwhile was
            // missed, so check the sessions streaming here at once.
            if (control_links_++ > 0)
                refresh(false);
        };
        control_ = ssepp::redis::subscriber::create(strand_, link);
        asio::post(strand_, [this] {
            control_->subscribe(std::string(prefix) + "control",
                                [this](std::string_view, std::string_view payload) { on_control(payload); },
                                [this](std::error_code ec) { control_ready_ = !ec; });
            refresh(true);
        });
        thread_ = std::thread([this] { io_.run(); });
        // Serve nothing before the bus is subscribed: an event published earlier would reach
        // no stream of this node.
        const auto deadline = steady::now() + std::chrono::seconds(10);
        while (!(node_->is_ready() && control_ready_)) {
            if (steady::now() > deadline) {
                stop();
                throw std::runtime_error(fmt::format("no answer from Redis at {} within 10 s", url));
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
    }

    ~cluster_store() { stop(); }

    cluster_store(const cluster_store&) = delete;
    cluster_store& operator=(const cluster_store&) = delete;

    /// This node's connections (read-only uses, and close(): sends go through the node).
    ssepp::registry& local() { return node_->local(); }

    std::optional<cluster_refusal> login(const std::string& token, const std::string& user, bool admin)
    {
        auto r = script(login_script, {token, user, admin ? "1" : "0", ms(limits_.session_idle), ms(limits_.user_ttl),
                                       std::to_string(limits_.max_sessions), std::to_string(limits_.max_users),
                                       std::to_string(limits_.max_admins)});
        if (r.is_array() && r.size() == 2)
            return cluster_refusal{r[0].str(), std::chrono::milliseconds(std::stoll(r[1].str()))};
        return std::nullopt;
    }

    /// The live session `token` (user, admin), now used; nullopt when there is none.
    std::optional<std::pair<std::string, bool>> touch(const std::string& token)
    {
        auto r = script(touch_script, {ms(limits_.session_idle), token});
        if (!r.is_array() || r.size() != 1 || r[0].str().empty())
            return std::nullopt;
        const auto& s = r[0].str();
        return std::pair{s.substr(1), s[0] == '1'};
    }

    /// Ends the session everywhere: its streams on every node complete (control channel).
    void logout(const std::string& token) { script(logout_script, {token}); }

    /// Completes the user's streams on every node.
    void close_user(const std::string& user) { command({"PUBLISH", std::string(prefix) + "control", "close\n" + user}); }

    /// Makes `user` (a notification's addressee) known and active; a refusal at --max-users.
    std::optional<std::chrono::milliseconds> keep_user(const std::string& user)
    {
        auto r = script(keep_script, {user, ms(limits_.session_idle), ms(limits_.user_ttl), std::to_string(limits_.max_users)});
        if (r.integer() < 0)
            return std::nullopt;
        return std::chrono::milliseconds(r.integer());
    }

    /// Every admin (an order alert goes to each).
    std::vector<std::string> admins()
    {
        auto r = script(admins_script, {ms(limits_.user_ttl)});
        std::vector<std::string> out;
        for (const auto& e : r.elements())
            out.push_back(e.str());
        return out;
    }

    void export_started(const std::string& id, const std::string& user)
    {
        script(export_started_script, {id, user, ms(limits_.user_ttl)});
    }

    void export_done(const std::string& id, const std::string& user, const std::string& file)
    {
        script(export_done_script, {id, user, file, ms(limits_.user_ttl), std::to_string(kept_exports_per_user)});
    }

    std::optional<cluster_export> find_export(const std::string& id)
    {
        auto r = command({"HMGET", std::string(prefix) + "export:" + id, "user", "ready", "file"});
        if (!r.is_array() || r.size() != 3 || r[0].is_nil())
            return std::nullopt;
        return cluster_export{r[0].str(), r[1].str() == "1", r[2].str()};
    }

    cluster_counts counts()
    {
        auto r = script(counts_script, {});
        if (!r.is_array() || r.size() != 3)
            return {};
        return {std::size_t(r[0].integer()), std::size_t(r[1].integer()), std::size_t(r[2].integer())};
    }

    /// Sends `e` to `key` on every node; its id (a Redis stream id, one order over the cluster).
    std::string send(const std::string& key, ssepp::event e) { return wait(node_->async_send(key, std::move(e), asio::use_future)); }

    /// Sends `e` to each key, the publishes pipelined.
    void send_each(const std::vector<std::string>& keys, const ssepp::event& e)
    {
        std::vector<std::future<std::string>> sent;
        for (const auto& k : keys)
            sent.push_back(node_->async_send(k, e, asio::use_future));
        for (auto& f : sent)
            wait(std::move(f));
    }

    /// Attaches `stream` under `keys` on this node; `done` runs on the Redis thread.
    void attach(std::vector<std::string> keys, std::shared_ptr<ssepp::emitter> stream, ssepp::attach_options options,
                std::function<void(std::error_code, ssepp::attach_result)> done)
    {
        node_->async_attach(std::move(keys), std::move(stream), std::move(options), std::move(done));
    }

    /// Checks that `token` is still a session (after a stream of it was registered, so that a
    /// logout published before is seen here, and one published after reaches the stream);
    /// `gone` runs on the Redis thread if it is not. A Redis failure concludes nothing.
    void check_session(const std::string& token, std::function<void()> gone)
    {
        asio::post(strand_, [this, token, gone = std::move(gone)] {
            const std::string idle = ms(limits_.session_idle);
            const auto s = scripts().touch;
            state_->async_command({"EVAL", s, "0", prefix, idle, token},
                                  [gone](std::error_code ec, ssepp::redis::reply r) {
                                      if (!ec && r.is_array() && r.size() == 1 && r[0].str().empty())
                                          gone();
                                  });
        });
    }

private:
    static constexpr std::string_view prefix = "notify:";

    // Every script starts with this: its names, Redis's clock (one clock for every node), and
    // what forgetting a user takes. ARGV[1] is the prefix. The keys are not declared (KEYS):
    // this runs on one Redis, not on a Redis Cluster (see README.md).
    static constexpr std::string_view prelude = R"(
local P = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function drop_admin(user)
  redis.call('ZREM', P .. 'admins', user)
  redis.call('DEL', P .. '{admin:' .. user .. '}', P .. '{admin:' .. user .. '}:delivered')
end
local function forget(user)
  drop_admin(user)
  redis.call('ZREM', P .. 'users', user)
  redis.call('DEL', P .. '{user:' .. user .. '}', P .. '{user:' .. user .. '}:delivered')
  local list = P .. 'exports:' .. user
  for _, id in ipairs(redis.call('LRANGE', list, 0, -1)) do redis.call('DEL', P .. 'export:' .. id) end
  redis.call('DEL', list)
end
local function prune(ttl)
  for _, u in ipairs(redis.call('ZRANGEBYSCORE', P .. 'users', '-inf', now - ttl, 'LIMIT', 0, 100)) do forget(u) end
  for _, u in ipairs(redis.call('ZRANGEBYSCORE', P .. 'admins', '-inf', now - ttl, 'LIMIT', 0, 100)) do drop_admin(u) end
end
-- A place for a new one in zset z of at most max: the least recently active one, idle longer
-- than a session lives, makes room (evict). Nil when there is room, else the ms to wait.
local function place(z, who, idle, max, evict)
  if redis.call('ZSCORE', z, who) or redis.call('ZCARD', z) < max then return nil end
  local oldest = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
  local free_at = tonumber(oldest[2]) + idle
  if free_at > now then return free_at - now end
  evict(oldest[1])
  return nil
end
local function touch(token, idle)
  local key = P .. 'session:' .. token
  local s = redis.call('HMGET', key, 'user', 'admin')
  if not s[1] then return '' end
  redis.call('PEXPIRE', key, idle)
  redis.call('ZADD', P .. 'sessions', now + idle, token)
  redis.call('ZADD', P .. 'users', now, s[1])
  if s[2] == '1' then redis.call('ZADD', P .. 'admins', now, s[1]) end
  return s[2] .. s[1]
end
)";

    // ARGV: prefix, token, user, admin, idle, ttl, max sessions, users, admins. Caps are
    // checked in the single server's order: sessions, admins, users.
    static constexpr std::string_view login_script = R"(
local token, user, admin, idle, ttl = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
prune(ttl)
redis.call('ZREMRANGEBYSCORE', P .. 'sessions', '-inf', now)
if redis.call('ZCARD', P .. 'sessions') >= tonumber(ARGV[7]) then
  local first = redis.call('ZRANGE', P .. 'sessions', 0, 0, 'WITHSCORES')
  return {'sessions', tostring(math.max(0, tonumber(first[2]) - now))}
end
if admin == '1' then
  local wait = place(P .. 'admins', user, idle, tonumber(ARGV[9]), drop_admin)
  if wait then return {'admins', tostring(wait)} end
end
local wait = place(P .. 'users', user, idle, tonumber(ARGV[8]), forget)
if wait then return {'users', tostring(wait)} end
redis.call('HSET', P .. 'session:' .. token, 'user', user, 'admin', admin)
touch(token, idle)
return 'ok'
)";

    // ARGV: prefix, idle, tokens...: per token, admin flag and user, or '' for no session.
    static constexpr std::string_view touch_script = R"(
local out = {}
for i = 3, #ARGV do out[#out + 1] = touch(ARGV[i], tonumber(ARGV[2])) end
return out
)";

    // ARGV: prefix, token.
    static constexpr std::string_view logout_script = R"(
redis.call('DEL', P .. 'session:' .. ARGV[2])
redis.call('ZREM', P .. 'sessions', ARGV[2])
redis.call('PUBLISH', P .. 'control', 'logout\n' .. ARGV[2])
return 1
)";

    // ARGV: prefix, user, idle, ttl, max users: -1, or the ms to wait for a place.
    static constexpr std::string_view keep_script = R"(
prune(tonumber(ARGV[4]))
local wait = place(P .. 'users', ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[5]), forget)
if wait then return wait end
redis.call('ZADD', P .. 'users', now, ARGV[2])
return -1
)";

    // ARGV: prefix, ttl.
    static constexpr std::string_view admins_script = R"(
prune(tonumber(ARGV[2]))
return redis.call('ZRANGE', P .. 'admins', 0, -1)
)";

    // ARGV: prefix, id, user, ttl.
    static constexpr std::string_view export_started_script = R"(
redis.call('HSET', P .. 'export:' .. ARGV[2], 'user', ARGV[3], 'ready', '0')
redis.call('PEXPIRE', P .. 'export:' .. ARGV[2], ARGV[4])
return 1
)";

    // ARGV: prefix, id, user, file, ttl, kept per user (older ones go).
    static constexpr std::string_view export_done_script = R"(
local key, list = P .. 'export:' .. ARGV[2], P .. 'exports:' .. ARGV[3]
redis.call('HSET', key, 'user', ARGV[3], 'ready', '1', 'file', ARGV[4])
redis.call('PEXPIRE', key, ARGV[5])
redis.call('LPUSH', list, ARGV[2])
redis.call('PEXPIRE', list, ARGV[5])
while redis.call('LLEN', list) > tonumber(ARGV[6]) do redis.call('DEL', P .. 'export:' .. redis.call('RPOP', list)) end
return 1
)";

    // ARGV: prefix.
    static constexpr std::string_view counts_script = R"(
redis.call('ZREMRANGEBYSCORE', P .. 'sessions', '-inf', now)
return {redis.call('ZCARD', P .. 'sessions'), redis.call('ZCARD', P .. 'users'), redis.call('ZCARD', P .. 'admins')}
)";

    struct script_texts {
        std::string touch;
    };
    static const script_texts& scripts()
    {
        static const script_texts s{std::string(prelude) + std::string(touch_script)};
        return s;
    }

    static std::string ms(std::chrono::milliseconds d) { return std::to_string(d.count()); }

    /// One command, waited for (bounded); throws store_unavailable.
    ssepp::redis::reply command(std::vector<std::string> args)
    {
        auto done = std::make_shared<std::promise<std::pair<std::error_code, ssepp::redis::reply>>>();
        auto f = done->get_future();
        asio::post(strand_, [this, done, args = std::move(args)] {
            const std::vector<std::string_view> views(args.begin(), args.end());
            state_->async_command(std::span<const std::string_view>(views), [done](std::error_code ec, ssepp::redis::reply r) {
                done->set_value({ec, std::move(r)});
            });
        });
        if (f.wait_for(store_timeout) != std::future_status::ready)
            throw store_unavailable("Redis did not answer in time");
        auto [ec, r] = f.get();
        if (ec)
            throw store_unavailable(fmt::format("Redis: {} {}", ec.message(), r.str()));
        return r;
    }

    ssepp::redis::reply script(std::string_view body, std::vector<std::string> args)
    {
        std::vector<std::string> all{"EVAL", std::string(prelude) + std::string(body), "0", std::string(prefix)};
        all.insert(all.end(), std::make_move_iterator(args.begin()), std::make_move_iterator(args.end()));
        return command(std::move(all));
    }

    static std::string wait(std::future<std::string> f)
    {
        if (f.wait_for(store_timeout) != std::future_status::ready)
            throw store_unavailable("Redis did not answer in time");
        try {
            return f.get();
        } catch (const std::system_error& e) {
            throw store_unavailable(fmt::format("Redis: {}", e.what()));
        }
    }

    void on_control(std::string_view payload)
    {
        const auto nl = payload.find('\n');
        if (nl == std::string_view::npos)
            return;
        const auto verb = payload.substr(0, nl);
        const auto arg = std::string(payload.substr(nl + 1));
        if (verb == "logout")
            hooks_.end_session(arg);
        else if (verb == "close")
            node_->local().complete(user_key(arg));
    }

    /// On the strand, every few seconds: the sessions streaming here stay alive (their clients
    /// use them), those gone meanwhile (a logout this node missed, an expiry) end here too;
    /// and the node's own copies of keys without a stream here are dropped (every node gets
    /// every event, so it would else keep the last events of every user the cluster ever had).
    void refresh(bool rearm)
    {
        const auto tokens = hooks_.streaming_sessions();
        if (!tokens.empty()) {
            std::vector<std::string> args{"EVAL", scripts().touch, "0", std::string(prefix), ms(limits_.session_idle)};
            args.insert(args.end(), tokens.begin(), tokens.end());
            const std::vector<std::string_view> views(args.begin(), args.end());
            state_->async_command(std::span<const std::string_view>(views), [this, tokens](std::error_code ec, ssepp::redis::reply r) {
                if (ec || !r.is_array() || r.size() != tokens.size())
                    return;  // Redis away: nothing is concluded
                for (std::size_t i = 0; i < tokens.size(); ++i)
                    if (r[i].str().empty())
                        hooks_.end_session(tokens[i]);
            });
        }
        if (rearm)
            sweep();
        if (!rearm)
            return;
        refresh_.expires_after(std::clamp<std::chrono::milliseconds>(limits_.session_idle / 3, std::chrono::milliseconds(100),
                                                                     std::chrono::seconds(5)));
        refresh_.async_wait([this](std::error_code ec) {
            if (!ec)
                refresh(true);
        });
    }

    /// Drops the keys that had no stream here at the last sweep and still have none. Not at
    /// the first sight: as a stream closes, the node reads its keys' copies here to record in
    /// Redis what it wrote (for replay::undelivered on any node), a moment after the key
    /// shows no stream. Nothing is lost by dropping a copy: an attach reads the streams.
    void sweep()
    {
        auto& reg = node_->local();
        std::set<std::string> idle;
        for (auto& key : reg.keys())
            if (reg.size(key) == 0)
                idle.insert(std::move(key));
        for (const auto& key : idle)
            if (swept_.contains(key))
                reg.erase(key);
        swept_ = std::move(idle);
    }

    /// Closes the links and ends the Redis thread (bounded: nothing there waits).
    void stop()
    {
        if (!thread_.joinable())
            return;
        asio::post(strand_, [this] {
            refresh_.cancel();
            control_->close();
            state_->close();
            node_->close();
            asio::post(strand_, [this] { io_.stop(); });  // after what the closes posted
        });
        thread_.join();
    }

    const limits limits_;
    cluster_hooks hooks_;
    asio::io_context io_;
    asio::strand<asio::io_context::executor_type> strand_{asio::make_strand(io_)};
    asio::executor_work_guard<asio::io_context::executor_type> work_{io_.get_executor()};
    std::shared_ptr<ssepp::redis::node> node_;
    std::shared_ptr<ssepp::redis::connection> state_;
    std::shared_ptr<ssepp::redis::subscriber> control_;
    asio::steady_timer refresh_{strand_};
    int control_links_ = 0;                 // on the strand
    std::set<std::string> swept_;           // on the strand: keys without a stream at the last sweep
    std::atomic<bool> control_ready_{false}; // read by the constructor's thread
    std::thread thread_;
};

#else

/// Without ssepp::redis, --redis is refused (in main) before any of this is used.
class cluster_store {
public:
    cluster_store(const std::string&, const limits&, cluster_hooks)
    {
        throw std::runtime_error("built without Redis support: --redis needs ssepp::redis "
                                 "(install libhiredis-dev and configure again)");
    }
    [[noreturn]] static void unavailable() { throw std::logic_error("cluster_store without Redis support"); }
    ssepp::registry& local() { unavailable(); }
    std::optional<cluster_refusal> login(const std::string&, const std::string&, bool) { unavailable(); }
    std::optional<std::pair<std::string, bool>> touch(const std::string&) { unavailable(); }
    void logout(const std::string&) { unavailable(); }
    void close_user(const std::string&) { unavailable(); }
    std::optional<std::chrono::milliseconds> keep_user(const std::string&) { unavailable(); }
    std::vector<std::string> admins() { unavailable(); }
    void export_started(const std::string&, const std::string&) { unavailable(); }
    void export_done(const std::string&, const std::string&, const std::string&) { unavailable(); }
    std::optional<cluster_export> find_export(const std::string&) { unavailable(); }
    cluster_counts counts() { unavailable(); }
    std::string send(const std::string&, ssepp::event) { unavailable(); }
    void send_each(const std::vector<std::string>&, const ssepp::event&) { unavailable(); }
    void attach(std::vector<std::string>, std::shared_ptr<ssepp::emitter>, ssepp::attach_options,
                std::function<void(std::error_code, ssepp::attach_result)>) { unavailable(); }
    void check_session(const std::string&, std::function<void()>) { unavailable(); }
};

#endif

} // namespace notifications
