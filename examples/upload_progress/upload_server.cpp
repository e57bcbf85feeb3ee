// upload_server: the asynchronous-API pattern with SSE. POST /api/upload/csv answers 202 with a
// transaction id at once; a worker imports the CSV into SQLite; the page follows the job's
// progress at /api/upload/<id>/events, and a reconnecting client resumes from Last-Event-ID.
// The HTTP contract is in README.md beside this file.
#include "common/http.hpp"
#include "common/http_flags.hpp"
#include "common/metrics.hpp"
#include "common/multipart.hpp"
#include "common/random_id.hpp"
#include "common/server_main.hpp"
#include "common/sqlite.hpp"
#include "common/stream_limits.hpp"
#include "upload_progress/import.hpp"
#include "upload_progress/page_html.hpp"

#include <ssepp/ssepp.hpp>
#if SSEPP_EXAMPLES_REDIS
#include "upload_progress/cluster_link.hpp"
#endif

#include <asio.hpp>
#include <fmt/format.h>

#include <atomic>
#include <charconv>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include <unistd.h>

using common::http::request;
using common::http::response;
using json = nlohmann::json;

namespace {

struct job {
    std::string state = "queued";  // queued, processing, completed, failed
    upload::progress progress{};
    std::size_t bytes = 0;         // of its upload, held until it ends
    /// Once it ended: its terminal event as sent, id included, for a client that comes after
    /// the history lingered out.
    std::optional<ssepp::event> outcome{};
};

/// What the service holds at most, so that requests nobody authenticated cannot grow its
/// memory without bound.
struct service_limits {
    std::size_t max_upload_bytes = std::size_t(64) << 20;
    /// Jobs accepted and not ended (queued or running), and the bytes of their uploads with
    /// those of the bodies arriving (counted as they arrive): past either, 503 with Retry-After.
    std::size_t max_queued_jobs = 16;
    std::size_t max_queued_bytes = std::size_t(256) << 20;
    /// Event streams open at once, in all and per job (the registry's connection_limits):
    /// past either, 503 with Retry-After. 16 per job: a few tabs and dashboards.
    std::size_t max_streams = 1024;
    std::size_t max_job_streams = 16;
    /// Finished jobs remembered; past it the oldest is forgotten (404), history and all.
    std::size_t max_finished_jobs = 100;
    /// How long a finished job's whole event history stays for replay.
    std::chrono::milliseconds finished_linger = std::chrono::minutes(10);
    /// How long a finished job's status and outcome stay (at least finished_linger): a client
    /// that comes back after the history is gone still gets the terminal event, then the end.
    std::chrono::milliseconds finished_ttl = std::chrono::hours(1);
};

/// Seconds a client refused for capacity is told to wait: about what a large import takes.
constexpr int retry_after_seconds = 5;

/// The bytes of uploads the service holds, shared with the requests' accounts (which may
/// outlive the service in the I/O context's handlers).
struct byte_budget {
    std::atomic<std::size_t> queued{0};    // bodies of jobs accepted and not ended
    std::atomic<std::size_t> arriving{0};  // bodies being received, as far as they came
};

std::optional<response> no_room_for_bytes(std::size_t held, std::size_t more, std::size_t limit)
{
    if (held + more <= limit)
        return std::nullopt;
    auto r = response::error(503, fmt::format("the uploads waiting, running or arriving hold {} bytes; {} more "
                                              "would pass the limit of {} bytes; try again later",
                                              held, more, limit));
    r.headers.emplace_back("Retry-After", std::to_string(retry_after_seconds));
    return r;
}

/// One body's bytes, counted in byte_budget::arriving as they arrive and given back when the
/// request goes (answered, refused, or dropped with its connection). Counting what arrived,
/// not what the head announced: a head costs its sender nothing, so a reservation made from
/// it would let a few connections that announce large bodies and trickle them hold every
/// byte of the queue for hours; bytes that arrived cost their sender the bandwidth, and are
/// the memory really held.
class body_account {
public:
    body_account(std::shared_ptr<byte_budget> b, std::size_t limit) : budget_(std::move(b)), limit_(limit) {}
    ~body_account() { budget_->arriving -= counted_; }
    body_account(const body_account&) = delete;
    body_account& operator=(const body_account&) = delete;

