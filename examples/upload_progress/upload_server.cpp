// upload_server: the asynchronous-API pattern with SSE. POST /api/upload/csv answers 202 with a
// transaction id at once; a worker imports the CSV into SQLite; the page follows the job's
// progress at /api/upload/<id>/events, and a reconnecting client resumes from Last-Event-ID.
// The HTTP contract is in README.md beside this file.
#include "common/http.hpp"
#include "common/http_flags.hpp"
#include "common/multipart.hpp"
#include "common/random_id.hpp"
#include "common/server_main.hpp"
#include "common/sqlite.hpp"
#include "common/stream_slots.hpp"
#include "upload_progress/import.hpp"
#include "upload_progress/page_html.hpp"

#include <ssepp/ssepp.hpp>
#if SSEPP_EXAMPLES_REDIS
#include <ssepp/redis/cluster.hpp>
#include <ssepp/redis/url.hpp>
#endif

#include <asio.hpp>
#include <fmt/format.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <set>
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
    /// Event streams open at once, in all and per job: past either, 503 with Retry-After.
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

#if SSEPP_EXAMPLES_REDIS
// --- cluster mode (--redis): README.md "Running several nodes" ---------------------------------

/// How this node takes part in a cluster.
struct cluster_settings {
    std::string url;        // redis://host:port[/db]
    std::string node_name;  // in job records and logs: host:port:pid
    /// A job whose lease nobody renewed for this long is declared lost by a node that streams
    /// it. The lease's holder renews it every second; a publish that Redis does not take is
    /// retried for lease / 3, so that a node cut off from Redis gives up on a job before
    /// another node can declare it lost (never both).
    std::chrono::milliseconds lease{15000};
    /// The longest wait for one Redis command from an HTTP request.
    std::chrono::milliseconds call_timeout{2000};
};

/// What Redis records about a job (shared by every node).
struct job_record {
    std::string state;
    std::uint64_t rows_done = 0, rows_total = 0, errors = 0;
    std::string node;
    std::optional<ssepp::event> outcome;  // the terminal event, id included, once recorded
    bool stream_exists = false;           // its event history is still in Redis
};

/// One job's events as this node publishes them.
struct job_stream {
    explicit job_stream(std::string i) : id(std::move(i)) {}
    const std::string id;
    std::mutex mtx;  // one publish at a time: the stream's order is the order of the calls
    bool primed = false;
    std::string last;                    // the stream id of the last event stored, "" if none
    std::optional<std::string> failure;  // why publishing stopped, once it did (under mtx)
    std::atomic<bool> failed{false};     // failure is set: for the import's polls, lock-free
    std::atomic<bool> disowned{false};   // another node holds the job's lease now

    bool stopped() const { return failed || disowned; }
    std::string why()
    {
        std::lock_guard lock(mtx);
        return disowned ? "another node declared this import lost" : failure.value_or("?");
    }
};

/// This node's link to the cluster: the ssepp::redis::node that carries the job streams, and
/// a connection of its own for the job records and leases. Both run on a thread of their own,
/// so that an HTTP handler or an import may wait for Redis (bounded) without holding up the
/// I/O threads that would have to run the reply.
class cluster_link {
public:
    using clock = std::chrono::steady_clock;
    using reply = ssepp::redis::reply;
    using result = std::pair<std::error_code, reply>;

