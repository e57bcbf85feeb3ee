// notify_server: the other things users build with SSE. Messages to one user by id (every tab
// of theirs gets them; those sent while offline arrive on the next connection), an order alert
// to every admin, an export whose "file ready" reaches only the user who asked, and a public
// lossy ticker. The HTTP contract is in README.md beside this file.
#include "common/http.hpp"
#include "common/http_flags.hpp"
#include "common/random_id.hpp"
#include "common/server_main.hpp"
#include "common/sqlite.hpp"
#include "common/stream_slots.hpp"
#include "notifications/page_html.hpp"

#include <ssepp/ssepp.hpp>

#include <asio.hpp>
#include <fmt/chrono.h>
#include <fmt/format.h>

#if SSEPP_EXAMPLES_REDIS
#include <ssepp/redis/cluster.hpp>
#endif

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <variant>

using common::http::request;
using common::http::response;
using json = nlohmann::json;

namespace {

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
    /// Event streams open at once: in all (user streams and the ticker), per session, and of
    /// the public ticker (which nobody has to log in for, so it may not take every place).
    std::size_t max_streams = 1024;
    std::size_t max_session_streams = 8;
    std::size_t max_ticker_streams = 256;
    /// A ticker stream whose writes make no progress for this long is closed: its client
    /// stopped reading (the ticker drops old ticks for a slow client, it does not wait).
    std::chrono::milliseconds ticker_write_timeout{std::chrono::seconds(30)};
    /// How often the ticker ticks.
    std::chrono::milliseconds tick{std::chrono::seconds(1)};
};

/// Seconds a client refused a stream for capacity is told to wait.
constexpr int stream_retry_after_seconds = 5;

/// The ticker's streams' own count among the stream places (sessions' are their tokens).
constexpr std::string_view ticker_slot_key = "ticker";

/// Largest order (as compact JSON): its order-created event must fit the registry's bound.
constexpr std::size_t max_order_bytes = 32 * 1024;

/// Finished exports kept per user (older ones are deleted with their files).
constexpr std::size_t kept_exports_per_user = 4;

struct session {
    std::string user;
    bool admin = false;
    steady::time_point last_used{};
    std::vector<std::weak_ptr<ssepp::emitter>> streams; // ended with the session (logout)
};

struct user_state {
    std::size_t sessions = 0;
    std::size_t admin_sessions = 0;     // of them, logged in as admin
    std::size_t exports_running = 0;
    bool admin = false;        // has an admin key that order alerts go to
    bool waiting = false;      // a notification went out while no stream of theirs was open
    bool admin_waiting = false; // an order alert went out while no admin stream of theirs was open
    steady::time_point last_active{};
    std::deque<std::string> finished_exports; // oldest first
};

struct export_job {
    std::string user;
    std::filesystem::path file;
    bool ready = false;
};

std::string user_key(std::string_view user) { return fmt::format("user:{}", user); }

/// A path segment's %XX escapes decoded ('+' stays '+', unlike in a query); a malformed
/// escape stays as is. `/api/notifications/J%C3%BCrgen` is for user "Jürgen".
std::string decode_path(std::string_view s)
{
    std::string out;
    for (std::size_t i = 0; i < s.size(); ++i) {
        const int hi = i + 2 < s.size() && s[i] == '%' ? ssepp::detail::hex_value(s[i + 1]) : -1;
        const int lo = hi >= 0 ? ssepp::detail::hex_value(s[i + 2]) : -1;
        if (lo >= 0) {
            out += static_cast<char>(hi * 16 + lo);
            i += 2;
        } else {
            out += s[i];
        }
    }
    return out;
}

/// What an admin gets as an admin (order alerts): a key per admin user, not one for all of
/// them, so that an admin who was offline gets on the next connection what came meanwhile
/// (replay::undelivered works per key: with one shared key, another admin's connection would
/// count as delivery). Only admin sessions attach it.
std::string admin_key(std::string_view user) { return fmt::format("admin:{}", user); }

/// Whether the request's body is declared JSON. A cross-site HTML form can only send
/// form-urlencoded, multipart or text/plain bodies, and fetch() from another site cannot send
/// application/json without a CORS preflight, which this server never grants: requiring it on
/// every state-changing request is half of the CSRF defence (the SameSite=Strict cookie is the
/// other half).
bool json_content_type(const request& req)
{
    const auto ct = req.header("Content-Type");
    return ssepp::detail::iequals(ssepp::detail::trim_ows(ct.substr(0, ct.find(';'))), "application/json");
}

/// `status` with a JSON reason and Retry-After: when to try again, in whole seconds (at least 1).
response refuse(int status, std::string_view reason, std::chrono::milliseconds retry_after)
{
    auto r = response::error(status, reason);
    const auto seconds = std::max<std::int64_t>(1, (retry_after.count() + 999) / 1000);
    r.headers.emplace_back("Retry-After", std::to_string(seconds));
    return r;
}

/// Counters for /metrics, fed by the registries' results and the emitters' close reasons.
struct metrics {
    std::atomic<std::uint64_t> events_sent{0}, bytes_sent{0}, slow_consumer_closes{0}, stalled_closes{0}, replays_served{0};
};

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
            node_->local().close(user_key(arg));
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

class notify_service {
public:
    /// `redis_url`: empty for a server of its own; else this server is one node of a cluster
    /// that shares that Redis (and, on one machine, the database file).
    notify_service(asio::io_context& io, std::string db_path, limits lim, std::chrono::milliseconds export_time,
                   const std::string& redis_url = {})
        : io_(io), db_path_(std::move(db_path)), limits_(lim), export_time_(export_time)
    {
        if (!redis_url.empty())
            cluster_ = std::make_unique<cluster_store>(
                redis_url, limits_,
                cluster_hooks{.end_session = [this](const std::string& token) { return end_node_session(token); },
                              .streaming_sessions = [this] { return streaming_sessions(); }});
        common::sqlite::db db(db_path_);
        db.busy_timeout(std::chrono::seconds(5));  // nodes of a cluster may share the file, and start at once
        db.exec("PRAGMA journal_mode=WAL;"
                "CREATE TABLE IF NOT EXISTS orders(id INTEGER PRIMARY KEY, customer TEXT NOT NULL,"
                " created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')));"
                "CREATE TABLE IF NOT EXISTS order_items(order_id INTEGER NOT NULL REFERENCES orders(id),"
                " sku TEXT NOT NULL, qty INTEGER NOT NULL);");
        exports_dir_ = std::filesystem::temp_directory_path() / fmt::format("notify_exports_{}", common::random_id());
        std::filesystem::create_directories(exports_dir_);
        tick(0);
    }