    /// `n` more bytes arrived: counted, or refused (503) when they would pass the limit.
    std::optional<response> add(std::size_t n)
    {
        // Added first, then checked: two bodies growing at once cannot both pass the limit.
        const auto arriving = budget_->arriving.fetch_add(n) + n;
        counted_ += n;
        return no_room_for_bytes(budget_->queued.load() + arriving - n, n, limit_);
    }

private:
    std::shared_ptr<byte_budget> budget_;
    const std::size_t limit_;
    std::size_t counted_ = 0;
};

// Paces a job's progress events to the contract: no two closer than min_gap, and never more
// than max_quiet without one while the job runs. The importer reports every 100 to 250 ms, but
// not while it COMMITs (after its last report, a few hundred ms for a big file), and its final
// report may follow the previous one closely. So a report that comes too soon waits its turn
// (only the latest waiting one is kept), and when nothing was sent for max_quiet the latest is
// sent again. stop() sends what waits, when its turn comes, and returns after the last send:
// call it before the terminal event.
class progress_pacer {
public:
    using clock = std::chrono::steady_clock;
    static constexpr auto min_gap = std::chrono::milliseconds(100);
    static constexpr auto max_quiet = std::chrono::milliseconds(150); // 100 ms to spare

    explicit progress_pacer(std::function<void(const upload::progress&)> send)
        : send_(std::move(send)), thread_([this] { loop(); })
    {
    }
    ~progress_pacer() { stop(); }
    progress_pacer(const progress_pacer&) = delete;
    progress_pacer& operator=(const progress_pacer&) = delete;

    void report(const upload::progress& p)
    {
        std::lock_guard lock(mtx_);
        latest_ = p;
        pending_ = true;
        if (!sent_once_ || clock::now() - last_sent_ >= min_gap)
            send_locked();
        else
            cv_.notify_one();
    }

    void stop()
    {
        {
            std::lock_guard lock(mtx_);
            stopping_ = true;
            cv_.notify_one();
        }
        if (thread_.joinable())
            thread_.join();
    }

private:
    void loop()
    {
        std::unique_lock lock(mtx_);
        for (;;) {
            const auto now = clock::now();
            if (pending_ && now >= last_sent_ + min_gap) {
                send_locked();
                continue;
            }
            if (!pending_ && stopping_)
                return;
            if (!pending_ && sent_once_ && now >= last_sent_ + max_quiet) {
                send_locked(); // nothing new: the latest again
                continue;
            }
            const auto wake = pending_ ? last_sent_ + min_gap : sent_once_ ? last_sent_ + max_quiet : now + max_quiet;
            cv_.wait_until(lock, wake);
        }
    }

    // Sends under the lock, so that sends are never concurrent and last_sent_ is exact; the
    // registry never calls back into here.
    void send_locked()
    {
        send_(latest_);
        last_sent_ = clock::now();
        sent_once_ = true;
        pending_ = false;
    }

    std::function<void(const upload::progress&)> send_;
    std::mutex mtx_;
    std::condition_variable cv_;
    upload::progress latest_{};
    clock::time_point last_sent_{};
    bool sent_once_ = false;
    bool pending_ = false;
    bool stopping_ = false;
    std::thread thread_; // last: starts once the rest is ready
};

class upload_service {
public:
    upload_service(std::string db_path, service_limits limits)
        : db_path_(std::move(db_path)), limits_(limits),
          streams_({.max_events = 5000, .max_bytes = 4 << 20, .finished_linger = limits.finished_linger})
    {
        limits_.finished_ttl = std::max(limits_.finished_ttl, limits_.finished_linger);
        streams_.set_limits(stream_limits());
        common::sqlite::db db(db_path_);
        upload::ensure_schema(db);
    }

    /// The HTTP front's open connections, for /metrics (set once, before the first request).
    void set_http_connections(std::function<std::size_t()> count) { http_connections_ = std::move(count); }

