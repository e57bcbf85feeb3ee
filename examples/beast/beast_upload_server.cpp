// beast_upload_server: examples/upload_progress's HTTP contract (POST a CSV, 202 with a
// transaction id, a background import, its progress as a resumable event stream) served by
// Boost.Beast, with ssepp compiled in its Boost.Asio flavour. Beast reads and answers every
// request; a request for a job's events is handed, once Beast has parsed it, to an ssepp
// emitter that writes to the connection's own socket (or TLS stream). What it serves, and what
// it leaves out, is in README.md beside this file.
#include "common/cli.hpp"
#include "common/multipart.hpp"
#include "common/random_id.hpp"
#include "common/sqlite.hpp"
#include "common/stream_slots.hpp"
#include "upload_progress/import.hpp"
#include "upload_progress/page_html.hpp"

#include <ssepp/ssepp.hpp>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <array>
#include <atomic>
#include <charconv>
#include <cmath>
#include <deque>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <variant>
#include <vector>

static_assert(std::is_same_v<ssepp::error_code, boost::system::error_code>,
              "build this example with SSEPP_USE_BOOST_ASIO (its CMakeLists.txt does)");

namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
namespace ssl = net::ssl;
using tcp = net::ip::tcp;
using json = nlohmann::json;
using response = http::response<http::string_body>;
using request = http::request<http::string_body>;

/// The TLS stream: Beast's own (it flattens a gather write of up to 16 KiB into one TLS
/// record), as a Beast server already has it. ssepp's transport concept also wants a way to
/// close it, which beast::ssl_stream does not name: close() closes the socket under it, and
/// lowest_layer() names that socket (the emitter cancels its watch on it before close_notify).
/// (asio::ssl::stream<beast::tcp_stream> would be a transport as it is: its lowest_layer() is
/// the socket.)
class tls_stream : public beast::ssl_stream<beast::tcp_stream> {
public:
    using beast::ssl_stream<beast::tcp_stream>::ssl_stream;
    tcp::socket& lowest_layer() noexcept { return next_layer().socket(); }
    void close(ssepp::error_code& ec) { lowest_layer().close(ec); }
};

/// What the emitter of a connection that came in as `Stream` writes to: the socket itself for
/// plain HTTP (released from beast::tcp_stream, whose per-operation timeouts the stream no
/// longer wants: ssepp's heartbeats and write timeout take over), the TLS stream for HTTPS.
template <class Stream>
using transport_for = ssepp::http_body<std::conditional_t<std::is_same_v<Stream, tls_stream>, tls_stream, tcp::socket>>;

// ---- the service: jobs, their event streams, the endpoints -----------------------------------

struct service_limits {
    std::size_t max_upload_bytes = std::size_t(64) << 20;
    std::size_t max_queued_jobs = 16;
    std::size_t max_streams = 1024;
    std::size_t max_job_streams = 16;
    std::size_t max_finished_jobs = 100;
    std::chrono::milliseconds finished_linger = std::chrono::minutes(10);
    std::chrono::milliseconds finished_ttl = std::chrono::hours(1);
};

constexpr int retry_after_seconds = 5;

response json_response(http::status status, const json& body, unsigned version = 11)
{
    response r{status, version};
    r.set(http::field::content_type, "application/json");
    r.body() = body.dump();
    return r;
}

/// A refusal with its reason: `{"error": reason}`.
response error_response(http::status status, std::string reason, unsigned version = 11)
{
    return json_response(status, {{"error", std::move(reason)}}, version);
}

response busy(std::string reason)
{
    auto r = error_response(http::status::service_unavailable, std::move(reason));
    r.set(http::field::retry_after, std::to_string(retry_after_seconds));
    return r;
}

std::string_view sv(beast::string_view s) { return {s.data(), s.size()}; }

/// A request for a job's event stream that the service accepted: the connection goes to an
/// emitter (session::hand_off), which takes `slot` with it.
struct stream_request {
    std::string id;
    std::optional<std::string> resume;
    common::stream_slots::slot slot;
};

using reply = std::variant<response, stream_request>;

struct job {
    std::string state = "queued";  // queued, processing, completed, failed
    upload::progress progress{};
    /// Its terminal event as sent, id included, for a client that comes after the history
    /// lingered out.
    std::optional<ssepp::event> outcome{};
};

template <class Transport>
class upload_service {
public:
    using emitter = ssepp::basic_emitter<Transport>;

