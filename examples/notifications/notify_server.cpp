// notify_server: the other things users build with SSE. Messages to one user by id (every tab
// of theirs gets them; those sent while offline arrive on the next connection), an order alert
// to every admin, an export whose "file ready" reaches only the user who asked, and a public
// lossy ticker. The HTTP contract is in README.md beside this file.
#include "common/http.hpp"
#include "common/random_id.hpp"
#include "common/server_main.hpp"
#include "common/sqlite.hpp"
#include "notifications/page_html.hpp"

#include <ssepp/ssepp.hpp>

#include <asio.hpp>
#include <fmt/chrono.h>
#include <fmt/format.h>

#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>
#include <thread>

using common::http::request;
using common::http::response;
using json = nlohmann::json;

namespace {

struct session {
    std::string user;
    bool admin = false;
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

/// Counters for /metrics, fed by the registries' results and the emitters' close reasons.
struct metrics {
    std::atomic<std::uint64_t> events_sent{0}, bytes_sent{0}, slow_consumer_closes{0}, replays_served{0};
};

class notify_service {
public:
    notify_service(asio::io_context& io, std::string db_path) : io_(io), db_path_(std::move(db_path))
    {
        common::sqlite::db db(db_path_);
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
        // running export sees stopping_ and gives up; queued ones never start.
        {
            std::lock_guard lock(mtx_);
            stopping_exports_ = true;
        }
        export_cv_.notify_all();
        workers_.stop();
        workers_.join();
        std::error_code ec;
        std::filesystem::remove_all(exports_dir_, ec);
    }

    common::http::reply handle(request& req)
    {
        const auto& m = req.method;
        const auto& p = req.path;
        if (m == "GET" && p == "/")
            return response::html(std::string(notifications::page_html));
        if (m == "POST" && p == "/api/login")
            return login(req);
        if (p == "/api/events" && m == "GET")
            return events(req);
        if (p == "/api/events" && m == "DELETE")
            return close_streams(req);
        if (m == "POST" && p.starts_with("/api/notifications/"))
            return notify(decode_path(p.substr(std::string_view("/api/notifications/").size())), req);
        if (m == "POST" && p == "/api/orders")
            return place_order(req);
        if (m == "POST" && p == "/api/exports")
            return start_export(req);
        if (m == "GET" && p.starts_with("/api/exports/") && p.ends_with("/file"))
            return export_file(p.substr(13, p.size() - 13 - 5), req);
        if (m == "GET" && p == "/api/ticker")
            return ticker(req);
        if (m == "GET" && p == "/metrics")
            return show_metrics();
        return response::error(404, "no such resource");
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
        ticker_.complete_all();
    }

private:
    std::optional<session> current(const request& req)
    {
        auto token = req.cookie("session");
        if (!token)
            return std::nullopt;
        std::lock_guard lock(mtx_);
        auto it = sessions_.find(*token);
        if (it == sessions_.end())
            return std::nullopt;
        return it->second;
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
        const auto token = common::random_id();
        {
            std::lock_guard lock(mtx_);
            sessions_[token] = {user, role == "admin"};
            if (role == "admin")
                admins_.insert(user);
        }
        auto r = response::json(200, {{"user", user}, {"role", role}});
        r.headers.emplace_back("Set-Cookie", fmt::format("session={}; Path=/; HttpOnly; SameSite=Strict", token));
        return r;
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
        return common::http::take_socket{[this, keys = std::move(keys), resume](asio::ip::tcp::socket socket) {
            std::lock_guard lock(life_mtx_);
            if (stopping_)
                return;  // shutdown already completed the streams: this one would stay open
            auto stream = ssepp::make_emitter(std::move(socket));
            watch(*stream);
            auto r = users_.attach(keys, stream, {.last_event_id = resume, .otherwise = ssepp::replay::undelivered});
            metrics_.replays_served += r.replayed ? 1 : 0;
        }};
    }

    common::http::reply close_streams(const request& req)
    {
        auto s = current(req);
        if (!s)
            return response::error(401, "log in first (POST /api/login)");
        return response::json(200, {{"closed", users_.close(user_key(s->user))}});
    }