    cluster_link(cluster_settings settings, const service_limits& limits)
        : settings_(std::move(settings)), limits_(limits)
    {
        ssepp::redis::cluster_options o{.server = ssepp::redis::parse_url(settings_.url)};
        o.prefix = std::string(prefix);
        o.stream_max_events = history_events;  // a job's whole history, as without --redis
        o.stream_ttl = limits_.finished_ttl;     // the stream of a job nobody ended (its node died) goes too
        node_ = ssepp::redis::node::create(io_.get_executor(), o,
                                           {.max_events = history_events,
                                            .max_bytes = history_bytes,
                                            .finished_linger = limits_.finished_linger});
        ssepp::redis::connection::options c;
        c.server = o.server;
        c.reconnect_delay = o.reconnect_delay;
        c.max_reconnect_delay = o.max_reconnect_delay;
        c.on_connect = [this] { records_up_ = true; };
        c.on_disconnect = [this](std::error_code) { records_up_ = false; };
        records_ = ssepp::redis::connection::create(io_.get_executor(), c);
        asio::post(io_, [this] { tick(); });
        thread_ = std::thread([this] { io_.run(); });
    }

    ~cluster_link() { stop(); }
    cluster_link(const cluster_link&) = delete;
    cluster_link& operator=(const cluster_link&) = delete;

    /// Closes the links (the node completes its streams) and ends the thread.
    void stop()
    {
        if (!thread_.joinable())
            return;
        helpers_.stop();  // a take-over under way ends within its bounds
        node_->close();
        asio::post(io_, [this] {
            timer_.cancel();
            records_->close();
            io_.stop();  // what is left (handlers of closed commands) is destroyed unrun
        });
        thread_.join();
    }

    ssepp::redis::node& node() { return *node_; }
    const std::string& name() const { return settings_.node_name; }
    /// Both links are up: the bus is subscribed and the records connection ready.
    bool up() const { return records_up_ && node_->is_ready(); }
    bool wait_up(std::chrono::milliseconds bound) const
    {
        const auto deadline = clock::now() + bound;
        while (!up() && clock::now() < deadline)
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        return up();
    }

    static std::string record_key(std::string_view id) { return fmt::format("{}job:{{{}}}", prefix, id); }
    static std::string lease_key(std::string_view id) { return fmt::format("{}lease:{{{}}}", prefix, id); }
    /// The node's stream of key `id` (cluster_options::prefix + "{" + key + "}").
    static std::string stream_key(std::string_view id) { return fmt::format("{}{{{}}}", prefix, id); }

    /// Records a new job, queued on this node, with its lease: once this returns nullopt,
    /// every node knows the id. Else why not (Redis unreachable or slow).
    std::optional<std::string> create(const std::string& id)
    {
        static constexpr std::string_view script = R"(
redis.call('HSET', KEYS[1], 'state', 'queued', 'rows_done', '0', 'rows_total', '0', 'errors', '0', 'node', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
return 1)";
        auto js = std::make_shared<job_stream>(id);
        {
            // Before the script: the renewal must not find the lease gone for want of a renewal.
            std::lock_guard lock(mtx_);
            held_[id] = js;
        }
        auto [ec, r] = call({"EVAL", std::string(script), "2", record_key(id), lease_key(id), name(),
                             ms(limits_.finished_ttl), ms(settings_.lease)});
        if (ec) {
            std::lock_guard lock(mtx_);
            held_.erase(id);
            return describe(ec, r);
        }
        return std::nullopt;
    }

    /// The job this node created or took over: where its events go.
    std::shared_ptr<job_stream> stream(const std::string& id)
    {
        std::lock_guard lock(mtx_);
        auto it = held_.find(id);
        return it == held_.end() ? std::make_shared<job_stream>(id) : it->second;
    }