    upload_service(std::string db_path, service_limits limits)
        : db_path_(std::move(db_path)), limits_(limits),
          streams_({.max_events = 5000, .max_bytes = 4 << 20, .finished_linger = limits.finished_linger}),
          slots_(limits.max_streams)
    {
        limits_.finished_ttl = std::max(limits_.finished_ttl, limits_.finished_linger);
        common::sqlite::db db(db_path_);
        upload::ensure_schema(db);
    }

    void set_import_pause(std::chrono::microseconds pause) { import_pause_ = pause; }

    /// Before the body is read: the refusals a head is enough for (415, 413 from
    /// Content-Length, 503 when the queue is full), so that a refused body is never read.
    std::optional<response> check_upload(const http::request_parser<http::empty_body>& head) const
    {
        const auto type = sv(head.get()[http::field::content_type]);
        const auto media = ssepp::detail::trim_ows(type.substr(0, type.find(';')));
        if (!common::multipart::boundary(type) && !ssepp::detail::iequals(media, "text/csv"))
            return error_response(http::status::unsupported_media_type,
                                  "send the file as multipart/form-data (field 'file') or as text/csv");
        if (auto n = head.content_length(); n && *n > limits_.max_upload_bytes)
            return error_response(http::status::payload_too_large,
                                  fmt::format("the upload is {} bytes; the most this server takes is {} bytes", *n,
                                              limits_.max_upload_bytes));
        std::lock_guard lock(mtx_);
        return queue_full_locked();
    }

    std::size_t max_upload_bytes() const { return limits_.max_upload_bytes; }

    reply handle(request& req)
    {
        const auto target = sv(req.target());
        const auto path = target.substr(0, target.find('?'));
        const auto get = req.method() == http::verb::get;
        if (get && path == "/") {
            response r{http::status::ok, req.version()};
            r.set(http::field::content_type, "text/html; charset=utf-8");
            r.body() = std::string(upload::page_html);
            return r;
        }
        if (req.method() == http::verb::post && path == "/api/upload/csv")
            return accept_upload(req);
        if (get && path == "/api/products")
            return list_products(target);
        if (get && path.starts_with("/api/upload/")) {
            auto rest = path.substr(std::string_view("/api/upload/").size());
            if (rest.ends_with("/events"))
                return events(std::string(rest.substr(0, rest.size() - 7)), req);
            return status(std::string(rest));
        }
        return error_response(http::status::not_found, "no such resource");
    }

    /// A connection whose request stream_request accepted, as the emitter's transport.
    void open_stream(stream_request s, Transport transport)
    {
        std::lock_guard lock(life_mtx_);
        if (stopping_)
            return;  // shutdown already completed the streams: this one would stay open
        auto stream = ssepp::make_emitter(std::move(transport));
        stream->on_close([slot = std::move(s.slot)](ssepp::close_reason, ssepp::error_code) {});  // holds the place
        const auto r = streams_.attach(s.id, stream, {.last_event_id = s.resume, .otherwise = ssepp::replay::all});
        if (r.finished)
            return;
        // The job ended and its history lingered out: its recorded outcome ends the stream. A
        // job still running has none yet, and finishes the key itself (a second finish is
        // refused, so nothing is sent twice).
        ssepp::error_code refused;
        if (auto last = outcome(s.id))
            streams_.finish(s.id, std::move(*last), refused);
    }