    // Sends one event to a user, as given: data byte for byte (CR and CRLF arrive as LF,
    // which is all the protocol carries), event name and id checked before anything is sent.
    common::http::reply notify(const std::string& user, const request& req)
    {
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
        auto sent = users_.send(user_key(user), std::move(e));
        if (!sent)
            return response::error(400, sent.error.message());
        count(sent);
        return response::json(202, {{"id", sent.id}, {"delivered_to", sent.connections}});
    }

    common::http::reply place_order(const request& req)
    {
        auto body = parse_json(req);
        if (!body || !(*body)["customer"].is_string() || !(*body)["items"].is_array() || (*body)["items"].empty())
            return response::error(400, R"(expected JSON {"customer": "...", "items": [{"sku": "...", "qty": 1}]})");
        for (const auto& item : (*body)["items"])
            if (!item.is_object() || !item["sku"].is_string() || !item["qty"].is_number_integer() || item["qty"].get<std::int64_t>() <= 0)
                return response::error(400, "each item needs a string sku and a positive integer qty");
        std::int64_t id = 0;
        {
            common::sqlite::db db(db_path_);
            db.busy_timeout(std::chrono::seconds(5)); // orders come on several threads at once
            common::sqlite::transaction tx(db);
            common::sqlite::statement order(db, "INSERT INTO orders(customer) VALUES (?)");
            order.bind(1, (*body)["customer"].get<std::string>()).run();
            id = db.last_insert_rowid();
            common::sqlite::statement item(db, "INSERT INTO order_items(order_id, sku, qty) VALUES (?, ?, ?)");
            for (const auto& i : (*body)["items"])
                item.bind(1, id).bind(2, i["sku"].get<std::string>()).bind(3, i["qty"].get<std::int64_t>()).run();
            tx.commit();
        }
        const json order{{"order_id", id}, {"customer", (*body)["customer"]}, {"items", (*body)["items"]}};
        std::vector<std::string> admins;
        {
            std::lock_guard lock(mtx_);
            admins.assign(admins_.begin(), admins_.end());
        }
        for (const auto& admin : admins)
            count(users_.send(admin_key(admin), {.event = "order-created", .data = order.dump()}));
        return response::json(201, order);
    }

    // A slow export on a worker: only the user who asked gets export-ready, and only they can
    // download the file.
    common::http::reply start_export(const request& req)
    {
        auto s = current(req);
        if (!s)
            return response::error(401, "log in first (POST /api/login)");
        const auto id = common::random_id();
        {
            std::lock_guard lock(mtx_);
            exports_[id] = {s->user, exports_dir_ / (id + ".csv"), false};
        }
        asio::post(workers_, [this, id, user = s->user] { run_export(id, user); });
        return response::json(202, {{"export_id", id}, {"file", fmt::format("/api/exports/{}/file", id)}});
    }

    void run_export(const std::string& id, const std::string& user)
    {
        std::string csv = "order_id,customer,created_at,sku,qty\n";
        {
            common::sqlite::db db(db_path_);
            db.busy_timeout(std::chrono::seconds(5));
            common::sqlite::statement q(db, "SELECT o.id, o.customer, o.created_at, i.sku, i.qty FROM orders o "
                                            "JOIN order_items i ON i.order_id = o.id ORDER BY o.id");
            while (q.step())
                csv += fmt::format("{},\"{}\",{},\"{}\",{}\n", q.column_int64(0), escape_csv(q.column_text(1)),
                                   q.column_text(2), escape_csv(q.column_text(3)), q.column_int64(4));
        }
        // A real export takes a while; this one pretends to, without holding anything, and
        // stops pretending when the service goes away.
        std::filesystem::path file;
        {
            std::unique_lock lock(mtx_);
            if (export_cv_.wait_for(lock, std::chrono::milliseconds(slow_export_ms), [this] { return stopping_exports_; }))
                return;
            file = exports_[id].file;
        }
        std::FILE* f = std::fopen(file.c_str(), "wb");
        if (f) {
            std::fwrite(csv.data(), 1, csv.size(), f);
            std::fclose(f);
        }
        {
            std::lock_guard lock(mtx_);
            exports_[id].ready = f != nullptr;
        }
        const json ready{{"export_id", id}, {"url", fmt::format("/api/exports/{}/file", id)}};
        count(users_.send(user_key(user), {.event = f ? "export-ready" : "export-failed", .data = ready.dump()}));
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
        response r{200, "text/csv; charset=utf-8", std::move(content), {}};
        r.headers.emplace_back("Content-Disposition", fmt::format("attachment; filename=\"orders-{}.csv\"", id));
        return r;
    }