    ~notify_service()
    {
        // The workers use everything below: they end first, whatever the members' order. A
        // running export sees stopping_exports_ and gives up; queued ones never start.
        {
            std::lock_guard lock(mtx_);
            stopping_exports_ = true;
        }
        export_cv_.notify_all();
        workers_.stop();
        workers_.join();
        cluster_.reset();  // its thread runs the hooks, which use the members below
        std::error_code ec;
        std::filesystem::remove_all(exports_dir_, ec);
    }

    common::http::reply handle(request& req)
    {
        try {
            return route(req);
        } catch (const store_unavailable& e) {
            fmt::print(stderr, "notify_server: {}\n", e.what());
            return refuse(503, "the cluster's shared store (Redis) is unavailable; try again", std::chrono::seconds(1));
        }
    }

    /// Ends every stream and the ticker (shutdown): then nothing is left for the io_context.
    void shutdown()
    {
        // The ticker's timer lives on its strand: cancelling it from here could miss a tick
        // already due, which would re-arm it and keep io.run() going forever.
        asio::post(ticker_timer_.get_executor(), [this] {
            ticking_ = false;
            ticker_timer_.cancel();
        });
        std::lock_guard lock(life_mtx_);
        stopping_ = true;
        users_.complete_all();
        if (cluster_)
            cluster_->local().complete_all();
        ticker_.complete_all();
    }

private:
    common::http::reply route(request& req)
    {
        const auto& m = req.method;
        const auto& p = req.path;
        if (m == "GET" && p == "/")
            return response::html(std::string(notifications::page_html));
        if (m == "GET" && p == "/api/events")
            return events(req);
        if (m == "GET" && p.starts_with("/api/exports/") && p.ends_with("/file"))
            return export_file(p.substr(13, p.size() - 13 - 5), req);
        if (m == "GET" && p == "/api/ticker")
            return ticker(req);
        if (m == "GET" && p == "/metrics")
            return show_metrics();

        // State-changing requests: JSON only (CSRF), then a session for all but the login.
        const bool login_path = p == "/api/login";
        const bool known = (m == "POST" && (login_path || p.starts_with("/api/notifications/") || p == "/api/orders"
                                            || p == "/api/exports" || p == "/api/logout"))
                           || (m == "DELETE" && p == "/api/events");
        if (!known)
            return response::error(404, "no such resource");
        if (!json_content_type(req))
            return response::error(415, "send the body as JSON, with Content-Type: application/json");
        if (login_path)
            return login(req);
        auto s = current(req);
        if (!s)
            return response::error(401, "log in first (POST /api/login)");
        if (m == "DELETE")
            return close_streams(*s);
        if (p == "/api/logout")
            return logout(*s);
        if (p == "/api/orders")
            return place_order(*s, req);
        if (p == "/api/exports")
            return start_export(*s);
        return notify(*s, decode_path(p.substr(std::string_view("/api/notifications/").size())), req);
    }

    struct caller {
        std::string token;
        std::string user;
        bool admin = false;
    };

    /// The request's live session, now used (its idle time starts again), or nullopt.
    std::optional<caller> current(const request& req)
    {
        auto token = req.cookie("session");
        if (!token)
            return std::nullopt;
        if (cluster_) {
            auto s = cluster_->touch(*token);
            if (!s)
                return std::nullopt;
            return caller{*token, std::move(s->first), s->second};
        }
        std::lock_guard lock(mtx_);
        const auto now = steady::now();
        expire_locked(now);
        auto it = sessions_.find(*token);
        if (it == sessions_.end())
            return std::nullopt;
        it->second.last_used = now;
        touch_locked(it->second.user, now);
        return caller{*token, it->second.user, it->second.admin};
    }

    // --- Who is kept, and for how long -------------------------------------------------------
    // A user is kept while they have a session or an export running. Then, if something is
    // kept for them (notifications sent while no stream of theirs was open, export files, or
    // as an admin, order alerts), they are kept for user_ttl, in idle_users_, from where the
    // least recently active is the first to make room for a new user; else they are forgotten
    // at once. Their admin role likewise: kept while they have an admin session, then only
    // while order alerts wait for them, in idle_admins_, from where the least recently active
    // makes room for a new admin. So throwaway logins hold nothing once their sessions are gone,
    // and no cap is held for user_ttl by users nobody uses.

    /// Forgets idle sessions, then users idle past user_ttl. Sessions: once the earliest is due
    /// (next_session_expiry_ is a lower bound, so most calls cost nothing).
    void expire_locked(steady::time_point now)
    {
        if (now >= next_session_expiry_) {
            next_session_expiry_ = steady::time_point::max();
            for (auto it = sessions_.begin(); it != sessions_.end();) {
                const auto due = it->second.last_used + limits_.session_idle;
                const bool streaming = slots_.open(it->first) > 0;  // asked for or open
                if (!streaming && due <= now) {
                    it = end_session_locked(it);
                    continue;
                }
                if (!streaming)
                    next_session_expiry_ = std::min(next_session_expiry_, due);
                ++it;
            }
        }
        while (!idle_users_.empty() && idle_users_.begin()->first + limits_.user_ttl <= now)
            forget_user_locked(accounts_.find(idle_users_.begin()->second));
    }