    /// Lets running jobs end for `grace`, cancels the rest (`error: shutting down`), then
    /// completes every stream; returns once they closed (or after a second more).
    void shutdown(std::chrono::milliseconds grace)
    {
        const auto deadline = std::chrono::steady_clock::now() + grace;
        while (running_ > 0 && std::chrono::steady_clock::now() < deadline)
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        cancel_ = true;
        workers_.join();
        {
            std::lock_guard lock(life_mtx_);
            stopping_ = true;
            streams_.complete_all();
        }
        const auto closed_by = std::chrono::steady_clock::now() + std::chrono::seconds(1);
        while (slots_.open() > 0 && std::chrono::steady_clock::now() < closed_by)
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }

private:
    reply accept_upload(request& req)
    {
        if (req.body().empty())
            return error_response(http::status::bad_request, "empty body");
        std::string_view csv = req.body();
        if (auto b = common::multipart::boundary(sv(req[http::field::content_type]))) {
            auto field = common::multipart::find_field(req.body(), *b, "file");
            if (!field)
                return error_response(http::status::bad_request, "missing 'file' field");
            csv = *field;
        }
        if (auto problem = upload::check_header(csv))
            return error_response(http::status::bad_request, *problem);

        const auto id = common::random_id();
        {
            std::lock_guard lock(mtx_);
            if (auto full = queue_full_locked())  // others may have been accepted since the head
                return std::move(*full);
            jobs_[id] = job{};
            ++queued_jobs_;
        }
        ++running_;
        // The body moves to the worker, the CSV with it as an offset into it.
        const auto offset = static_cast<std::size_t>(csv.data() - req.body().data());
        auto body = std::make_shared<std::string>(std::move(req.body()));
        net::post(workers_, [this, id, body, offset, size = csv.size()] {
            run(id, std::string_view(*body).substr(offset, size));
        });
        auto r = json_response(http::status::accepted,
                               {{"transaction_id", id},
                                {"events", fmt::format("/api/upload/{}/events", id)},
                                {"status", fmt::format("/api/upload/{}", id)}},
                               req.version());
        r.set(http::field::location, fmt::format("/api/upload/{}", id));
        return r;
    }

    // On the worker: the import, its events, its outcome.
    void run(const std::string& id, std::string_view csv)
    {
        set_state(id, "processing");
        const auto send = [&](ssepp::event e) {
            ssepp::error_code ec;
            streams_.send(id, std::move(e), ec);
        };
        // Progress goes out as the import reports it: 100 to 250 ms apart, and its final count.
        upload::import_hooks hooks{
            .on_progress = [&](const upload::progress& p) {
                {
                    std::lock_guard lock(mtx_);
                    jobs_[id].progress = p;
                }
                const auto percent = p.rows_total ? 100.0 * double(p.rows_done) / double(p.rows_total) : 0.0;
                send({.event = "progress",
                      .data = json{{"rows_done", p.rows_done}, {"rows_total", p.rows_total},
                                   {"percent", std::round(percent * 10) / 10}, {"errors", p.errors}}
                                  .dump()});
            },
            .on_row_error = [&](const upload::row_error& e) {
                send({.event = "row-error", .data = json{{"line", e.line}, {"sku", e.sku}, {"reason", e.reason}}.dump()});
            },
            .cancelled = [&] {
                if (import_pause_.count() > 0)
                    std::this_thread::sleep_for(import_pause_);
                return cancel_.load();
            },
        };
        try {
            const auto s = [&] {
                common::sqlite::db db(db_path_);
                db.busy_timeout(std::chrono::seconds(5));
                return upload::import_csv(db, csv, hooks);
            }();  // closed, so its WAL checkpoint is done before `complete` goes out
            set_state(id, "completed");
            end(id, {.event = "complete",
                     .data = json{{"rows", s.rows}, {"inserted", s.inserted}, {"updated", s.updated},
                                  {"errors", s.errors}, {"elapsed_ms", s.elapsed.count()},
                                  {"products", "/api/products"}}
                                 .dump()});
        } catch (const std::exception& e) {
            set_state(id, "failed");
            end(id, {.event = "error", .data = json{{"reason", cancel_ ? "shutting down" : e.what()}}.dump()});
        }
        --running_;
    }

    // Sends the terminal event (the registry then ends the job's streams), records it with its
    // id, and frees the job's place in the queue.
    void end(const std::string& id, ssepp::event terminal)
    {
        ssepp::error_code ec;
        terminal.id = streams_.finish(id, terminal, ec).id;
        std::vector<std::string> forget;
        {
            std::lock_guard lock(mtx_);
            auto& j = jobs_[id];
            if (!ec)
                j.outcome = std::move(terminal);
            --queued_jobs_;
            finished_.push_back({std::chrono::steady_clock::now(), id});
            forget = prune_locked();
        }
        for (const auto& f : forget)
            streams_.erase(f);
    }

    // The finished jobs past their time or past the count, oldest first, forgotten: their ids.
    std::vector<std::string> prune_locked()
    {
        std::vector<std::string> out;
        const auto now = std::chrono::steady_clock::now();
        while (!finished_.empty()
               && (finished_.size() > limits_.max_finished_jobs || finished_.front().first + limits_.finished_ttl <= now)) {
            jobs_.erase(finished_.front().second);
            out.push_back(std::move(finished_.front().second));
            finished_.pop_front();
        }
        return out;
    }