    // The public ticker: lossy, so a slow client drops old ticks instead of stalling.
    common::http::reply ticker(const request&)
    {
        return common::http::take_socket{[this](asio::ip::tcp::socket socket) {
            std::lock_guard lock(life_mtx_);
            if (stopping_)
                return;
            // No write timeout either: a client that stops reading is not closed, it misses ticks.
            auto stream = ssepp::make_emitter(std::move(socket), {.write_timeout = std::chrono::milliseconds(0),
                                                                  .max_queued_bytes = 16 * 1024,
                                                                  .overflow = ssepp::overflow_policy::drop_oldest});
            watch(*stream);
            ticker_.attach("ticker", stream, {.otherwise = ssepp::replay::none});
        }};
    }

    void tick(std::uint64_t n)
    {
        const auto now = std::chrono::system_clock::now();
        count(ticker_.send("ticker", {.event = "tick",
                                      .data = json{{"n", n}, {"time", fmt::format("{:%FT%TZ}", std::chrono::floor<std::chrono::seconds>(now))}}.dump()}));
        ticker_timer_.expires_after(std::chrono::seconds(1));
        ticker_timer_.async_wait([this, n](std::error_code ec) {  // on the timer's strand
            if (!ec && ticking_)
                tick(n + 1);
        });
    }

    common::http::reply show_metrics()
    {
        return response::text(200, fmt::format("open_streams {}\nevents_sent {}\nbytes_sent {}\nslow_consumer_closes {}\n"
                                               "replays_served {}\n",
                                               users_.size() + ticker_.size(), metrics_.events_sent.load(),
                                               metrics_.bytes_sent.load(), metrics_.slow_consumer_closes.load(),
                                               metrics_.replays_served.load()));
    }

    void count(const ssepp::send_result& r) { metrics_.events_sent += r.connections; }

    void watch(ssepp::emitter& stream)
    {
        stream.on_close([this, &stream](ssepp::close_reason reason, std::error_code) {
            metrics_.bytes_sent += stream.bytes_written();
            if (reason == ssepp::close_reason::overflow)
                ++metrics_.slow_consumer_closes;
        });
    }

public:
    int slow_export_ms = 1500;

private:
    asio::io_context& io_;
    std::string db_path_;
    std::filesystem::path exports_dir_;
    ssepp::registry users_{{.max_events = 256}};  // per user: what waits for an offline user
    ssepp::registry ticker_{{.max_events = 0}};
    asio::steady_timer ticker_timer_{asio::make_strand(io_)};
    bool ticking_ = true; // on the timer's strand
    std::mutex life_mtx_;  // orders stream attachments with shutdown
    bool stopping_ = false;
    metrics metrics_;
    std::mutex mtx_;
    std::condition_variable export_cv_;  // wakes a pretending export at shutdown
    bool stopping_exports_ = false;
    std::map<std::string, session> sessions_;
    std::set<std::string> admins_; // users who logged in as admin
    std::map<std::string, export_job> exports_;
    // Last, so that it would be destroyed first, though the destructor joins it already.
    asio::thread_pool workers_{2};
};

} // namespace

int main(int argc, char** argv)
{
    common::server_flags server;
    std::string db = "notify.db";
    int export_ms = 1500;
    common::cli args("notify_server");
    server.add_to(args)
        .flag("--db", db, "SQLite database file")
        .flag("--export-ms", export_ms, "how long an export pretends to work")
        .parse(argc, argv);
    try {
        asio::io_context io;
        notify_service service(io, db);
        service.slow_export_ms = export_ms;
        common::http::server http(io, server.endpoint(), [&](request& r) { return service.handle(r); });
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