    /// The job's record; nullopt for an unknown id; an error when Redis did not answer.
    std::pair<std::optional<std::string>, std::optional<job_record>> record(const std::string& id)
    {
        static constexpr std::string_view script = R"(
local h = redis.call('HGETALL', KEYS[1])
if #h == 0 then return false end
return {h, redis.call('EXISTS', KEYS[2])})";
        auto [ec, r] = call({"EVAL", std::string(script), "2", record_key(id), stream_key(id)});
        if (ec)
            return {describe(ec, r), std::nullopt};
        if (!r.is_array() || r.size() != 2 || !r[0].is_array())
            return {};
        job_record j;
        std::map<std::string, std::string> f;
        for (std::size_t i = 0; i + 1 < r[0].size(); i += 2)
            f[r[0][i].str()] = r[0][i + 1].str();
        const auto number = [&](const char* k) {
            std::uint64_t n = 0;
            const auto& v = f[k];
            std::from_chars(v.data(), v.data() + v.size(), n);
            return n;
        };
        j.state = f["state"];
        j.rows_done = number("rows_done");
        j.rows_total = number("rows_total");
        j.errors = number("errors");
        j.node = f["node"];
        if (f.contains("outcome_id"))
            j.outcome = ssepp::event{.id = f["outcome_id"], .event = f["outcome_event"], .data = f["outcome_data"]};
        j.stream_exists = r[1].is_integer() && r[1].integer() == 1;
        return {std::nullopt, std::move(j)};
    }

    /// The job's state and counts, for the shared status (fire and forget: a status is a
    /// snapshot, and the next update corrects a lost one).
    void update(const std::string& id, std::string_view state, const upload::progress& p)
    {
        post({"HSET", record_key(id), "state", std::string(state), "rows_done", std::to_string(p.rows_done),
              "rows_total", std::to_string(p.rows_total), "errors", std::to_string(p.errors)});
    }

    /// Publishes `e` after the job's events published before it (`finish`: as its terminal
    /// event). While Redis does not take it the publish is retried, for lease / 3 at most; a
    /// send whose reply was lost is looked up in the stream before it is sent again, so that
    /// nothing is stored twice. Returns the event's id, or nullopt: js.failure says why, and
    /// nothing more is published for the job (but a terminal event, which tries once more).
    std::optional<std::string> publish(job_stream& js, ssepp::event e, bool finish)
    {
        std::lock_guard lock(js.mtx);
        if (js.disowned)
            return std::nullopt;
        if (js.failure && !finish)
            return std::nullopt;
        js.failure.reset();
        js.failed = false;
        // Sets the failure (the caller's lock held) and says there is no id.
        const auto fail = [&](std::string why) {
            js.failure = std::move(why);
            js.failed = true;
            return std::nullopt;
        };
        const auto deadline = clock::now() + settings_.lease / 3;
        std::optional<std::future<std::pair<std::error_code, std::string>>> pending;  // fate unknown
        bool unsure = !js.primed;  // what the stream holds is to be read first
        std::string why;
        for (;;) {
            if (unsure) {
                if (pending) {
                    if (pending->wait_until(deadline) != std::future_status::ready) {
                        return fail("Redis did not answer a publish");
                    }
                    auto [ec, id] = get(*pending);
                    pending.reset();
                    if (!ec)
                        return stored(js, std::move(id));
                }
                auto [ec, r] = call({"XREVRANGE", stream_key(js.id), "+", "-", "COUNT", "1"});
                if (!ec) {
                    const std::string last = r.is_array() && r.size() == 1 && r[0].is_array() && r[0].size() == 2
                                                 ? r[0][0].str()
                                                 : std::string();
                    if (!js.primed) {
                        js.primed = true;
                        js.last = last;
                    } else if (newer(last, js.last)) {
                        return stored(js, last);  // the lost reply's event is in the stream
                    }
                    unsure = false;
                    continue;
                }
                why = describe(ec, r);
            } else {
                auto f = send(js.id, e, finish);
                if (f.wait_until(std::min(deadline, clock::now() + settings_.call_timeout)) == std::future_status::ready) {
                    auto [ec, id] = get(f);
                    if (!ec)
                        return stored(js, std::move(id));
                    if (ec.category() != ssepp::redis::error_category()) {
                        return fail(ec.message());  // the event itself (validate()): no retry
                    }
                    why = ec.message();
                    unsure = ec != ssepp::redis::errc::not_connected;  // not_connected: never sent
                } else {
                    pending = std::move(f);
                    unsure = true;
                    why = "Redis did not answer in time";
                }
            }
            if (clock::now() >= deadline) {
                return fail(fmt::format("Redis took no event for {} ms ({})", ms(settings_.lease / 3), why));
            }
            std::this_thread::sleep_for(std::min<clock::duration>(std::chrono::milliseconds(100), deadline - clock::now()));
        }
    }

    /// Before a job's terminal event: whether this node may still publish it (it holds the
    /// job's lease, or nobody does and it takes it back). False when another node declared
    /// the job lost.
    bool claim_end(job_stream& js)
    {
        static constexpr std::string_view script = R"(
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return 1 end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1)";
        if (js.disowned)
            return false;
        const auto deadline = clock::now() + settings_.lease / 3;
        for (;;) {
            auto [ec, r] = call({"EVAL", std::string(script), "1", lease_key(js.id), name(), ms(settings_.lease)});
            if (!ec)
                return r.is_integer() && r.integer() == 1;
            if (clock::now() >= deadline)
                return true;  // cannot ask: the publish will meet the same fate and say so
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
    }

    /// After the terminal event (`terminal`, with its id) was published, or given up (nullopt):
    /// records the outcome for status and late clients, lets the history linger out, and
    /// releases the lease (given up: another node that streams the job declares it lost once
    /// the lease lapses).
    void ended(const std::string& id, std::string_view state, const std::optional<ssepp::event>& terminal,
               const std::optional<upload::progress>& p)
    {
        {
            std::lock_guard lock(mtx_);
            held_.erase(id);
        }
        if (!terminal) {
            // The status at least says it ended; the lease lapses, and a node that streams
            // the job declares it lost (unless the event landed after all: see watch()).
            if (p)
                post({"HSET", record_key(id), "state", std::string(state), "rows_done", std::to_string(p->rows_done),
                      "rows_total", std::to_string(p->rows_total), "errors", std::to_string(p->errors)});
            return;
        }
        static constexpr std::string_view script = R"(
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'outcome_id', ARGV[3], 'outcome_event', ARGV[4], 'outcome_data', ARGV[5])
if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], 'rows_done', ARGV[8], 'rows_total', ARGV[9], 'errors', ARGV[10]) end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[7])
if redis.call('GET', KEYS[3]) == ARGV[1] then redis.call('DEL', KEYS[3]) end
return 1)";
        const auto deadline = clock::now() + settings_.lease / 3;
        for (;;) {
            auto [ec, r] = call({"EVAL", std::string(script), "3", record_key(id), stream_key(id), lease_key(id), name(),
                                 std::string(state), terminal->id.value_or(""), terminal->event,
                                 terminal->data.value_or(""), ms(limits_.finished_ttl), ms(limits_.finished_linger),
                                 p ? std::to_string(p->rows_done) : "", p ? std::to_string(p->rows_total) : "",
                                 p ? std::to_string(p->errors) : ""});
            if (!ec || clock::now() >= deadline) {
                if (ec)
                    fmt::print(stderr, "upload_server: job {}: its outcome was published but not recorded: {}\n", id,
                               describe(ec, r));
                return;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
    }

    /// Forgets a finished job everywhere (past --max-finished-jobs).
    void forget(const std::string& id)
    {
        post({"DEL", record_key(id), stream_key(id), lease_key(id)});
        node_->local().erase(id);
    }

private:
    static constexpr std::string_view prefix = "ssepp:upload:";
    static constexpr std::size_t history_events = 5000;
    static constexpr std::size_t history_bytes = std::size_t(4) << 20;

    static std::string ms(std::chrono::milliseconds d) { return std::to_string(d.count()); }

    static std::string describe(std::error_code ec, const reply& r)
    {
        if (ec == ssepp::redis::errc::server_error)
            return fmt::format("Redis: {}", r.str());
        return fmt::format("Redis: {}", ec.message());
    }

    // a > b, as stream ids ("" is before any).
    static bool newer(const std::string& a, const std::string& b)
    {
        if (a.empty())
            return false;
        if (b.empty())
            return true;
        const auto x = ssepp::redis::stream_id::parse(a);
        const auto y = ssepp::redis::stream_id::parse(b);
        return x && y && *x > *y;
    }

    std::optional<std::string> stored(job_stream& js, std::string id)
    {
        js.last = id;
        js.primed = true;
        return id;
    }

    template <class T>
    static T get(std::future<T>& f)
    {
        try {
            return f.get();
        } catch (const std::future_error&) {  // the link closed under it (shutdown)
            return {make_error_code(ssepp::redis::errc::closed), {}};
        }
    }

    std::future<std::pair<std::error_code, std::string>> send(const std::string& key, ssepp::event e, bool finish)
    {
        auto p = std::make_shared<std::promise<std::pair<std::error_code, std::string>>>();
        auto f = p->get_future();
        auto done = [p](std::error_code ec, std::string id) { p->set_value({ec, std::move(id)}); };
        if (finish)
            node_->async_finish(key, std::move(e), std::move(done));
        else
            node_->async_send(key, std::move(e), std::move(done));
        return f;
    }

    /// One command on the records connection, waited for at most call_timeout.
    result call(std::vector<std::string> args)
    {
        auto p = std::make_shared<std::promise<result>>();
        auto f = p->get_future();
        asio::post(io_, [this, p, args = std::move(args)] {
            std::vector<std::string_view> v(args.begin(), args.end());
            records_->async_command(std::span<const std::string_view>(v),
                                    [p](std::error_code ec, reply r) { p->set_value({ec, std::move(r)}); });
        });
        if (f.wait_for(settings_.call_timeout) != std::future_status::ready)
            return {make_error_code(std::errc::timed_out), {}};
        return get(f);
    }

    void post(std::vector<std::string> args)
    {
        asio::post(io_, [this, args = std::move(args)] { command(args, [](std::error_code, reply) {}); });
    }

    // On the link's thread. (The arguments are read before async_command returns.)
    template <class Handler>
    void command(const std::vector<std::string>& args, Handler handler)
    {
        std::vector<std::string_view> v(args.begin(), args.end());
        records_->async_command(std::span<const std::string_view>(v), std::move(handler));
    }

    // Every second, on the link's thread: renew the leases this node holds, and look after
    // the jobs it streams and does not hold.
    void tick()
    {
        renew();
        watch();
        timer_.expires_after(std::chrono::seconds(1));
        timer_.async_wait([this](std::error_code ec) {
            if (!ec)
                tick();
        });
    }

    void renew()
    {
        static constexpr std::string_view script = R"(
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
if holder then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1)";
        std::vector<std::shared_ptr<job_stream>> held;
        {
            std::lock_guard lock(mtx_);
            for (const auto& [id, js] : held_)
                held.push_back(js);
        }
        for (auto& js : held) {
            command({"EVAL", std::string(script), "2", lease_key(js->id), record_key(js->id), name(), ms(settings_.lease),
                     ms(limits_.finished_ttl)},
                    [js](std::error_code ec, reply r) {
                if (!ec && r.is_integer() && r.integer() == 0)
                    js->disowned = true;  // lapsed and taken: another node declared the job lost
                // (Not set yet, just being created: left alone.)
            });
        }
    }

    // For each job this node streams (a key of its registry, not finished there) and does not
    // hold: a job whose lease lapsed before its end is taken over, and declared lost; a job
    // whose end is recorded but not delivered here (see README) has its streams here ended.
    void watch()
    {
        static constexpr std::string_view script = R"(
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[1], 'outcome_id') == 1 then
  return {redis.call('HMGET', KEYS[1], 'outcome_id', 'outcome_event', 'outcome_data'), redis.call('EXISTS', KEYS[3])}