    void prune()
    {
        std::vector<std::string> forget;
        {
            std::lock_guard lock(mtx_);
            forget = prune_locked();
        }
        for (const auto& f : forget)
            streams_.erase(f);
    }

    std::optional<response> queue_full_locked() const
    {
        if (queued_jobs_ < limits_.max_queued_jobs)
            return std::nullopt;
        return busy(fmt::format("{} uploads are waiting or running, the most this server queues; try again later",
                                queued_jobs_));
    }

    std::optional<ssepp::event> outcome(const std::string& id) const
    {
        std::lock_guard lock(mtx_);
        auto it = jobs_.find(id);
        return it == jobs_.end() ? std::nullopt : it->second.outcome;
    }

    reply events(std::string id, const request& req)
    {
        prune();
        {
            std::lock_guard lock(mtx_);
            if (!jobs_.contains(id))
                return error_response(http::status::not_found, "unknown transaction", req.version());
        }
        auto resume = ssepp::last_event_id(sv(req["Last-Event-ID"]), sv(req.target()));
        // The client already has the terminal event: 204 tells EventSource to stop reconnecting.
        if (resume) {
            const auto last = outcome(id);
            if ((last && last->id == resume) || (streams_.finished(id) && streams_.last_id(id) == resume)) {
                response r{http::status::no_content, req.version()};
                return r;
            }
        }
        // A place for the stream, taken before the answer, given back when the stream closes.
        auto [slot, full] = slots_.take(id, limits_.max_job_streams);
        if (full)
            return busy(*full == common::stream_slots::full::key
                            ? fmt::format("this job has {} event streams open, the most it may; close one or try "
                                          "again later", limits_.max_job_streams)
                            : fmt::format("the server has {} event streams open, the most it may; try again later",
                                          slots_.total()));
        return stream_request{std::move(id), std::move(resume), std::move(slot)};
    }

    response status(const std::string& id)
    {
        prune();
        std::lock_guard lock(mtx_);
        auto it = jobs_.find(id);
        if (it == jobs_.end())
            return error_response(http::status::not_found, "unknown transaction");
        const auto& j = it->second;
        return json_response(http::status::ok, {{"transaction_id", id}, {"state", j.state},
                                                {"rows_done", j.progress.rows_done},
                                                {"rows_total", j.progress.rows_total},
                                                {"errors", j.progress.errors}});
    }

    response list_products(std::string_view target)
    {
        const auto number = [&](std::string_view name, std::int64_t fallback, std::int64_t max) {
            auto v = ssepp::query_parameter(target, name);
            std::int64_t n = fallback;
            if (v && !v->empty()) {
                auto [p, ec] = std::from_chars(v->data(), v->data() + v->size(), n);
                if (ec != std::errc() || p != v->data() + v->size() || n < 0)
                    return std::int64_t(-1);
            }
            return std::min(n, max);
        };
        const auto limit = number("limit", 50, 1000);
        const auto offset = number("offset", 0, std::numeric_limits<std::int64_t>::max());
        if (limit < 0 || offset < 0)
            return error_response(http::status::bad_request, "limit and offset must be non-negative integers");
        common::sqlite::db db(db_path_);
        db.busy_timeout(std::chrono::seconds(5));  // an import's commit locks the file for a moment
        return json_response(http::status::ok, upload::list_products(db, static_cast<std::uint64_t>(limit),
                                                                     static_cast<std::uint64_t>(offset)));
    }

    void set_state(const std::string& id, std::string state)
    {
        std::lock_guard lock(mtx_);
        jobs_[id].state = std::move(state);
    }

    std::string db_path_;
    service_limits limits_;
    ssepp::basic_registry<std::string, emitter> streams_;
    mutable std::mutex mtx_;
    std::map<std::string, job> jobs_;
    std::size_t queued_jobs_ = 0;  // accepted and not ended
    std::deque<std::pair<std::chrono::steady_clock::time_point, std::string>> finished_;  // in the order they ended
    common::stream_slots slots_;
    // One import at a time: SQLite has one writer.
    net::thread_pool workers_{1};
    std::atomic<int> running_{0};
    std::atomic<bool> cancel_{false};
    std::mutex life_mtx_;  // orders stream attachments with shutdown
    bool stopping_ = false;
    std::chrono::microseconds import_pause_{0};
};

// ---- the Beast front: one session per connection ---------------------------------------------