    /// Ends a session (logout, expiry): the streams it had, to complete outside the lock; and
    /// the next session.
    std::map<std::string, session>::iterator end_session_locked(std::map<std::string, session>::iterator it,
                                                               std::vector<std::shared_ptr<ssepp::emitter>>* streams = nullptr)
    {
        auto& s = it->second;
        if (streams)
            for (auto& w : s.streams)
                if (auto e = w.lock())
                    streams->push_back(std::move(e));
        auto& a = accounts_.at(s.user);
        --a.sessions;
        if (s.admin)
            --a.admin_sessions;
        const auto user = s.user;
        auto next = sessions_.erase(it);
        settle_locked(user);
        return next;
    }

    /// `user` was active now.
    void touch_locked(const std::string& user, steady::time_point now)
    {
        auto& a = accounts_.at(user);
        idle_users_.erase({a.last_active, user});
        idle_admins_.erase({a.last_active, user});
        a.last_active = now;
        settle_locked(user);
    }

    /// After anything that changes what `user` holds: their admin role dropped, or they
    /// forgotten, when nothing keeps them; else filed as idle when they are.
    void settle_locked(const std::string& user)
    {
        auto it = accounts_.find(user);
        auto& a = it->second;
        idle_users_.erase({a.last_active, user});
        idle_admins_.erase({a.last_active, user});
        if (a.admin && a.admin_sessions == 0 && !a.admin_waiting)
            drop_admin_locked(user, a);
        if (a.sessions == 0 && a.exports_running == 0) {
            if (!a.admin && !a.waiting && a.finished_exports.empty()) {
                forget_user_locked(it);
                return;
            }
            idle_users_.emplace(a.last_active, user);
        }
        if (a.admin && a.admin_sessions == 0)
            idle_admins_.emplace(a.last_active, user);
    }

    void drop_admin_locked(const std::string& user, user_state& a)
    {
        idle_admins_.erase({a.last_active, user});
        users_.erase(admin_key(user));  // no admin session, so no admin stream either
        admins_.erase(user);
        a.admin = false;
        a.admin_waiting = false;
    }

    /// Forgets a user without a session, with what was kept for them.
    void forget_user_locked(std::map<std::string, user_state>::iterator it)
    {
        auto& a = it->second;
        if (a.admin)
            drop_admin_locked(it->first, a);
        idle_users_.erase({a.last_active, it->first});
        users_.erase(user_key(it->first));
        for (const auto& id : a.finished_exports)
            forget_export_locked(id);
        accounts_.erase(it);
    }

    /// How long until the next idle session may go: the Retry-After of a refusal when every
    /// user (or admin) has a session. When none can go yet (every session has a stream), a
    /// whole idle period.
    static std::chrono::milliseconds until(steady::time_point due, steady::time_point now, std::chrono::milliseconds otherwise)
    {
        if (due == steady::time_point::max())
            return otherwise;
        return std::chrono::duration_cast<std::chrono::milliseconds>(due - now);
    }

    /// The state of `user`, now active, created if new: at max_users the least recently
    /// active user without a session makes room; nullptr when every user has one.
    user_state* account_locked(const std::string& user, steady::time_point now)
    {
        if (!accounts_.contains(user)) {
            if (accounts_.size() >= limits_.max_users) {
                if (idle_users_.empty())
                    return nullptr;
                forget_user_locked(accounts_.find(idle_users_.begin()->second));
            }
            accounts_.emplace(user, user_state{}).first->second.last_active = now;
        }
        // Not settled here: a user just made has nothing yet, the caller gives them something.
        auto& a = accounts_.at(user);
        idle_users_.erase({a.last_active, user});
        idle_admins_.erase({a.last_active, user});
        a.last_active = now;
        return &a;
    }

    response too_many_users(steady::time_point now)
    {
        return refuse(503, fmt::format("the server holds the most users it may ({}), each with a session; "
                                       "try again later", limits_.max_users),
                      until(next_session_expiry_, now, limits_.session_idle));
    }

    static std::optional<json> parse_json(const request& req)
    {
        auto j = json::parse(req.body, nullptr, false);
        if (j.is_discarded() || !j.is_object())
            return std::nullopt;
        return j;
    }

    common::http::reply login(const request& req)
    {
        auto body = parse_json(req);
        if (!body || !(*body)["user"].is_string() || !(*body)["role"].is_string())
            return response::error(400, R"(expected JSON {"user": "...", "role": "admin"|"customer"})");
        const auto user = (*body)["user"].get<std::string>();
        const auto role = (*body)["role"].get<std::string>();
        if (user.empty() || user.size() > 64 || (role != "admin" && role != "customer"))
            return response::error(400, "user must be 1 to 64 bytes, role admin or customer");
        const bool admin = role == "admin";
        const auto token = common::random_id();
        if (cluster_) {
            if (auto refused = cluster_->login(token, user, admin)) {
                const auto what = refused->cap == "sessions" ? limits_.max_sessions
                                  : refused->cap == "admins" ? limits_.max_admins
                                                             : limits_.max_users;
                return refuse(503, fmt::format("the cluster holds the most {} it may ({}); try again later", refused->cap, what),
                              refused->retry);
            }
        } else {
            std::lock_guard lock(mtx_);
            const auto now = steady::now();
            expire_locked(now);
            if (sessions_.size() >= limits_.max_sessions)
                return refuse(503, fmt::format("the server holds the most sessions it may ({}); try again later",
                                               limits_.max_sessions),
                              until(next_session_expiry_, now, limits_.session_idle));
            auto known = accounts_.find(user);
            const bool new_admin = admin && (known == accounts_.end() || !known->second.admin);
            if (new_admin && admins_.size() >= limits_.max_admins) {
                if (idle_admins_.empty())
                    return refuse(503, fmt::format("the server has the most admins it may ({}), each with a session; "
                                                   "try again later", limits_.max_admins),
                                  until(next_session_expiry_, now, limits_.session_idle));
                // The least recently active admin without an admin session makes room.
                const auto oldest = idle_admins_.begin()->second;
                drop_admin_locked(oldest, accounts_.at(oldest));
                settle_locked(oldest);
            }
            auto* a = account_locked(user, now);
            if (!a)
                return too_many_users(now);
            ++a->sessions;
            if (admin) {
                ++a->admin_sessions;
                a->admin = true;
                admins_.insert(user);
            }
            settle_locked(user);
            sessions_[token] = {user, admin, now, {}};
            next_session_expiry_ = std::min(next_session_expiry_, now + limits_.session_idle);
        }
        auto r = response::json(200, {{"user", user}, {"role", role}});
        r.headers.emplace_back("Set-Cookie", fmt::format("session={}; Path=/; HttpOnly; SameSite=Strict", token));
        return r;
    }