end
local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
if #last == 1 then
  local f = last[1][2]
  for i = 1, #f, 2 do if f[i] == 'f' and f[i + 1] == '1' then return 0 end end
end
if redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2], 'NX') then
  redis.call('HSET', KEYS[1], 'state', 'failed')
  return 1
end
return 0)";
        std::set<std::string> unfinished;
        {
            std::lock_guard lock(mtx_);
            for (auto& k : node_->local().keys())
                if (!held_.contains(k) && !node_->local().finished(k))
                    unfinished.insert(k);
        }
        // A key stays "suspect" across ticks only while it stays unfinished here.
        std::erase_if(suspect_, [&](const std::string& k) { return !unfinished.contains(k); });
        for (const auto& id : unfinished) {
            command({"EVAL", std::string(script), "3", record_key(id), lease_key(id), stream_key(id), name(),
                     ms(settings_.lease)},
                    [this, id](std::error_code ec, reply r) {
                if (ec)
                    return;
                if (r.is_integer() && r.integer() == 1) {
                    take_over(id);
                } else if (r.is_array() && r.size() == 2 && r[0].is_array() && r[0].size() == 3) {
                    // Ended, and recorded a second ago at least: the bus has long carried
                    // the end; its not being here means the streams here never get it.
                    if (!suspect_.insert(id).second && !node_->local().finished(id)) {
                        if (r[1].is_integer() && r[1].integer() == 1)
                            node_->local().close(id);  // they replayed it: they resume, and get 204
                        else
                            node_->local().finish(id, {.id = r[0][0].str(), .event = r[0][1].str(),
                                                       .data = r[0][2].str()});
                        suspect_.erase(id);
                    }
                }
            });
        }
    }

    // This node took the lease of a job whose own node went away: it says so, as the job's
    // terminal event, off the link's thread (publishing waits).
    void take_over(const std::string& id)
    {
        auto js = std::make_shared<job_stream>(id);
        {
            std::lock_guard lock(mtx_);
            held_[id] = js;
        }
        asio::post(helpers_, [this, js] {
            std::string node_name;
            if (auto [err, rec] = record(js->id); rec)
                node_name = rec->node;
            ssepp::event lost{.event = "error",
                              .data = nlohmann::json{{"reason", fmt::format("lost: the node running this import ({}) "
                                                                            "stopped before it ended; upload the file "
                                                                            "again (rows are upserted by sku)",
                                                                            node_name.empty() ? "?" : node_name)}}
                                          .dump()};
            auto id = publish(*js, lost, true);
            if (id)
                lost.id = *id;
            else
                fmt::print(stderr, "upload_server: job {}: could not declare it lost: {}\n", js->id,
                           js->why());
            ended(js->id, "failed", id ? std::optional(lost) : std::nullopt, std::nullopt);
        });
    }

    cluster_settings settings_;
    service_limits limits_;
    asio::io_context io_;
    asio::executor_work_guard<asio::io_context::executor_type> work_ = asio::make_work_guard(io_);
    std::shared_ptr<ssepp::redis::node> node_;
    std::shared_ptr<ssepp::redis::connection> records_;
    asio::steady_timer timer_{io_};
    std::atomic<bool> records_up_{false};
    std::mutex mtx_;
    std::map<std::string, std::shared_ptr<job_stream>> held_;  // the jobs whose lease this node holds
    std::set<std::string> suspect_;  // on the link's thread only
    asio::thread_pool helpers_{1};
    std::thread thread_;  // last: starts once the rest is ready
};
#endif