struct front_limits {
    std::uint32_t max_head_bytes = 16 << 10;
    std::uint64_t max_body_bytes = 64 << 10;  // of requests other than uploads
    std::chrono::milliseconds head_timeout = std::chrono::seconds(20);  // and keep-alive idle time
    std::chrono::milliseconds body_timeout = std::chrono::seconds(60);
};

bool is_http_error(const beast::error_code& ec)
{
    return ec.category() == beast::error_code(http::error::bad_target).category();
}

/// Reads requests with Beast, answers them, and hands the connection to ssepp when a request
/// asks for a job's events. `Stream` is beast::tcp_stream or tls_stream.
template <class Stream>
class session : public std::enable_shared_from_this<session<Stream>> {
public:
    using service_type = upload_service<transport_for<Stream>>;
    static constexpr bool tls = std::is_same_v<Stream, tls_stream>;

    session(Stream stream, service_type& service, const front_limits& limits)
        : stream_(std::move(stream)), service_(service), limits_(limits)
    {
    }

    void start()
    {
        if constexpr (tls) {
            tcp_layer().expires_after(limits_.head_timeout);
            stream_.async_handshake(ssl::stream_base::server, [self = this->shared_from_this()](beast::error_code ec) {
                if (!ec)
                    self->read_head();
            });
        } else {
            read_head();
        }
    }

private:
    beast::tcp_stream& tcp_layer() { return beast::get_lowest_layer(stream_); }

    void read_head()
    {
        head_.emplace();
        head_->header_limit(limits_.max_head_bytes);
        // No body limit yet (Beast would check the default one against Content-Length as the
        // head ends): which one applies depends on the request, and read_body() sets it.
        head_->body_limit(boost::none);
        tcp_layer().expires_after(limits_.head_timeout);
        http::async_read_header(stream_, buffer_, *head_,
                                [self = this->shared_from_this()](beast::error_code ec, std::size_t) {
                                    self->on_head(ec);
                                });
    }

    void on_head(beast::error_code ec)
    {
        if (ec == http::error::end_of_stream)
            return close();
        if (ec == http::error::header_limit)
            return refuse(error_response(http::status::request_header_fields_too_large,
                                         fmt::format("the request head is larger than {} bytes", limits_.max_head_bytes)));
        if (is_http_error(ec))
            return refuse(error_response(http::status::bad_request, fmt::format("malformed request: {}", ec.message())));
        if (ec)
            return;  // a timeout (beast::tcp_stream closed the socket) or the client left
        const auto& h = head_->get();
        std::uint64_t limit = limits_.max_body_bytes;
        if (h.method() == http::verb::post && sv(h.target()).substr(0, sv(h.target()).find('?')) == "/api/upload/csv") {
            if (auto refused = service_.check_upload(*head_))
                return refuse(std::move(*refused));
            limit = service_.max_upload_bytes();
            // curl waits for this before it sends a body (or for a refusal, and sends none).
            if (beast::iequals(h[http::field::expect], "100-continue")) {
                auto cont = std::make_shared<http::response<http::empty_body>>(http::status::continue_, h.version());
                return http::async_write(stream_, *cont,
                                         [self = this->shared_from_this(), cont, limit](beast::error_code ec, std::size_t) {
                                             if (!ec)
                                                 self->read_body(limit);
                                         });
            }
        }
        read_body(limit);
    }

    void read_body(std::uint64_t limit)
    {
        body_.emplace(std::move(*head_));
        body_->body_limit(limit);
        body_limit_ = limit;
        tcp_layer().expires_after(limits_.body_timeout);
        http::async_read(stream_, buffer_, *body_, [self = this->shared_from_this()](beast::error_code ec, std::size_t) {
            self->on_body(ec);
        });
    }

    void on_body(beast::error_code ec)
    {
        if (ec == http::error::body_limit)
            return refuse(error_response(http::status::payload_too_large,
                                         fmt::format("the body is larger than {} bytes, the most this server takes here",
                                                     body_limit_)));
        if (is_http_error(ec))
            return refuse(error_response(http::status::bad_request, fmt::format("malformed request: {}", ec.message())));
        if (ec)
            return;
        auto req = body_->release();
        auto answer = service_.handle(req);
        if (auto* s = std::get_if<stream_request>(&answer))
            return hand_off(std::move(*s));
        auto& res = std::get<response>(answer);
        res.version(req.version());
        res.keep_alive(req.keep_alive());
        write(std::move(res));
    }