    /// Slows every import down by pausing `pause` at each of its checkpoints (every 64 rows
    /// or so): to watch one, or to test what happens while one runs.
    void set_import_pause(std::chrono::microseconds pause) { import_pause_ = pause; }

#if SSEPP_EXAMPLES_REDIS
    /// Runs as a node of a cluster (--redis): before the first request. Waits (bounded) for
    /// Redis; false when it did not answer in time (the node goes on trying).
    bool join_cluster(upload::cluster_settings settings)
    {
        settings.finished_linger = limits_.finished_linger;
        settings.finished_ttl = limits_.finished_ttl;
        cluster_ = std::make_unique<upload::cluster_link>(std::move(settings));
        return cluster_->wait_up(std::chrono::seconds(5));
    }
#endif

    // Rejects from the head alone: wrong type (415), too large (413, by the parser, before any
    // other refusal), no room in the queue (503), so that a refused body is never read. The
    // body is then counted as it arrives (body_account), and refused 503 if it would pass
    // --max-queued-mb on the way.
    std::optional<response> check(const request& req, std::size_t& max_body)
    {
        if (req.method != "POST" || req.path != "/api/upload/csv")
            return std::nullopt;
        max_body = limits_.max_upload_bytes;
        const auto type = req.header("Content-Type");
        const auto media = ssepp::detail::trim_ows(type.substr(0, type.find(';')));
        if (!common::multipart::boundary(type) && !ssepp::detail::iequals(media, "text/csv"))
            return response::error(415, "send the file as multipart/form-data (field 'file') or as text/csv");
        // Refused at once when its announced size does not fit now (without a Content-Length,
        // when there is no room at all); past that, nothing is reserved from the head.
        if (req.content_length && *req.content_length > max_body)
            return std::nullopt;  // 413, from the parser
        const std::size_t bytes = req.content_length ? static_cast<std::size_t>(*req.content_length) : 1;
        {
            std::lock_guard lock(mtx_);
            if (auto refused = no_room_locked(bytes))
                return refused;
        }
#if SSEPP_EXAMPLES_REDIS
        // No job can be recorded: refused before its body is read.
        if (cluster_ && !cluster_->up())
            return redis_unavailable("Redis is unreachable");
#endif
        auto account = std::make_shared<body_account>(budget_, limits_.max_queued_bytes);
        req.hold = account;
        // Called only while the body arrives, when `hold` (and so the account) is there.
        req.on_body_bytes = [a = account.get()](std::size_t n) { return a->add(n); };
        return std::nullopt;
    }

    common::http::reply handle(request& req)
    {
        const auto& p = req.path;
        if (req.method == "GET" && p == "/")
            return response::html(std::string(upload::page_html));
        if (req.method == "POST" && p == "/api/upload/csv")
            return accept_upload(req);
        if (req.method == "GET" && p == "/api/products")
            return list_products(req);
        if (req.method == "GET" && p == "/metrics")
            return show_metrics();
        if (req.method == "GET" && p.starts_with("/api/upload/")) {
            auto rest = std::string_view(p).substr(std::string_view("/api/upload/").size());
            if (rest.ends_with("/events"))
                return events(std::string(rest.substr(0, rest.size() - 7)), req);
            return status(std::string(rest));
        }
        return response::error(404, "no such resource");
    }

    // Lets running jobs end by themselves for `grace`, then cancels the rest (they end with
    // `error: shutting down`), then completes every stream that is left (in a cluster: the
    // streams of jobs that other nodes run) with a `retry` from [retry_min, retry_max], so that
    // their clients come back spread over that window.
    void shutdown(std::chrono::milliseconds grace, std::chrono::milliseconds retry_min, std::chrono::milliseconds retry_max)
    {
        const auto deadline = std::chrono::steady_clock::now() + grace;
        while (running_ > 0 && std::chrono::steady_clock::now() < deadline)
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        cancel_ = true;
        workers_.join();
        std::lock_guard lock(life_mtx_);
        stopping_ = true;
#if SSEPP_EXAMPLES_REDIS
        if (cluster_) {
            // The retries first: stopping the node completes what is left without one.
            cluster_->node().local().complete_all(retry_min, retry_max);
            cluster_->stop();
        }
#endif
        streams_.complete_all(retry_min, retry_max);
    }