class upload_service {
public:
    upload_service(std::string db_path, service_limits limits)
        : db_path_(std::move(db_path)), limits_(limits),
          streams_({.max_events = 5000, .max_bytes = 4 << 20, .finished_linger = limits.finished_linger}),
          slots_(limits.max_streams)
    {
        limits_.finished_ttl = std::max(limits_.finished_ttl, limits_.finished_linger);
        common::sqlite::db db(db_path_);
        upload::ensure_schema(db);
    }

    /// Slows every import down by pausing `pause` at each of its checkpoints (every 64 rows
    /// or so): to watch one, or to test what happens while one runs.
    void set_import_pause(std::chrono::microseconds pause) { import_pause_ = pause; }

#if SSEPP_EXAMPLES_REDIS
    /// Runs as a node of a cluster (--redis): before the first request. Waits (bounded) for
    /// Redis; false when it did not answer in time (the node goes on trying).
    bool join_cluster(cluster_settings settings)
    {
        cluster_ = std::make_unique<cluster_link>(std::move(settings), limits_);
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
        if (req.method == "GET" && p.starts_with("/api/upload/")) {
            auto rest = std::string_view(p).substr(std::string_view("/api/upload/").size());
            if (rest.ends_with("/events"))
                return events(std::string(rest.substr(0, rest.size() - 7)), req);
            return status(std::string(rest));
        }
        return response::error(404, "no such resource");
    }