    // Ends the session now: its streams complete, and its user is forgotten if nothing else
    // keeps them.
    common::http::reply logout(const caller& s)
    {
        std::vector<std::shared_ptr<ssepp::emitter>> streams;
        std::size_t closed = 0;
        if (cluster_) {
            // This node's streams first (they are the count), then every other node's.
            closed = end_node_session(s.token);
            cluster_->logout(s.token);
        } else {
            {
                std::lock_guard lock(mtx_);
                auto it = sessions_.find(s.token);
                if (it != sessions_.end())
                    end_session_locked(it, &streams);
            }
            for (auto& e : streams)
                e->complete();
            closed = streams.size();
        }
        auto r = response::json(200, {{"user", s.user}, {"closed", closed}});
        r.headers.emplace_back("Set-Cookie", "session=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict");
        return r;
    }

    /// `status` 503 for a stream refused at a limit.
    static response no_stream(std::string reason)
    {
        return refuse(503, reason, std::chrono::seconds(stream_retry_after_seconds));
    }

    /// A place for a stream under `key`: the session's token, or "" for the ticker's.
    std::variant<common::stream_slots::slot, response> stream_place(const std::string& key, bool ticker)
    {
        // The ticker's own cap is a key of its own.
        auto [slot, full] = slots_.take(ticker ? std::string(ticker_slot_key) : key,
                                        ticker ? limits_.max_ticker_streams : limits_.max_session_streams);
        if (!full)
            return std::move(slot);
        if (*full == common::stream_slots::full::total)
            return no_stream(fmt::format("the server has {} event streams open, the most it may; try again later",
                                         slots_.total()));
        if (ticker)
            return no_stream(fmt::format("the ticker has {} streams open, the most it may; try again later",
                                         limits_.max_ticker_streams));
        return no_stream(fmt::format("this session has {} event streams open, the most it may; close one "
                                     "(another tab) or try again later", limits_.max_session_streams));
    }

    // A stream carries only its session user's events (and, for admins, the order alerts):
    // the key comes from the session, never from the request.
    common::http::reply events(const request& req)
    {
        auto s = current(req);
        if (!s)
            return response::error(401, "log in first (POST /api/login)");
        std::vector<std::string> keys{user_key(s->user)};
        if (s->admin)
            keys.emplace_back(admin_key(s->user));
        auto resume = ssepp::last_event_id(req.header("Last-Event-ID"), req.target);
        // Taken before the answer: from now on the session has a stream and does not expire.
        auto place = stream_place(s->token, false);
        if (auto* refused = std::get_if<response>(&place))
            return std::move(*refused);
        auto slot = std::get<common::stream_slots::slot>(std::move(place));
        return common::http::take_socket{[this, keys = std::move(keys), resume, c = *s, slot](asio::ip::tcp::socket socket) {
            std::lock_guard lock(life_mtx_);
            if (stopping_)
                return;  // shutdown already completed the streams: this one would stay open
            if (cluster_) {
                attach_on_node(std::move(socket), keys, resume, c.token, slot);
                return;
            }
            auto stream = ssepp::make_emitter(std::move(socket));
            if (!stream_opened(c.token, stream))
                return;  // logged out meanwhile: the socket closes
            watch(*stream, c.token, slot);
            auto r = users_.attach(keys, stream, {.last_event_id = resume, .otherwise = ssepp::replay::undelivered});
            metrics_.replays_served += r.replayed ? 1 : 0;
            std::lock_guard lock2(mtx_);
            // What waited for them was replayed to this stream.
            if (auto it = accounts_.find(c.user); it != accounts_.end()) {
                it->second.waiting = false;
                if (c.admin)
                    it->second.admin_waiting = false;
            }
        }};
    }

    bool stream_opened(const std::string& token, const std::shared_ptr<ssepp::emitter>& stream)
    {
        std::lock_guard lock(mtx_);
        auto it = sessions_.find(token);
        if (it == sessions_.end())
            return false;
        auto& list = it->second.streams;
        std::erase_if(list, [](const auto& w) { return w.expired(); });
        list.push_back(stream);
        return true;
    }

    void stream_closed(const std::string& token)
    {
        std::lock_guard lock(mtx_);
        auto it = sessions_.find(token);
        if (it == sessions_.end())
            return;
        const auto now = steady::now();
        it->second.last_used = now;  // idle from now on, not from the login
        next_session_expiry_ = std::min(next_session_expiry_, now + limits_.session_idle);
    }

    common::http::reply close_streams(const caller& s)
    {
        if (cluster_) {
            const auto closed = cluster_->local().close(user_key(s.user));  // this node's: the count
            cluster_->close_user(s.user);  // and every other node's
            return response::json(200, {{"closed", closed}});
        }
        return response::json(200, {{"closed", users_.close(user_key(s.user))}});
    }