    /// Event streams open now (the shutdown waits for them to close).
    std::size_t open_streams()
    {
#if SSEPP_EXAMPLES_REDIS
        if (cluster_)
            return cluster_->node().local().size() + streams_.size();
#endif
        return streams_.size();
    }

private:
    common::http::reply accept_upload(request& req)
    {
        if (req.body.empty())
            return response::error(400, "empty body");
        std::string_view csv = req.body;
        if (auto b = common::multipart::boundary(req.header("Content-Type"))) {
            auto field = common::multipart::find_field(req.body, *b, "file");
            if (!field)
                return response::error(400, "missing 'file' field");
            csv = *field;
        }
        if (auto problem = upload::check_header(csv))
            return response::error(400, *problem);

        const auto id = common::random_id();
        {
            std::lock_guard lock(mtx_);
            // The jobs checked again (others may have been accepted since this head); the bytes
            // were counted as they came, and are queued bytes from now on.
            if (queued_jobs_ >= limits_.max_queued_jobs)
                return std::move(*no_room_locked(0));
            jobs_[id] = job{.bytes = req.body.size()};
            ++queued_jobs_;
            budget_->queued += req.body.size();  // before the arriving count drops: never under
            req.on_body_bytes = nullptr;
            req.hold.reset();
        }
#if SSEPP_EXAMPLES_REDIS
        // Every node knows the id before the client does: a GET of its events on another
        // node right after the 202 finds it.
        if (cluster_) {
            if (auto why = cluster_->create(id)) {
                std::lock_guard lock(mtx_);
                jobs_.erase(id);
                --queued_jobs_;
                budget_->queued -= req.body.size();
                return redis_unavailable(*why);
            }
        }
#endif
        ++running_; // queued counts as running, for the shutdown grace
        ++jobs_accepted_;
        // The body moves to the worker, and the CSV with it as an offset into it.
        const auto offset = static_cast<std::size_t>(csv.data() - req.body.data());
        auto body = std::make_shared<std::string>(std::move(req.body));
        asio::post(workers_, [this, id, body, offset, size = csv.size()] {
            run(id, std::string_view(*body).substr(offset, size));
        });
        auto r = response::json(202, {{"transaction_id", id},
                                      {"events", fmt::format("/api/upload/{}/events", id)},
                                      {"status", fmt::format("/api/upload/{}", id)}});
        r.headers.emplace_back("Location", fmt::format("/api/upload/{}", id));
        return r;
    }

    void run(const std::string& id, std::string_view csv)
    {
        set_state(id, "processing");
        // Where the job's events go: this process's registry, or the cluster's stream.
        std::function<bool(ssepp::event)> send = [&](ssepp::event e) {
            std::error_code ec;
            streams_.send(id, std::move(e), ec);
            return !ec;
        };
        std::function<bool()> lost = [] { return false; };
        std::function<std::string()> lost_reason;
#if SSEPP_EXAMPLES_REDIS
        std::shared_ptr<upload::job_stream> js;
        if (cluster_) {
            js = cluster_->stream(id);
            cluster_->update(id, "processing", {});
            send = [&](ssepp::event e) { return cluster_->publish(*js, std::move(e), false).has_value(); };
            lost = [&] { return js->stopped(); };
            lost_reason = [&] {
                return js->disowned ? js->why() : fmt::format("events could not be published: {}", js->why());
            };
        }
#endif
        progress_pacer pacer([&](const upload::progress& pr) {
            const auto percent = pr.rows_total ? 100.0 * double(pr.rows_done) / double(pr.rows_total) : 0.0;
            send({.event = "progress",
                  .data = json{{"rows_done", pr.rows_done}, {"rows_total", pr.rows_total},
                               {"percent", std::round(percent * 10) / 10}, {"errors", pr.errors}}
                              .dump()});  // a failure is seen by `cancelled`
        });
        upload::import_hooks hooks{
            .on_progress = [&](const upload::progress& pr) {
                update(id, pr);
                pacer.report(pr);
            },
            .on_row_error = [&](const upload::row_error& e) {
                if (!send({.event = "row-error",
                           .data = json{{"line", e.line}, {"sku", e.sku}, {"reason", e.reason}}.dump()})
                    && lost())
                    throw upload::import_cancelled();
            },
            .cancelled = [&] {
                if (import_pause_.count() > 0)
                    std::this_thread::sleep_for(import_pause_);
                return cancel_.load() || lost();
            },
        };
        try {
            const auto s = [&] {
                common::sqlite::db db(db_path_);
                // Imports run one at a time (one worker), but another program may hold the file.
                db.busy_timeout(std::chrono::seconds(5));
                return upload::import_csv(db, csv, hooks);
            }();
            // The connection is closed now, and with it the WAL checkpoint done: a client that
            // reads the products when `complete` arrives finds the file free.
            pacer.stop();
            set_state(id, "completed");
            ++jobs_completed_;
            end(id, {.event = "complete",
                     .data = json{{"rows", s.rows}, {"inserted", s.inserted}, {"updated", s.updated},
                                  {"errors", s.errors}, {"elapsed_ms", s.elapsed.count()},
                                  {"products", "/api/products"}}
                                 .dump()});
        } catch (const std::exception& e) {
            pacer.stop();
            set_state(id, "failed");
            ++jobs_failed_;
            const std::string reason = cancel_ ? "shutting down" : lost() ? lost_reason() : e.what();
            end(id, {.event = "error", .data = json{{"reason", reason}}.dump()});
        }
        --running_;
    }