    // Lets running jobs end by themselves for `grace`, then cancels the rest (they end with
    // `error: shutting down`), then completes every stream.
    void shutdown(std::chrono::milliseconds grace)
    {
        const auto deadline = std::chrono::steady_clock::now() + grace;
        while (running_ > 0 && std::chrono::steady_clock::now() < deadline)
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        cancel_ = true;
        workers_.join();
        std::lock_guard lock(life_mtx_);
        stopping_ = true;
#if SSEPP_EXAMPLES_REDIS
        if (cluster_)
            cluster_->stop();  // completes the node's streams
#endif
        streams_.complete_all();
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
        std::function<bool(ssepp::event)> send = [&](ssepp::event e) { return bool(streams_.send(id, std::move(e))); };
        std::function<bool()> lost = [] { return false; };
        std::function<std::string()> lost_reason;
#if SSEPP_EXAMPLES_REDIS
        std::shared_ptr<job_stream> js;
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
            end(id, {.event = "complete",
                     .data = json{{"rows", s.rows}, {"inserted", s.inserted}, {"updated", s.updated},
                                  {"errors", s.errors}, {"elapsed_ms", s.elapsed.count()},
                                  {"products", "/api/products"}}
                                 .dump()});
        } catch (const std::exception& e) {
            pacer.stop();
            set_state(id, "failed");
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
            auto js = cluster_->stream(id);
            job j;
            {
                std::lock_guard lock(mtx_);
                j = jobs_[id];
            }
            // The lease says whether this node still speaks for the job (another one declared
            // it lost when this one stayed away from Redis too long: it said so already).
            if (cluster_->claim_end(*js)) {
                if (auto eid = cluster_->publish(*js, terminal, true)) {
                    terminal.id = *eid;
                    sent = true;
                } else {
                    fmt::print(stderr, "upload_server: job {}: its {} event could not be published: {}\n", id,
                               terminal.event, js->why());
                }
            } else {
                fmt::print(stderr, "upload_server: job {}: another node declared it lost; its {} is not published\n",
                           id, terminal.event);
            }
            cluster_->ended(id, j.state, sent ? std::optional(terminal) : std::nullopt, j.progress);
        } else
#endif
        {
            const auto r = streams_.finish(id, terminal);
            terminal.id = r.id;
            sent = bool(r);
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
        // A place for the stream, taken before the answer, given back when the stream closes
        // (or at once if it never opens).
        auto [slot, refused] = take_slot(id);
        if (refused)
            return std::move(*refused);
        return common::http::take_socket{[this, id, resume, slot = std::move(slot)](asio::ip::tcp::socket socket) {
            std::lock_guard lock(life_mtx_);
            if (stopping_)
                return;  // shutdown already completed the streams: this one would stay open
            auto stream = ssepp::make_emitter(std::move(socket));
            stream->on_close([slot](ssepp::close_reason, std::error_code) {});  // holds the place until then
            const auto r = streams_.attach(id, stream, {.last_event_id = resume, .otherwise = ssepp::replay::all});
            if (r.finished)
                return;
            // The job ended and its history lingered out (the registry forgot it): its outcome,
            // from the job's record with its id, ends the stream, which otherwise would wait
            // forever. A job still running has no outcome yet; one that ends meanwhile
            // finishes the key itself (a second finish is refused, so nothing is sent twice).
            if (auto last = outcome(id))
                streams_.finish(id, std::move(*last));
        }};
    }