    // Sends one event to a user, as given: data byte for byte (CR and CRLF arrive as LF,
    // which is all the protocol carries), event name and id checked before anything is sent.
    // A user may send to themself; only an admin sends to others.
    common::http::reply notify(const caller& s, const std::string& user, const request& req)
    {
        if (user != s.user && !s.admin)
            return response::error(403, "only an admin sends notifications to other users");
        auto body = parse_json(req);
        if (!body)
            return response::error(400, "invalid JSON");
        ssepp::event e;
        for (const auto* field : {"event", "data", "id"})
            if (body->contains(field) && !(*body)[field].is_string())
                return response::error(400, fmt::format("'{}' must be a string", field));
        if (!body->contains("data"))
            return response::error(400, "'data' is required");
        e.data = (*body)["data"].get<std::string>();
        if (body->contains("event"))
            e.event = (*body)["event"].get<std::string>();
        if (body->contains("id"))
            e.id = (*body)["id"].get<std::string>();
        if (auto ec = ssepp::validate(e))
            return response::error(400, ec.message());
        // The protocol allows NUL in an event name; this API does not (nor in an id).
        if (e.event.find('\0') != std::string::npos)
            return response::error(400, "the event name holds NUL");
        if (user.empty() || user.size() > 64)
            return response::error(400, "user must be 1 to 64 bytes");
        if (cluster_)
            return notify_cluster(user, std::move(e));
        ssepp::send_result sent;
        {
            // Under the lock, so that the user cannot expire between the check and the send
            // (which would leave a key no one counts).
            std::lock_guard lock(mtx_);
            const auto now = steady::now();
            expire_locked(now);
            auto* a = account_locked(user, now);
            if (!a)
                return too_many_users(now);
            sent = users_.send(user_key(user), std::move(e));
            if (sent && sent.connections == 0)
                a->waiting = true;  // kept for their next stream
            settle_locked(user);
        }
        if (!sent)
            return response::error(400, sent.error.message());
        count(sent);
        return response::json(202, {{"id", sent.id}, {"delivered_to", sent.connections}});
    }

    // An order by the session user for themself, or by an admin for anyone.
    common::http::reply place_order(const caller& s, const request& req)
    {
        auto body = parse_json(req);
        if (!body || !(*body)["customer"].is_string() || !(*body)["items"].is_array() || (*body)["items"].empty())
            return response::error(400, R"(expected JSON {"customer": "...", "items": [{"sku": "...", "qty": 1}]})");
        for (const auto& item : (*body)["items"])
            if (!item.is_object() || !item["sku"].is_string() || !item["qty"].is_number_integer() || item["qty"].get<std::int64_t>() <= 0)
                return response::error(400, "each item needs a string sku and a positive integer qty");
        const auto customer = (*body)["customer"].get<std::string>();
        if (customer != s.user && !s.admin)
            return response::error(403, "only an admin places orders for another customer");
        // The order goes to admins as one event, which the registry bounds (64 KiB).
        if (body->dump().size() > max_order_bytes)
            return response::error(400, fmt::format("an order must be at most {} bytes as JSON", max_order_bytes));
        // In a cluster, who the admins are comes from Redis: asked first, so that an order is
        // not stored while its alerts cannot go out.
        const auto cluster_admins = cluster_ ? cluster_->admins() : std::vector<std::string>{};
        std::int64_t id = 0;
        {
            common::sqlite::db db(db_path_);
            db.busy_timeout(std::chrono::seconds(5)); // orders come on several threads at once
            common::sqlite::transaction tx(db);
            common::sqlite::statement order(db, "INSERT INTO orders(customer) VALUES (?)");
            order.bind(1, customer).run();
            id = db.last_insert_rowid();
            common::sqlite::statement item(db, "INSERT INTO order_items(order_id, sku, qty) VALUES (?, ?, ?)");
            for (const auto& i : (*body)["items"])
                item.bind(1, id).bind(2, i["sku"].get<std::string>()).bind(3, i["qty"].get<std::int64_t>()).run();
            tx.commit();
        }
        const json order{{"order_id", id}, {"customer", customer}, {"items", (*body)["items"]}};
        const auto data = order.dump();
        if (cluster_) {
            std::vector<std::string> keys;
            for (const auto& admin : cluster_admins)
                keys.push_back(admin_key(admin));
            try {
                cluster_->send_each(keys, {.event = "order-created", .data = data});
            } catch (const store_unavailable& e) {  // the order is stored: say so, and log the rest
                fmt::print(stderr, "notify_server: order {} stored, its alerts not all sent: {}\n", id, e.what());
            }
        } else {
            std::lock_guard lock(mtx_);  // an admin expiring meanwhile would leave a key behind
            for (const auto& admin : admins_) {
                const auto sent = users_.send(admin_key(admin), {.event = "order-created", .data = data});
                count(sent);
                if (sent && sent.connections == 0)
                    accounts_.at(admin).admin_waiting = true;  // kept for their next admin stream
            }
        }
        return response::json(201, order);
    }

    // A slow export on a worker: the session user's orders (an admin's: everyone's); only the
    // user who asked gets export-ready, and only they can download the file.
    common::http::reply start_export(const caller& s)
    {
        const auto id = common::random_id();
        if (cluster_)
            return start_export_cluster(s, id);
        {
            std::lock_guard lock(mtx_);
            auto& a = accounts_.at(s.user);
            if (a.exports_running >= limits_.max_user_exports)
                return refuse(429, fmt::format("{} export(s) of yours still running; wait for export-ready", a.exports_running),
                              export_time_);
            if (exports_running_ >= limits_.max_exports)
                return refuse(503, fmt::format("the server runs the most exports it may ({}); try again later",
                                               limits_.max_exports),
                              export_time_);
            ++a.exports_running;
            ++exports_running_;
            settle_locked(s.user);  // a user with an export running is not idle
            exports_[id] = {s.user, exports_dir_ / (id + ".csv"), false};
        }
        asio::post(workers_, [this, id, user = s.user, all = s.admin] { run_export(id, user, all); });
        return response::json(202, {{"export_id", id}, {"file", fmt::format("/api/exports/{}/file", id)}});
    }

