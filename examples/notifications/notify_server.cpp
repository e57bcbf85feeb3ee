// notify_server: the other things users build with SSE. Messages to one user by id (every tab
// of theirs gets them; those sent while offline arrive on the next connection), an order alert
// to every admin, an export whose "file ready" reaches only the user who asked, and a public
// lossy ticker. The HTTP contract is in README.md beside this file.
#include "common/http.hpp"
#include "common/http_flags.hpp"
#include "common/metrics.hpp"
#include "common/random_id.hpp"
#include "common/server_main.hpp"
#include "common/sqlite.hpp"
#include "common/stream_limits.hpp"
#include "common/stream_slots.hpp"
#include "notifications/cluster_store.hpp"
#include "notifications/page_html.hpp"

#include <ssepp/ssepp.hpp>

#include <asio.hpp>
#include <fmt/chrono.h>
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <limits>
#include <map>
#include <mutex>
#include <set>
#include <span>
#include <variant>

using common::http::request;
using common::http::response;
using json = nlohmann::json;

namespace {

// The limits, user_key and the cluster mode (--redis) are in cluster_store.hpp.
using notifications::cluster_counts;
using notifications::cluster_hooks;
using notifications::cluster_store;
using notifications::kept_exports_per_user;
using notifications::limits;
using notifications::steady;
using notifications::store_unavailable;
using notifications::user_key;

/// Seconds a client refused a stream for capacity is told to wait.
constexpr int stream_retry_after_seconds = 5;

/// Largest order (as compact JSON): its order-created event must fit the registry's bound.
constexpr std::size_t max_order_bytes = 32 * 1024;

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

/// The server's own counters for /metrics, beside the registries' (ssepp::metrics).
struct metrics {
    std::atomic<std::uint64_t> deliveries{0};  // events queued to streams: one to three streams counts three
    std::atomic<std::uint64_t> replays{0};     // streams that were replayed something when they opened
};

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
        users_.set_limits(user_stream_limits());
        ticker_.set_limits({.max_connections = limits_.max_ticker_streams});
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
    /// Each stream is told to come back after a `retry` from [retry_min, retry_max], so that
    /// its clients return spread over that window.
    void shutdown(std::chrono::milliseconds retry_min, std::chrono::milliseconds retry_max)
    {
        // The ticker's timer lives on its strand: cancelling it from here could miss a tick
        // already due, which would re-arm it and keep io.run() going forever.
        asio::post(ticker_timer_.get_executor(), [this] {
            ticking_ = false;
            ticker_timer_.cancel();
        });
        std::lock_guard lock(life_mtx_);
        stopping_ = true;
        users_.complete_all(retry_min, retry_max);
        if (cluster_)
            cluster_->local().complete_all(retry_min, retry_max);
        ticker_.complete_all(retry_min, retry_max);
    }