    // Places for event streams, per job and in all; a 503 when there is none.
    std::pair<std::shared_ptr<void>, std::optional<response>> take_slot(const std::string& id)
    {
        auto [slot, full] = slots_.take(id, limits_.max_job_streams);
        if (!full)
            return {std::move(slot), std::nullopt};
        auto r = response::error(503, *full == common::stream_slots::full::key
                                          ? fmt::format("this job has {} event streams open, the most it may; "
                                                        "close one or try again later", limits_.max_job_streams)
                                          : fmt::format("the server has {} event streams open, the most it may; "
                                                        "try again later", slots_.total()));
        r.headers.emplace_back("Retry-After", std::to_string(retry_after_seconds));
        return {nullptr, std::move(r)};
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
        auto [slot, refused] = take_slot(id);
        if (refused)
            return std::move(*refused);
        return common::http::take_socket{[this, id, resume, rec = std::move(*rec),
                                          slot = std::move(slot)](asio::ip::tcp::socket socket) mutable {
            std::lock_guard lock(life_mtx_);
            if (stopping_)
                return;
            auto stream = ssepp::make_emitter(std::move(socket));
            stream->on_close([slot](ssepp::close_reason, std::error_code) {});
            cluster_->node().async_attach(
                id, stream, {.last_event_id = resume, .otherwise = ssepp::replay::all},
                [this, id, stream, rec = std::move(rec)](std::error_code ec, ssepp::attach_result r) {
                    if (ec) {
                        stream->close();  // Redis failed under it: the client reconnects
                        return;
                    }
                    if (r.finished || !rec.outcome)
                        return;
                    // The job had ended before this node heard of it: the stream's replay
                    // holds the terminal event but this node's registry was not finished by
                    // it (README: "Running several nodes"). Ended here: with the replay (the
                    // client comes back with the terminal's id: 204), or, the history gone,
                    // with the recorded outcome.
                    if (rec.stream_exists)
                        cluster_->node().local().close(id);
                    else
                        cluster_->node().local().finish(id, *rec.outcome);
                });
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
    common::stream_slots slots_;
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
    std::unique_ptr<cluster_link> cluster_;  // with --redis
#endif
};

} // namespace

int main(int argc, char** argv)
{
    common::server_flags server;
    common::http_flags front;
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
        .flag("--max-streams", limits.max_streams, "event streams open at once; past it: 503")
        .flag("--max-job-streams", limits.max_job_streams, "event streams open at once per job; past it: 503")
        .flag("--finished-linger-ms", linger_ms, "how long a finished job's event history stays for replay")
        .flag("--finished-ttl-ms", ttl_ms, "how long a finished job's status and outcome stay")
        .flag("--grace-ms", grace_ms, "on SIGINT/SIGTERM, how long running jobs may finish")
        .flag("--redis", redis_url, "redis://host:port[/db]: run as one node of a cluster (README: Running several nodes)")
        .flag("--redis-lease-ms", lease_ms, "with --redis: a job whose node is silent this long is declared lost")
        .flag("--import-pause-us", import_pause_us, "pause every 64 rows or so of an import (to watch or test one)");
    front.add_to(args).parse(argc, argv);
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
            stopper = std::thread([&] {
                service.shutdown(std::chrono::milliseconds(grace_ms));
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