    void run_export(const std::string& id, const std::string& user, bool all)
    {
        std::string csv = "order_id,customer,created_at,sku,qty\n";
        {
            common::sqlite::db db(db_path_);
            db.busy_timeout(std::chrono::seconds(5));
            common::sqlite::statement q(db, fmt::format("SELECT o.id, o.customer, o.created_at, i.sku, i.qty FROM orders o "
                                                        "JOIN order_items i ON i.order_id = o.id {}ORDER BY o.id",
                                                        all ? "" : "WHERE o.customer = ? "));
            if (!all)
                q.bind(1, user);
            while (q.step())
                csv += fmt::format("{},\"{}\",{},\"{}\",{}\n", q.column_int64(0), escape_csv(q.column_text(1)),
                                   q.column_text(2), escape_csv(q.column_text(3)), q.column_int64(4));
        }
        // A real export takes a while; this one pretends to, without holding anything, and
        // stops pretending when the service goes away.
        std::filesystem::path file;
        {
            std::unique_lock lock(mtx_);
            if (export_cv_.wait_for(lock, export_time_, [this] { return stopping_exports_; }))
                return;
            if (!cluster_)
                file = exports_.at(id).file;
        }
        if (cluster_) {
            finish_export_cluster(id, user, csv);
            return;
        }
        std::FILE* f = std::fopen(file.c_str(), "wb");
        if (f) {
            std::fwrite(csv.data(), 1, csv.size(), f);
            std::fclose(f);
        }
        const json ready{{"export_id", id}, {"url", fmt::format("/api/exports/{}/file", id)}};
        std::lock_guard lock(mtx_);
        exports_.at(id).ready = f != nullptr;
        --exports_running_;
        auto& a = *account_locked(user, steady::now());  // kept while the export runs
        --a.exports_running;
        a.finished_exports.push_back(id);
        if (a.finished_exports.size() > kept_exports_per_user) {
            forget_export_locked(a.finished_exports.front());
            a.finished_exports.pop_front();
        }
        const auto sent = users_.send(user_key(user), {.event = f ? "export-ready" : "export-failed", .data = ready.dump()});
        count(sent);
        if (sent && sent.connections == 0)
            a.waiting = true;
        settle_locked(user);
    }

    void forget_export_locked(const std::string& id)
    {
        auto it = exports_.find(id);
        if (it == exports_.end())
            return;
        std::error_code ec;
        std::filesystem::remove(it->second.file, ec);
        exports_.erase(it);
    }

    static std::string escape_csv(std::string_view s)
    {
        std::string out;
        for (char c : s) {
            if (c == '"')
                out += '"';
            out += c;
        }
        return out;
    }