    /// From here on the connection is an event stream: ssepp writes the response head and the
    /// events; Beast's part is over. Bytes the client pipelined after this request are dropped
    /// with Beast's buffer (nothing may follow an endless response).
    void hand_off(stream_request s)
    {
        tcp_layer().expires_never();
        if constexpr (tls)
            service_.open_stream(std::move(s), ssepp::http_body(std::move(stream_)));
        else
            service_.open_stream(std::move(s), ssepp::http_body(stream_.release_socket()));
    }

    // An answer after which the connection closes: the request (or its body) was not read.
    void refuse(response res)
    {
        res.keep_alive(false);
        write(std::move(res));
    }

    void write(response res)
    {
        res.prepare_payload();
        auto r = std::make_shared<response>(std::move(res));
        tcp_layer().expires_after(limits_.body_timeout);
        http::async_write(stream_, *r, [self = this->shared_from_this(), r](beast::error_code ec, std::size_t) {
            if (ec)
                return;
            if (r->keep_alive())
                self->read_head();
            else
                self->close();
        });
    }

    // Ends the connection after the last answer. A refused request may leave body bytes
    // unread; closing over them would send a reset, which can destroy the answer before the
    // client reads it. So the plain connection sends its FIN and reads what comes until the
    // client's own (for a second at most); TLS ends with close_notify, bounded alike.
    void close()
    {
        tcp_layer().expires_after(std::chrono::seconds(1));
        if constexpr (tls) {
            stream_.async_shutdown([self = this->shared_from_this()](beast::error_code) {});
        } else {
            beast::error_code ec;
            stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
            drain();
        }
    }

    void drain()
    {
        stream_.async_read_some(net::buffer(sink_), [self = this->shared_from_this()](beast::error_code ec, std::size_t) {
            if (!ec)
                self->drain();
        });
    }

    Stream stream_;
    service_type& service_;
    const front_limits& limits_;
    beast::flat_buffer buffer_;
    std::optional<http::request_parser<http::empty_body>> head_;
    std::optional<http::request_parser<http::string_body>> body_;
    std::uint64_t body_limit_ = 0;
    std::array<char, 4096> sink_;  // what a closing connection discards
};

/// Accepts connections, each on a strand of its own (a TLS stream's composed operations must not
/// run on two threads at once), and starts a session on it.
template <class Stream>
class listener : public std::enable_shared_from_this<listener<Stream>> {
public:
    listener(net::io_context& io, tcp::endpoint at, upload_service<transport_for<Stream>>& service,
             const front_limits& limits, ssl::context* tls)
        : io_(io), acceptor_(net::make_strand(io), at), service_(service), limits_(limits), tls_(tls)
    {
    }

    tcp::endpoint local_endpoint() const { return acceptor_.local_endpoint(); }

    void accept()
    {
        acceptor_.async_accept(net::make_strand(io_), [self = this->shared_from_this()](beast::error_code ec,
                                                                                        tcp::socket socket) {
            if (ec == net::error::operation_aborted || !self->acceptor_.is_open())
                return;
            if (!ec) {
                if constexpr (std::is_same_v<Stream, tls_stream>)
                    std::make_shared<session<Stream>>(Stream(beast::tcp_stream(std::move(socket)), *self->tls_),
                                                      self->service_, self->limits_)
                        ->start();
                else
                    std::make_shared<session<Stream>>(Stream(std::move(socket)), self->service_, self->limits_)->start();
            }
            self->accept();
        });
    }

    void stop()
    {
        net::post(acceptor_.get_executor(), [self = this->shared_from_this()] {
            beast::error_code ec;
            self->acceptor_.close(ec);
        });
    }

private:
    net::io_context& io_;
    tcp::acceptor acceptor_;
    upload_service<transport_for<Stream>>& service_;
    const front_limits& limits_;
    ssl::context* tls_;
};

struct settings {
    std::string host = "127.0.0.1";
    std::uint16_t port = 8080;
    int threads = 2;
    std::string db = "upload.db";
    std::string cert, key;
    int grace_ms = 10000;
    std::int64_t import_pause_us = 0;
    service_limits limits;
    front_limits front;
};

