// The upload example's cluster mode (--redis; README.md "Running several nodes"): the job
// records, leases and event streams one node keeps in Redis, shared with the other nodes.
// upload_server.cpp includes it only when built with ssepp::redis (SSEPP_EXAMPLES_REDIS).
#pragma once

#include "upload_progress/import.hpp"

#include <ssepp/redis/cluster.hpp>
#include <ssepp/redis/url.hpp>
#include <ssepp/ssepp.hpp>

#include <asio.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

namespace upload {

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
    /// The service's (service_limits): how long a finished job's event history stays for
    /// replay, and how long its record (status and outcome) stays.
    std::chrono::milliseconds finished_linger{std::chrono::minutes(10)};
    std::chrono::milliseconds finished_ttl{std::chrono::hours(1)};
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

    explicit cluster_link(cluster_settings settings) : settings_(std::move(settings))
    {
        ssepp::redis::cluster_options o{.server = ssepp::redis::parse_url(settings_.url)};
        o.prefix = std::string(prefix);
        o.stream_max_events = history_events;  // a job's whole history, as without --redis
        o.stream_ttl = settings_.finished_ttl;  // the stream of a job nobody ended (its node died) goes too
        node_ = ssepp::redis::node::create(io_.get_executor(), o,
                                           {.max_events = history_events,
                                            .max_bytes = history_bytes,
                                            .finished_linger = settings_.finished_linger});
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
                             ms(settings_.finished_ttl), ms(settings_.lease)});
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
                                 terminal->data.value_or(""), ms(settings_.finished_ttl), ms(settings_.finished_linger),
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

    /// A job's end on the node that ran it: its terminal event published (`terminal` gets its
    /// id), when this node still speaks for the job, and the outcome recorded (ended()).
    /// Returns whether the event was published.
    bool end_job(const std::string& id, ssepp::event& terminal, std::string_view state, const upload::progress& p)
    {
        auto js = stream(id);
        bool sent = false;
        // The lease says whether this node still speaks for the job (another one declared
        // it lost when this one stayed away from Redis too long: it said so already).
        if (claim_end(*js)) {
            if (auto eid = publish(*js, terminal, true)) {
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
        ended(id, state, sent ? std::optional(terminal) : std::nullopt, p);
        return sent;
    }

    /// Attaches a client's stream to job `id` on this node (on any node: see README), `rec`
    /// being the job's record as read before.
    void attach(const std::string& id, ssepp::redis::node::emitter_ptr stream, std::optional<std::string> resume,
                job_record rec)
    {
        node_->async_attach(
            id, stream, {.last_event_id = std::move(resume), .otherwise = ssepp::replay::all},
            [this, id, stream, rec = std::move(rec)](std::error_code ec, ssepp::attach_result r) {
                if (ec) {
                    stream->abort();  // Redis failed under it: the client reconnects
                    return;
                }
                if (r.finished || !rec.outcome)
                    return;
                // The job had ended before this node heard of it: the stream's replay
                // holds the terminal event but this node's registry was not finished by
                // it (README: "Running several nodes"). Ended here: with the replay (the
                // client comes back with the terminal's id: 204), or, the history gone,
                // with the recorded outcome.
                std::error_code finished;  // already finished here meanwhile: nothing to do
                if (rec.stream_exists)
                    node_->local().complete(id);
                else
                    node_->local().finish(id, *rec.outcome, finished);
            });
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
                     ms(settings_.finished_ttl)},
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
                        std::error_code finished;  // finished here meanwhile: nothing to do
                        if (r[1].is_integer() && r[1].integer() == 1)
                            node_->local().complete(id);  // they replayed it: they resume, and get 204
                        else
                            node_->local().finish(id, {.id = r[0][0].str(), .event = r[0][1].str(),
                                                       .data = r[0][2].str()}, finished);
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

} // namespace upload