    // Sends the terminal event, then records it (with the id it got) and frees the job's place
    // in the queue.
    void end(const std::string& id, ssepp::event terminal)
    {
        bool sent = false;
#if SSEPP_EXAMPLES_REDIS
        if (cluster_) {
            job j;
            {
                std::lock_guard lock(mtx_);
                j = jobs_[id];
            }
            sent = cluster_->end_job(id, terminal, j.state, j.progress);
        } else
#endif
        {
            std::error_code ec;
            terminal.id = streams_.finish(id, terminal, ec).id;
            sent = !ec;
        }
        std::vector<std::string> forget;
        {
            std::lock_guard lock(mtx_);
            auto& j = jobs_[id];
            if (sent)
                j.outcome = std::move(terminal);
            --queued_jobs_;
            budget_->queued -= j.bytes;
            j.bytes = 0;
            finished_.push_back({std::chrono::steady_clock::now(), id});
            forget = prune_locked();
        }
        erase(forget);
    }

    // Forgets the finished jobs past their time or past the count, oldest first: their ids
    // (whose histories the caller erases, outside mtx_).
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

    void erase(const std::vector<std::string>& forget)
    {
        for (const auto& f : forget) {
#if SSEPP_EXAMPLES_REDIS
            if (cluster_) {
                cluster_->forget(f);
                continue;
            }
#endif
            streams_.erase(f);
        }
    }

    void prune()
    {
        std::vector<std::string> forget;
        {
            std::lock_guard lock(mtx_);
            forget = prune_locked();
        }
        erase(forget);
    }

    std::optional<response> no_room_locked(std::size_t body_bytes) const
    {
        if (queued_jobs_ >= limits_.max_queued_jobs) {
            auto r = response::error(503, fmt::format("{} uploads are waiting or running, the most this server queues; "
                                                      "try again later", queued_jobs_));
            r.headers.emplace_back("Retry-After", std::to_string(retry_after_seconds));
            return r;
        }
        return no_room_for_bytes(budget_->queued.load() + budget_->arriving.load(), body_bytes, limits_.max_queued_bytes);
    }

    std::optional<ssepp::event> outcome(const std::string& id)
    {
        std::lock_guard lock(mtx_);
        auto it = jobs_.find(id);
        return it == jobs_.end() ? std::nullopt : it->second.outcome;
    }

    common::http::reply events(std::string id, const request& req)
    {
        prune();
#if SSEPP_EXAMPLES_REDIS
        if (cluster_)
            return cluster_events(std::move(id), req);
#endif
        if (!known(id))
            return response::error(404, "unknown transaction");
        auto resume = ssepp::last_event_id(req.header("Last-Event-ID"), req.target);
        // The client already has the terminal event: 204 tells EventSource to stop reconnecting.
        if (resume) {
            const auto last = outcome(id);
            if ((last && last->id == resume) || (streams_.finished(id) && streams_.last_id(id) == resume))
                return response::empty(204);
        }
        // Checked before the answer, so that a refusal is an HTTP answer (503), not a stream.
        if (auto refused = refuse_stream(streams_, id))
            return std::move(*refused);
        return common::http::take_socket{[this, id, resume](asio::ip::tcp::socket socket) {
            std::lock_guard lock(life_mtx_);
            if (stopping_)
                return;  // shutdown already completed the streams: this one would stay open
            auto stream = ssepp::make_emitter(ssepp::http_body(std::move(socket)));
            std::error_code ec;
            const auto r = streams_.attach(id, stream, {.last_event_id = resume, .otherwise = ssepp::replay::all}, ec);
            if (ec) {
                // Streams of other requests took the last places since the check: nothing was
                // sent yet, the connection just closes (EventSource tries again).
                stream->abort();
                return;
            }
            if (r.finished)
                return;
            // The job ended and its history lingered out (the registry forgot it): its outcome,
            // from the job's record with its id, ends the stream, which otherwise would wait
            // forever. A job still running has no outcome yet; one that ends meanwhile
            // finishes the key itself (a second finish is refused, so nothing is sent twice).
            std::error_code refused;
            if (auto last = outcome(id))
                streams_.finish(id, std::move(*last), refused);
        }};
    }