template <class Stream>
int serve(const settings& s, ssl::context* tls)
{
    net::io_context io;
    upload_service<transport_for<Stream>> service(s.db, s.limits);
    service.set_import_pause(std::chrono::microseconds(s.import_pause_us));
    auto l = std::make_shared<listener<Stream>>(io, tcp::endpoint(net::ip::make_address(s.host), s.port), service,
                                                s.front, tls);
    l->accept();
    fmt::print("beast_upload_server listening on {}://{}:{}/\n", tls ? "https" : "http", s.host,
               l->local_endpoint().port());
    std::fflush(stdout);

    // On SIGINT/SIGTERM: no new connections; running jobs get `grace`, then every stream is
    // completed; then the connections left (idle keep-alive ones) are dropped with the context.
    net::signal_set signals(io, SIGINT, SIGTERM);
    std::thread stopper;
    signals.async_wait([&](beast::error_code ec, int) {
        if (ec)
            return;
        l->stop();
        stopper = std::thread([&] {
            service.shutdown(std::chrono::milliseconds(s.grace_ms));
            io.stop();
        });
    });
    std::vector<std::thread> pool;
    for (int i = 1; i < std::max(1, s.threads); ++i)
        pool.emplace_back([&io] { io.run(); });
    io.run();
    for (auto& t : pool)
        t.join();
    if (stopper.joinable())
        stopper.join();
    return 0;
}

} // namespace

int main(int argc, char** argv)
{
    settings s;
    std::size_t max_upload_mb = s.limits.max_upload_bytes >> 20;
    std::int64_t linger_ms = s.limits.finished_linger.count();
    std::int64_t ttl_ms = s.limits.finished_ttl.count();
    std::int64_t head_timeout_ms = s.front.head_timeout.count();
    std::int64_t body_timeout_ms = s.front.body_timeout.count();
    common::cli args("beast_upload_server");
    args.flag("--host", s.host, "address to listen on")
        .flag("--port", s.port, "port; 0 picks a free one and prints it")
        .flag("--threads", s.threads, "I/O threads")
        .flag("--cert", s.cert, "PEM certificate chain: serve HTTPS (with --key)")
        .flag("--key", s.key, "PEM private key of --cert")
        .flag("--db", s.db, "SQLite database file")
        .flag("--max-upload-mb", max_upload_mb, "largest upload accepted, in MiB")
        .flag("--max-queued-jobs", s.limits.max_queued_jobs, "uploads waiting or running at once; past it: 503")
        .flag("--max-finished-jobs", s.limits.max_finished_jobs, "finished jobs remembered; the oldest go first")
        .flag("--max-streams", s.limits.max_streams, "event streams open at once; past it: 503")
        .flag("--max-job-streams", s.limits.max_job_streams, "event streams open at once per job; past it: 503")
        .flag("--finished-linger-ms", linger_ms, "how long a finished job's event history stays for replay")
        .flag("--finished-ttl-ms", ttl_ms, "how long a finished job's status and outcome stay")
        .flag("--max-head-bytes", s.front.max_head_bytes, "largest request head; past it: 431")
        .flag("--head-timeout-ms", head_timeout_ms, "time for a request head (and keep-alive idle time)")
        .flag("--body-timeout-ms", body_timeout_ms, "time for a request body, and for writing an answer")
        .flag("--grace-ms", s.grace_ms, "on SIGINT/SIGTERM, how long running jobs may finish")
        .flag("--import-pause-us", s.import_pause_us, "pause every 64 rows or so of an import (to watch or test one)");
    args.parse(argc, argv);
    s.limits.max_upload_bytes = max_upload_mb << 20;
    s.limits.finished_linger = std::chrono::milliseconds(linger_ms);
    s.limits.finished_ttl = std::chrono::milliseconds(ttl_ms);
    s.front.head_timeout = std::chrono::milliseconds(head_timeout_ms);
    s.front.body_timeout = std::chrono::milliseconds(body_timeout_ms);
    if (s.cert.empty() != s.key.empty()) {
        fmt::print(stderr, "beast_upload_server: --cert and --key go together\n");
        return 2;
    }
    try {
        if (s.cert.empty())
            return serve<beast::tcp_stream>(s, nullptr);
        ssl::context tls(ssl::context::tls_server);
        tls.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3
                        | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1);
        tls.use_certificate_chain_file(s.cert);
        tls.use_private_key_file(s.key, ssl::context::pem);
        return serve<tls_stream>(s, &tls);
    } catch (const std::exception& e) {
        fmt::print(stderr, "beast_upload_server: {}\n", e.what());
        return 1;
    }
}