    /// Event streams open now (the shutdown waits for them to close).
    std::size_t open_streams() const
    {
        return users_.size() + ticker_.size() + (cluster_ ? cluster_->local().size() : 0);
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
                const bool streaming = streaming_.open(it->first) > 0;  // asked for or open
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

    ssepp::connection_limits user_stream_limits() const
    {
        return {.max_connections = limits_.max_streams, .max_connections_per_key = limits_.max_user_streams};
    }

    /// The 503 for a user stream under `keys` that cannot be taken now (per user or in all), or
    /// nothing; checked before the answer, so that a refusal is an HTTP answer, not a stream.
    /// A cluster node's registry has no limits of its own (its attach() must not be refused:
    /// README, Limits in a cluster), so it is checked from its counts.
    std::optional<response> refuse_user_stream(const std::vector<std::string>& keys)
    {
        auto& reg = cluster_ ? cluster_->local() : users_;
        const auto span = std::span<const std::string>(keys);
        const auto cap = common::full_cap(reg, span, user_stream_limits());
        if (cap == common::stream_cap::none && reg.admits(span))
            return std::nullopt;
        reg.refuse(span);  // counted in ssepp_connections_refused_total
        return common::stream_refused(
            cap == common::stream_cap::key
                ? fmt::format("this user has {} event streams open, the most they may; close one (another tab) or "
                              "try again later", limits_.max_user_streams)
                : fmt::format("the server has {} event streams open, the most it may; try again later", limits_.max_streams),
            std::chrono::seconds(stream_retry_after_seconds));
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
        if (auto refused = refuse_user_stream(keys))
            return std::move(*refused);
        // Taken before the answer: from now on the session has a stream and does not expire.
        auto slot = streaming_.take(s->token, std::numeric_limits<std::size_t>::max()).first;
        return common::http::take_socket{[this, keys = std::move(keys), resume, c = *s, slot](asio::ip::tcp::socket socket) {
            std::lock_guard lock(life_mtx_);
            if (stopping_)
                return;  // shutdown already completed the streams: this one would stay open
            if (cluster_) {
                attach_on_node(std::move(socket), keys, resume, c.token, slot);
                return;
            }
            auto stream = ssepp::make_emitter(ssepp::http_body(std::move(socket)));
            if (!stream_opened(c.token, stream))
                return;  // logged out meanwhile: the socket closes
            watch(*stream, c.token, slot);
            std::error_code ec;
            auto r = users_.attach(keys, stream, {.last_event_id = resume, .otherwise = ssepp::replay::undelivered}, ec);
            if (ec) {
                // Streams of other requests took the last places since the check: nothing was
                // sent yet, the connection just closes (EventSource tries again).
                stream->abort();
                return;
            }
            metrics_.replays += r.replayed ? 1 : 0;
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
            const auto closed = cluster_->local().complete(user_key(s.user));  // this node's: the count
            cluster_->close_user(s.user);  // and every other node's
            return response::json(200, {{"closed", closed}});
        }
        return response::json(200, {{"closed", users_.complete(user_key(s.user))}});
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
        std::error_code ec;
        {
            // Under the lock, so that the user cannot expire between the check and the send
            // (which would leave a key no one counts).
            std::lock_guard lock(mtx_);
            const auto now = steady::now();
            expire_locked(now);
            auto* a = account_locked(user, now);
            if (!a)
                return too_many_users(now);
            sent = users_.send(user_key(user), std::move(e), ec);
            if (!ec && sent.connections == 0)
                a->waiting = true;  // kept for their next stream
            settle_locked(user);
        }
        if (ec)
            return response::error(400, ec.message());
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
                std::error_code ec;
                const auto sent = users_.send(admin_key(admin), {.event = "order-created", .data = data}, ec);
                count(sent);
                if (!ec && sent.connections == 0)
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
        std::error_code ec;
        const auto sent = users_.send(user_key(user), {.event = f ? "export-ready" : "export-failed", .data = ready.dump()}, ec);
        count(sent);
        if (!ec && sent.connections == 0)
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
        if (const std::string key = "ticker"; !ticker_.admits(key)) {
            ticker_.refuse(key);
            return common::stream_refused(fmt::format("the ticker has {} streams open, the most it may; try again later",
                                                      limits_.max_ticker_streams),
                                          std::chrono::seconds(stream_retry_after_seconds));
        }
        return common::http::take_socket{[this](asio::ip::tcp::socket socket) {
            std::lock_guard lock(life_mtx_);
            if (stopping_)
                return;
            // A fixed, small send buffer (no autotuning up to megabytes): what the kernel holds
            // for a client that does not read stays small, and its stall shows soon.
            std::error_code ignored;
            socket.set_option(asio::socket_base::send_buffer_size(16 * 1024), ignored);
            auto stream = ssepp::make_emitter(ssepp::http_body(std::move(socket)),
                                              {.write_timeout = limits_.ticker_write_timeout,
                                               .max_queued_bytes = 16 * 1024,
                                               .overflow = ssepp::overflow_policy::drop_oldest});
            std::error_code ec;
            ticker_.attach("ticker", stream, {.otherwise = ssepp::replay::none}, ec);
            if (ec)
                stream->abort();  // the last place went meanwhile
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
        // One exposition: the user streams' registry (a node's own, in a cluster) and the
        // ticker's, added up, then this server's own counts.
        auto m = users_.metrics();
        if (cluster_)
            m += cluster_->local().metrics();
        const auto ticker = ticker_.metrics();
        m += ticker;
        common::exposition out;
        out.registry(m)
            .gauge("notify_ticker_streams", "Open ticker streams (among ssepp_open_connections).", ticker.connections)
            .counter("notify_deliveries_total", "Events queued to streams (an event to three streams counts three).",
                     metrics_.deliveries.load())
            .counter("notify_replays_total", "Streams that were replayed missed events when they opened.",
                     metrics_.replays.load())
            .gauge("notify_sessions", cluster_ ? "Sessions (the cluster's)." : "Sessions.", sessions)
            .gauge("notify_users", cluster_ ? "Users kept (the cluster's)." : "Users kept.", users)
            .gauge("notify_admins", cluster_ ? "Admins (the cluster's)." : "Admins.", admins)
            .gauge("notify_exports_running", "Exports running or queued on this server.", exports);
        return out.response();
    }

    void count(const ssepp::send_result& r) { metrics_.deliveries += r.connections; }

    /// A session's stream: `slot` (its mark in streaming_) is held until it closed, when the
    /// session's idle time starts.
    void watch(ssepp::emitter& stream, std::string token, common::stream_slots::slot slot)
    {
        stream.on_close([this, token = std::move(token), slot = std::move(slot)](ssepp::close_reason, std::error_code) {
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
        auto stream = ssepp::make_emitter(ssepp::http_body(std::move(socket)));
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
                                 stream->abort();
                                 return;
                             }
                             metrics_.replays += r.replayed ? 1 : 0;
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
    // Sessions with a stream asked for or open (by token): they do not expire. No cap here:
    // the registries' connection_limits are the caps.
    common::stream_slots streaming_{std::numeric_limits<std::size_t>::max()};
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
    common::shutdown_flags stop;
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
        .flag("--max-streams", lim.max_streams, "user event streams open at once (0: no cap; 503 past it)")
        .flag("--max-user-streams", lim.max_user_streams, "user event streams open at once per user, every tab of every session (0: no cap; 503 past it)")
        .flag("--max-session-streams", lim.max_user_streams, "former name of --max-user-streams")
        .flag("--max-ticker-streams", lim.max_ticker_streams, "ticker streams open at once (0: no cap; 503 past it)")
        .flag("--ticker-write-timeout-ms", ticker_write_timeout_ms, "a ticker stream whose writes stall this long is closed")
        .flag("--tick-ms", tick_ms, "how often the ticker ticks");
    stop.add_to(args);
    front.add_to(args).parse(argc, argv);
    if (const auto problem = stop.problem(); !problem.empty()) {
        fmt::print(stderr, "notify_server: {}\n", problem);
        return 2;
    }
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
        std::thread stopper;
        signals.async_wait([&](std::error_code, int) {
            http.stop();
            service.shutdown(stop.retry_min(), stop.retry_max());
            // The streams have --shutdown-drain-ms to close (waited for off the I/O threads).
            stopper = std::thread([&] {
                common::wait_drained(io, [&] { return service.open_streams(); }, stop.drain_timeout());
            });
        });
        common::run(io, server.threads);
        if (stopper.joinable())
            stopper.join();
    } catch (const std::exception& e) {
        fmt::print(stderr, "notify_server: {}\n", e.what());
        return 1;
    }
    return 0;
}