    common::http::reply export_file(std::string_view id, const request& req)
    {
        auto s = current(req);
        if (!s)
            return response::error(401, "log in first (POST /api/login)");
        if (cluster_) {
            auto x = cluster_->find_export(std::string(id));
            if (!x || x->user != s->user)
                return response::error(404, "no such export");
            if (!x->ready)
                return response::error(409, "export not ready yet");
            return export_response(id, std::move(x->file));
        }
        std::filesystem::path file;
        {
            std::lock_guard lock(mtx_);
            auto it = exports_.find(std::string(id));
            if (it == exports_.end() || it->second.user != s->user)
                return response::error(404, "no such export");  // others' exports do not exist
            if (!it->second.ready)
                return response::error(409, "export not ready yet");
            file = it->second.file;
        }
        std::FILE* f = std::fopen(file.c_str(), "rb");
        if (!f)
            return response::error(500, "export file missing");
        std::string content;
        char buf[65536];
        for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;)
            content.append(buf, n);
        std::fclose(f);
        return export_response(id, std::move(content));
    }

    static response export_response(std::string_view id, std::string content)
    {
        response r{200, "text/csv; charset=utf-8", std::move(content), {}};
        r.headers.emplace_back("Content-Disposition", fmt::format("attachment; filename=\"orders-{}.csv\"", id));
        return r;
    }

    // The public ticker: lossy, so a slow client drops old ticks instead of stalling; one that
    // stops reading altogether is closed once its writes make no progress for
    // ticker_write_timeout (else it would hold its socket and its place forever).
    common::http::reply ticker(const request&)
    {
        auto place = stream_place({}, true);
        if (auto* refused = std::get_if<response>(&place))
            return std::move(*refused);
        auto slot = std::get<common::stream_slots::slot>(std::move(place));
        return common::http::take_socket{[this, slot](asio::ip::tcp::socket socket) {
            std::lock_guard lock(life_mtx_);
            if (stopping_)
                return;
            // A fixed, small send buffer (no autotuning up to megabytes): what the kernel holds
            // for a client that does not read stays small, and its stall shows soon.
            std::error_code ignored;
            socket.set_option(asio::socket_base::send_buffer_size(16 * 1024), ignored);
            auto stream = ssepp::make_emitter(std::move(socket), {.write_timeout = limits_.ticker_write_timeout,
                                                                  .max_queued_bytes = 16 * 1024,
                                                                  .overflow = ssepp::overflow_policy::drop_oldest});
            watch(*stream, {}, slot);
            ticker_.attach("ticker", stream, {.otherwise = ssepp::replay::none});
        }};
    }

    void tick(std::uint64_t n)
    {
        const auto now = std::chrono::system_clock::now();
        count(ticker_.send("ticker", {.event = "tick",
                                      .data = json{{"n", n}, {"time", fmt::format("{:%FT%TZ}", std::chrono::floor<std::chrono::seconds>(now))}}.dump()}));
        ticker_timer_.expires_after(limits_.tick);
        ticker_timer_.async_wait([this, n](std::error_code ec) {  // on the timer's strand
            if (!ec && ticking_)
                tick(n + 1);
        });
    }

    common::http::reply show_metrics()
    {
        std::size_t sessions = 0, users = 0, admins = 0, exports = 0;
        if (cluster_) {  // the cluster's, from Redis; zero while it is unavailable
            cluster_counts c;
            try {
                c = cluster_->counts();
            } catch (const store_unavailable&) {
            }
            sessions = c.sessions;
            users = c.users;
            admins = c.admins;
            std::lock_guard lock(mtx_);
            exports = exports_running_;
        } else {
            std::lock_guard lock(mtx_);
            expire_locked(steady::now());
            sessions = sessions_.size();
            users = accounts_.size();
            admins = admins_.size();
            exports = exports_running_;
        }
        return response::text(200, fmt::format("open_streams {}\nevents_sent {}\nbytes_sent {}\nslow_consumer_closes {}\n"
                                               "stalled_closes {}\nreplays_served {}\nsessions {}\nusers {}\nadmins {}\n"
                                               "exports_running {}\nstream_places {}\n",
                                               (cluster_ ? cluster_->local().size() : users_.size()) + ticker_.size(),
                                               metrics_.events_sent.load(),
                                               metrics_.bytes_sent.load(), metrics_.slow_consumer_closes.load(),
                                               metrics_.stalled_closes.load(), metrics_.replays_served.load(), sessions,
                                               users, admins, exports, slots_.open()));
    }

    void count(const ssepp::send_result& r) { metrics_.events_sent += r.connections; }

    /// `token`: the session whose stream this is (empty for the ticker); `slot`: its place,
    /// given back once the stream closed (when the handler goes).
    void watch(ssepp::emitter& stream, std::string token, common::stream_slots::slot slot)
    {
        stream.on_close([this, &stream, token = std::move(token), slot = std::move(slot)](ssepp::close_reason reason,
                                                                                        std::error_code) {
            metrics_.bytes_sent += stream.bytes_written();
            if (reason == ssepp::close_reason::overflow)
                ++metrics_.slow_consumer_closes;
            if (reason == ssepp::close_reason::timeout)
                ++metrics_.stalled_closes;
            if (!token.empty())
                stream_closed(token);
        });
    }

    // --- As one node of a cluster ----------------------------------------------------------------

    /// Completes this node's streams of a session that ended (here or on another node); how many.
    std::size_t end_node_session(const std::string& token)
    {
        std::vector<std::shared_ptr<ssepp::emitter>> streams;
        {
            std::lock_guard lock(mtx_);
            auto it = node_streams_.find(token);
            if (it == node_streams_.end())
                return 0;
            for (auto& w : it->second)
                if (auto e = w.lock())
                    streams.push_back(std::move(e));
            node_streams_.erase(it);
        }
        for (auto& e : streams)
            e->complete();
        return streams.size();
    }

    /// The sessions with a stream open on this node (those without are dropped from the list).
    std::vector<std::string> streaming_sessions()
    {
        std::vector<std::string> out;
        std::lock_guard lock(mtx_);
        for (auto it = node_streams_.begin(); it != node_streams_.end();) {
            std::erase_if(it->second, [](const auto& w) { return w.expired(); });
            if (it->second.empty()) {
                it = node_streams_.erase(it);
                continue;
            }
            out.push_back(it->first);
            ++it;
        }
        return out;
    }

    /// A session's stream on this node, under life_mtx_: registered (so that a logout reaches
    /// it), then attached through the cluster node, which replays from Redis what the client
    /// has not had (from its Last-Event-ID, whichever node gave it, or what no stream of its
    /// keys was sent), then checked against a logout that came before the registration.
    void attach_on_node(asio::ip::tcp::socket socket, std::vector<std::string> keys, std::optional<std::string> resume,
                        const std::string& token, common::stream_slots::slot slot)
    {
        auto stream = ssepp::make_emitter(std::move(socket));
        {
            std::lock_guard lock(mtx_);
            auto& list = node_streams_[token];
            std::erase_if(list, [](const auto& w) { return w.expired(); });
            list.push_back(stream);
        }
        watch(*stream, token, std::move(slot));
        cluster_->attach(std::move(keys), stream, {.last_event_id = std::move(resume), .otherwise = ssepp::replay::undelivered},
                         [this, stream, token](std::error_code ec, ssepp::attach_result r) {
                             if (ec) {  // Redis unavailable: nothing attached; the client retries
                                 stream->close();
                                 return;
                             }
                             metrics_.replays_served += r.replayed ? 1 : 0;
                             {
                                 std::lock_guard lock(life_mtx_);
                                 if (stopping_) {  // attached after shutdown completed the others
                                     stream->complete();
                                     return;
                                 }
                             }
                             cluster_->check_session(token, [this, token] { end_node_session(token); });
                         });
    }

    common::http::reply notify_cluster(const std::string& user, ssepp::event e)
    {
        // The id is the cluster's (a Redis stream id): one order over every node, which is what
        // lets a client resume on any node. An application's own id cannot take part in it.
        e.id = std::string(40, '0');  // at least as long as the id it gets: the size it will have
        if (ssepp::format(e).size() > ssepp::history_options{}.max_event_bytes)
            return response::error(400, std::error_code(ssepp::errc::event_too_large).message());
        e.id.reset();
        if (auto wait = cluster_->keep_user(user))
            return refuse(503, fmt::format("the cluster holds the most users it may ({}), each with a session; try again later",
                                           limits_.max_users),
                          *wait);
        return response::json(202, {{"id", cluster_->send(user_key(user), std::move(e))}});
    }

    // The caps on exports are this node's (its workers run them); the export's record and file
    // are in Redis, so that the user can fetch it through any node.
    common::http::reply start_export_cluster(const caller& s, const std::string& id)
    {
        {
            std::lock_guard lock(mtx_);
            auto& mine = node_exports_[s.user];
            if (mine >= limits_.max_user_exports)
                return refuse(429, fmt::format("{} export(s) of yours still running; wait for export-ready", mine), export_time_);
            if (exports_running_ >= limits_.max_exports)
                return refuse(503, fmt::format("the server runs the most exports it may ({}); try again later",
                                               limits_.max_exports),
                              export_time_);
            ++mine;
            ++exports_running_;
        }
        try {
            cluster_->export_started(id, s.user);
        } catch (const store_unavailable&) {
            export_ended(s.user);
            throw;
        }
        asio::post(workers_, [this, id, user = s.user, all = s.admin] { run_export(id, user, all); });
        return response::json(202, {{"export_id", id}, {"file", fmt::format("/api/exports/{}/file", id)}});
    }

    void export_ended(const std::string& user)
    {
        std::lock_guard lock(mtx_);
        --exports_running_;
        if (auto it = node_exports_.find(user); it != node_exports_.end() && --it->second == 0)
            node_exports_.erase(it);
    }

    // On a worker: the file to Redis, then export-ready to the user's streams on every node.
    void finish_export_cluster(const std::string& id, const std::string& user, const std::string& csv)
    {
        bool stored = true;
        try {
            cluster_->export_done(id, user, csv);
        } catch (const store_unavailable& e) {
            stored = false;
            fmt::print(stderr, "notify_server: export {} not stored: {}\n", id, e.what());
        }
        export_ended(user);
        const json ready{{"export_id", id}, {"url", fmt::format("/api/exports/{}/file", id)}};
        try {
            cluster_->send(user_key(user), {.event = stored ? "export-ready" : "export-failed", .data = ready.dump()});
        } catch (const store_unavailable& e) {
            fmt::print(stderr, "notify_server: export {}: {} not sent: {}\n", id, stored ? "export-ready" : "export-failed",
                       e.what());
        }
    }

    asio::io_context& io_;
    std::string db_path_;
    const limits limits_;
    const std::chrono::milliseconds export_time_;  // how long an export pretends to work
    std::filesystem::path exports_dir_;
    // Per user: what waits for an offline user. 256 KiB bounds what max_users can hold.
    ssepp::registry users_{{.max_events = 256, .max_bytes = 256 * 1024}};
    ssepp::registry ticker_{{.max_events = 0, .max_event_bytes = 16 * 1024}};  // its emitters queue 16 KiB
    asio::steady_timer ticker_timer_{asio::make_strand(io_)};
    bool ticking_ = true; // on the timer's strand
    std::mutex life_mtx_;  // orders stream attachments with shutdown
    bool stopping_ = false;
    metrics metrics_;
    std::mutex mtx_;  // everything below; taken before the registry's own lock, never after
    std::condition_variable export_cv_;  // wakes a pretending export at shutdown
    bool stopping_exports_ = false;
    std::map<std::string, session> sessions_;   // by token
    std::map<std::string, user_state> accounts_; // by user name
    std::set<std::string> admins_;              // users in accounts_ with admin set
    // Users without a session or export running (something is kept for them), and admins
    // without an admin session (order alerts wait for them), least recently active first.
    std::set<std::pair<steady::time_point, std::string>> idle_users_, idle_admins_;
    std::map<std::string, export_job> exports_;
    std::size_t exports_running_ = 0;
    steady::time_point next_session_expiry_ = steady::time_point::max(); // no idle session is due before
    common::stream_slots slots_{limits_.max_streams};  // event streams: sessions' (by token), the ticker's
    // As a node of a cluster (else empty): this node's streams by session token, and its
    // exports running by user.
    std::map<std::string, std::vector<std::weak_ptr<ssepp::emitter>>> node_streams_;
    std::map<std::string, std::size_t> node_exports_;
    // Set for a node of a cluster. Reset before the members above go (its thread uses them).
    std::unique_ptr<cluster_store> cluster_;
    // Last, so that it would be destroyed first, though the destructor joins it already.
    asio::thread_pool workers_{2};
};

} // namespace