    ssepp::connection_limits stream_limits() const
    {
        return {.max_connections = limits_.max_streams, .max_connections_per_key = limits_.max_job_streams};
    }

    // The 503 for a stream of job `id` that `reg` cannot take now (per job or in all), or
    // nothing. A cluster node's registry has no limits of its own (its attach() must not be
    // refused), so it is checked from its counts.
    template <class Registry>
    std::optional<response> refuse_stream(Registry& reg, const std::string& id)
    {
        const auto keys = std::span<const std::string>(&id, 1);
        const auto cap = common::full_cap(reg, keys, stream_limits());
        if (cap == common::stream_cap::none && reg.admits(id))
            return std::nullopt;
        reg.refuse(id);  // counted in ssepp_connections_refused_total
        return common::stream_refused(cap == common::stream_cap::key
                                          ? fmt::format("this job has {} event streams open, the most it may; "
                                                        "close one or try again later", limits_.max_job_streams)
                                          : fmt::format("the server has {} event streams open, the most it may; "
                                                        "try again later", limits_.max_streams),
                                      std::chrono::seconds(retry_after_seconds));
    }

    response show_metrics()
    {
        auto m = streams_.metrics();
#if SSEPP_EXAMPLES_REDIS
        if (cluster_)
            m += cluster_->node().local().metrics();
#endif
        std::size_t queued = 0, finished = 0;
        {
            std::lock_guard lock(mtx_);
            queued = queued_jobs_;
            finished = finished_.size();
        }
        common::exposition out;
        out.registry(m)
            .gauge("upload_jobs_queued", "Uploads accepted and not ended (waiting or importing).", queued)
            .gauge("upload_jobs_finished", "Finished jobs remembered (status and outcome).", finished)
            .gauge("upload_queued_bytes", "Bytes of uploads waiting, importing or arriving.",
                   budget_->queued.load() + budget_->arriving.load())
            .counter("upload_jobs_accepted_total", "Uploads accepted (202).", jobs_accepted_.load())
            .family("upload_jobs_ended_total", "counter", "Jobs ended, by outcome.",
                    {{R"(outcome="completed")", jobs_completed_.load()}, {R"(outcome="failed")", jobs_failed_.load()}})
            .gauge("upload_http_connections", "HTTP connections open (event streams not included).",
                   http_connections_ ? http_connections_() : 0);
        return out.response();
    }

#if SSEPP_EXAMPLES_REDIS
    // A job's events on any node: the job is known from its record in Redis, its events come
    // from its stream (replayed from the client's Last-Event-ID, whichever node gave it) and
    // then from the bus.
    common::http::reply cluster_events(std::string id, const request& req)
    {
        auto [why, rec] = cluster_->record(id);
        if (why)
            return redis_unavailable(*why);
        if (!rec)
            return response::error(404, "unknown transaction");
        auto resume = ssepp::last_event_id(req.header("Last-Event-ID"), req.target);
        if (resume && rec->outcome && rec->outcome->id == resume)
            return response::empty(204);
        // This node's caps; the node's registry has no limits set (see refuse_stream).
        if (auto refused = refuse_stream(cluster_->node().local(), id))
            return std::move(*refused);
        return common::http::take_socket{[this, id, resume, rec = std::move(*rec)](asio::ip::tcp::socket socket) mutable {
            std::lock_guard lock(life_mtx_);
            if (stopping_)
                return;
            auto stream = ssepp::make_emitter(ssepp::http_body(std::move(socket)));
            cluster_->attach(id, std::move(stream), resume, std::move(rec));
        }};
    }
#endif