int main(int argc, char** argv)
{
    common::server_flags server;
    common::http_flags front;
    std::string db = "notify.db";
    std::string redis;
    int export_ms = 1500;
    limits lim;
    auto session_idle_ms = lim.session_idle.count();
    auto user_ttl_ms = lim.user_ttl.count();
    auto ticker_write_timeout_ms = lim.ticker_write_timeout.count();
    auto tick_ms = lim.tick.count();
    common::cli args("notify_server");
    server.add_to(args)
        .flag("--db", db, "SQLite database file (in a cluster on one machine: the same file for every node)")
        .flag("--redis", redis, "redis://host[:port][/db]: run as one node of a cluster sharing this Redis")
        .flag("--export-ms", export_ms, "how long an export pretends to work")
        .flag("--max-sessions", lim.max_sessions, "sessions held at once (503 past it)")
        .flag("--max-users", lim.max_users, "users held at once, with a session or notifications kept (503 past it)")
        .flag("--max-admins", lim.max_admins, "admins at once (503 past it)")
        .flag("--max-exports", lim.max_exports, "exports running or queued at once (503 past it)")
        .flag("--max-user-exports", lim.max_user_exports, "exports running or queued per user (429 past it)")
        .flag("--session-idle-ms", session_idle_ms, "a session without a stream unused this long is gone")
        .flag("--user-ttl-ms", user_ttl_ms, "a user without a session, untouched this long, is forgotten with their notifications")
        .flag("--max-streams", lim.max_streams, "event streams open at once, the ticker's included (503 past it)")
        .flag("--max-session-streams", lim.max_session_streams, "event streams open at once per session (503 past it)")
        .flag("--max-ticker-streams", lim.max_ticker_streams, "ticker streams open at once (503 past it)")
        .flag("--ticker-write-timeout-ms", ticker_write_timeout_ms, "a ticker stream whose writes stall this long is closed")
        .flag("--tick-ms", tick_ms, "how often the ticker ticks");
    front.add_to(args).parse(argc, argv);
    lim.session_idle = std::chrono::milliseconds(session_idle_ms);
    lim.user_ttl = std::chrono::milliseconds(user_ttl_ms);
    lim.ticker_write_timeout = std::chrono::milliseconds(ticker_write_timeout_ms);
    lim.tick = std::chrono::milliseconds(std::max<std::int64_t>(1, tick_ms));
#if !SSEPP_EXAMPLES_REDIS
    if (!redis.empty()) {
        fmt::print(stderr, "notify_server: built without Redis support: --redis needs ssepp::redis "
                           "(install libhiredis-dev and configure again)\n");
        return 1;
    }
#endif
    try {
        asio::io_context io;
        notify_service service(io, db, lim, std::chrono::milliseconds(export_ms), redis);
        common::http::server http(io, server.endpoint(), [&](request& r) { return service.handle(r); }, {}, front.get());
        fmt::print("notify_server listening on http://{}:{}/\n", server.host, http.local_endpoint().port());
        std::fflush(stdout);
        asio::signal_set signals(io, SIGINT, SIGTERM);
        signals.async_wait([&](std::error_code, int) {
            http.stop();
            service.shutdown();
        });
        common::run(io, server.threads);
    } catch (const std::exception& e) {
        fmt::print(stderr, "notify_server: {}\n", e.what());
        return 1;
    }
    return 0;
}