    common::http::reply status(const std::string& id)
    {
        prune();
#if SSEPP_EXAMPLES_REDIS
        // Shared: any node answers for any job, from its record in Redis.
        if (cluster_) {
            auto [why, rec] = cluster_->record(id);
            if (why)
                return redis_unavailable(*why);
            if (!rec)
                return response::error(404, "unknown transaction");
            return response::json(200, {{"transaction_id", id}, {"state", rec->state}, {"rows_done", rec->rows_done},
                                        {"rows_total", rec->rows_total}, {"errors", rec->errors}, {"node", rec->node}});
        }
#endif
        std::lock_guard lock(mtx_);
        auto it = jobs_.find(id);
        if (it == jobs_.end())
            return response::error(404, "unknown transaction");
        const auto& j = it->second;
        return response::json(200, {{"transaction_id", id}, {"state", j.state}, {"rows_done", j.progress.rows_done},
                                    {"rows_total", j.progress.rows_total}, {"errors", j.progress.errors}});
    }

    common::http::reply list_products(const request& req)
    {
        const auto number = [&](std::string_view name, std::int64_t fallback, std::int64_t max) {
            auto v = req.query(name);
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
            return response::error(400, "limit and offset must be non-negative integers");
        common::sqlite::db db(db_path_);
        // An import's commit, or its checkpoint when it closes, locks the file for a moment.
        db.busy_timeout(std::chrono::seconds(5));
        return response::json(200, upload::list_products(db, limit, offset));
    }

    bool known(const std::string& id)
    {
        std::lock_guard lock(mtx_);
        return jobs_.contains(id);
    }

    void set_state(const std::string& id, std::string state)
    {
        std::lock_guard lock(mtx_);
        jobs_[id].state = std::move(state);
    }

    void update(const std::string& id, const upload::progress& p)
    {
        {
            std::lock_guard lock(mtx_);
            jobs_[id].progress = p;
        }
#if SSEPP_EXAMPLES_REDIS
        if (cluster_)
            cluster_->update(id, "processing", p);
#endif
    }

    static response redis_unavailable(std::string_view why)
    {
        auto r = response::error(503, fmt::format("this server cannot reach the cluster's store ({}); try again later", why));
        r.headers.emplace_back("Retry-After", std::to_string(retry_after_seconds));
        return r;
    }

    std::string db_path_;
    service_limits limits_;
    ssepp::registry streams_;
    std::mutex mtx_;
    std::map<std::string, job> jobs_;
    std::size_t queued_jobs_ = 0;   // accepted and not ended
    std::shared_ptr<byte_budget> budget_ = std::make_shared<byte_budget>();
    std::atomic<std::uint64_t> jobs_accepted_{0}, jobs_completed_{0}, jobs_failed_{0};
    std::function<std::size_t()> http_connections_;
    std::deque<std::pair<std::chrono::steady_clock::time_point, std::string>> finished_;  // in the order they ended
    // One import at a time: SQLite has one writer, and a second import would wait for the
    // first's lock (or fail with "database is locked") while looking "processing".
    asio::thread_pool workers_{1};
    std::atomic<int> running_{0}; // jobs accepted and not yet ended
    std::atomic<bool> cancel_{false};
    std::mutex life_mtx_;  // orders stream attachments with shutdown
    bool stopping_ = false;
    std::chrono::microseconds import_pause_{0};
#if SSEPP_EXAMPLES_REDIS
    std::unique_ptr<upload::cluster_link> cluster_;  // with --redis
#endif
};

} // namespace

int main(int argc, char** argv)
{
    common::server_flags server;
    common::http_flags front;
    common::shutdown_flags stop;
    service_limits limits;
    std::string db = "upload.db";
    std::size_t max_upload_mb = 64;
    std::size_t max_queued_mb = limits.max_queued_bytes >> 20;
    std::int64_t linger_ms = limits.finished_linger.count();
    std::int64_t ttl_ms = limits.finished_ttl.count();
    int grace_ms = 10000;
    std::string redis_url;
    std::int64_t lease_ms = 15000;
    std::int64_t import_pause_us = 0;
    common::cli args("upload_server");
    server.add_to(args)
        .flag("--db", db, "SQLite database file")
        .flag("--max-upload-mb", max_upload_mb, "largest upload accepted, in MiB")
        .flag("--max-queued-jobs", limits.max_queued_jobs, "uploads waiting or running at once; past it: 503")
        .flag("--max-queued-mb", max_queued_mb, "MiB of uploads waiting or running at once; past it: 503")
        .flag("--max-finished-jobs", limits.max_finished_jobs, "finished jobs remembered; the oldest go first")
        .flag("--max-streams", limits.max_streams, "event streams open at once (0: no cap); past it: 503")
        .flag("--max-job-streams", limits.max_job_streams, "event streams open at once per job (0: no cap); past it: 503")
        .flag("--finished-linger-ms", linger_ms, "how long a finished job's event history stays for replay")
        .flag("--finished-ttl-ms", ttl_ms, "how long a finished job's status and outcome stay")
        .flag("--grace-ms", grace_ms, "on SIGINT/SIGTERM, how long running jobs may finish")
        .flag("--redis", redis_url, "redis://host:port[/db]: run as one node of a cluster (README: Running several nodes)")
        .flag("--redis-lease-ms", lease_ms, "with --redis: a job whose node is silent this long is declared lost")
        .flag("--import-pause-us", import_pause_us, "pause every 64 rows or so of an import (to watch or test one)");
    stop.add_to(args);
    front.add_to(args).parse(argc, argv);
    if (const auto problem = stop.problem(); !problem.empty()) {
        fmt::print(stderr, "upload_server: {}\n", problem);
        return 2;
    }
    limits.max_upload_bytes = max_upload_mb << 20;
    limits.max_queued_bytes = max_queued_mb << 20;
    limits.finished_linger = std::chrono::milliseconds(linger_ms);
    limits.finished_ttl = std::chrono::milliseconds(ttl_ms);
    auto http_options = front.get();
    http_options.max_body_bytes = limits.max_upload_bytes;

#if !SSEPP_EXAMPLES_REDIS
    if (!redis_url.empty()) {
        fmt::print(stderr, "upload_server: --redis: built without Redis support (ssepp::redis needs hiredis)\n");
        return 1;
    }
#endif

    try {
        asio::io_context io;
        upload_service service(db, limits);
        service.set_import_pause(std::chrono::microseconds(import_pause_us));
        common::http::server http(
            io, server.endpoint(), [&](request& r) { return service.handle(r); },
            [&](const request& r, std::size_t& max_body) { return service.check(r, max_body); }, http_options);
        service.set_http_connections([&http] { return http.connections(); });
#if SSEPP_EXAMPLES_REDIS
        if (!redis_url.empty()) {
            char host[256] = {};
            ::gethostname(host, sizeof host - 1);
            const auto name = fmt::format("{}:{}:{}", host, http.local_endpoint().port(), ::getpid());
            // Bounded: a node whose Redis is down starts anyway, answers 503 and keeps trying.
            if (!service.join_cluster({.url = redis_url, .node_name = name, .lease = std::chrono::milliseconds(lease_ms)}))
                fmt::print(stderr, "upload_server: Redis at {} does not answer yet; uploads get 503 until it does\n",
                           redis_url);
        }
#endif
        fmt::print("upload_server listening on http://{}:{}/\n", server.host, http.local_endpoint().port());
        std::fflush(stdout);

        asio::signal_set signals(io, SIGINT, SIGTERM);
        std::thread stopper;
        signals.async_wait([&](std::error_code, int) {
            http.stop();
            // Jobs finish off the I/O threads; the streams they feed keep flowing meanwhile.
            // Then the streams are completed, and have --shutdown-drain-ms to close.
            stopper = std::thread([&] {
                service.shutdown(std::chrono::milliseconds(grace_ms), stop.retry_min(), stop.retry_max());
                common::wait_drained(io, [&] { return service.open_streams(); }, stop.drain_timeout());
            });
        });

        common::run(io, server.threads);
        if (stopper.joinable())
            stopper.join();
    } catch (const std::exception& e) {
        fmt::print(stderr, "upload_server: {}\n", e.what());
        return 1;
    }
    return 0;
}
