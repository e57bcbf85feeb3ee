// ssepp/redis/cluster.hpp
// One node of a cluster on Redis: an event published on any node is appended to the key's
// Redis Stream (one global order of ids, a history every node shares) and carried by pub/sub
// to every node, whose local registry fans it out; a client resumes on any node.
// SPDX-License-Identifier: BSL-1.0
#ifndef SSEPP_REDIS_CLUSTER_HPP
#define SSEPP_REDIS_CLUSTER_HPP

#include <ssepp/redis/connection.hpp>
#include <ssepp/redis/subscriber.hpp>
#include <ssepp/registry.hpp>

#include <asio/async_result.hpp>
#include <asio/dispatch.hpp>
#include <asio/post.hpp>

#include <atomic>
#include <charconv>
#include <compare>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace ssepp::redis {

struct cluster_options {
    endpoint server{};
    /// Names in Redis: the stream of key K is "<prefix>{K}" (the braces make K the hash tag,
    /// so that Redis Cluster shards by key), the bus channel "<prefix>bus".
    std::string prefix = "ssepp:";
    /// Each stream keeps about this many entries (XADD MAXLEN ~): the shared history.
    std::size_t stream_max_events = 1024;
    /// The links' reconnection back-off (see connection::options).
    std::chrono::milliseconds reconnect_delay{100};
    std::chrono::milliseconds max_reconnect_delay{2000};
};

/// A Redis stream entry id, "<milliseconds>-<sequence>", ordered as Redis orders them.
struct stream_id {
    std::uint64_t ms = 0;
    std::uint64_t seq = 0;

    static std::optional<stream_id> parse(std::string_view s)
    {
        const auto dash = s.find('-');
        if (dash == std::string_view::npos)
            return std::nullopt;
        stream_id id;
        const auto a = std::from_chars(s.data(), s.data() + dash, id.ms);
        const auto b = std::from_chars(s.data() + dash + 1, s.data() + s.size(), id.seq);
        if (a.ec != std::errc{} || a.ptr != s.data() + dash || b.ec != std::errc{} || b.ptr != s.data() + s.size())
            return std::nullopt;
        return id;
    }

    friend auto operator<=>(const stream_id&, const stream_id&) = default;
};

namespace detail {

// Length-prefixed pieces ("<len>:<bytes>"): binary-safe, and simple enough for the Lua script.
inline void put_piece(std::string& out, std::string_view bytes)
{
    out += std::to_string(bytes.size());
    out += ':';
    out += bytes;
}

inline std::optional<std::string_view> take_piece(std::string_view& in)
{
    const auto colon = in.find(':');
    std::size_t n = 0;
    if (colon == std::string_view::npos)
        return std::nullopt;
    const auto r = std::from_chars(in.data(), in.data() + colon, n);
    if (r.ec != std::errc{} || r.ptr != in.data() + colon || in.size() - colon - 1 < n)
        return std::nullopt;
    const auto piece = in.substr(colon + 1, n);
    in.remove_prefix(colon + 1 + n);
    return piece;
}

// An event's fields but its id (the stream gives it): a tag letter, then a piece, each.
inline std::string encode_event(const event& e)
{
    std::string out;
    if (!e.event.empty())
        out += 't', put_piece(out, e.event);
    if (e.data)
        out += 'd', put_piece(out, *e.data);
    if (e.retry)
        out += 'r', put_piece(out, std::to_string(e.retry->count()));
    if (e.comment)
        out += 'c', put_piece(out, *e.comment);
    return out;
}

inline std::optional<event> decode_event(std::string_view in)
{
    event e;
    while (!in.empty()) {
        const char tag = in.front();
        in.remove_prefix(1);
        auto piece = take_piece(in);
        if (!piece)
            return std::nullopt;
        switch (tag) {
        case 't': e.event = *piece; break;
        case 'd': e.data = std::string(*piece); break;
        case 'c': e.comment = std::string(*piece); break;
        case 'r': {
            long long ms = 0;
            if (std::from_chars(piece->data(), piece->data() + piece->size(), ms).ec != std::errc{})
                return std::nullopt;
            e.retry = std::chrono::milliseconds(ms);
            break;
        }
        default: return std::nullopt;
        }
    }
    return e;
}

// XADD and PUBLISH in one command, so a publish costs one round trip and every node sees the
// bus in the streams' order. The bus message: <key piece><id piece><finished flag><event>.
inline constexpr std::string_view publish_script = R"(
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[2], 'f', ARGV[5])
redis.call('PUBLISH', ARGV[3], #ARGV[4] .. ':' .. ARGV[4] .. #id .. ':' .. id .. ARGV[5] .. ARGV[2])
return id)";

} // namespace detail

/// One node of a cluster: a local basic_registry fed by Redis.
///
/// async_send() and async_finish() append the event to the key's stream and publish it on the
/// bus in one round trip; every node (this one too) delivers it from the bus to its own
/// connections, with the stream entry id as the event's id: one order, unique across nodes
/// and restarts. async_attach() resumes a client from its Last-Event-ID on any node: what the
/// node's own history lacks (it was down, or joined later) comes from the stream. When the bus
/// link drops, the node catches up from the streams once it is back, so its clients see no
/// gap; when a stream no longer holds what a node missed, the key's connections are completed
/// and resume with attach_result::gap set.
///
/// The node runs on one executor (a strand if several threads run its context): every member
/// function may be called from any thread; handlers run on that executor. Without
/// last_event_id, replay::undelivered is served as replay::all (the streams do not record
/// what a connection wrote).
template <class Emitter = emitter>
class basic_node : public std::enable_shared_from_this<basic_node<Emitter>> {
    struct pass_key {};

public:
    using registry_type = basic_registry<std::string, Emitter>;
    using emitter_ptr = std::shared_ptr<Emitter>;
    using executor_type = asio::any_io_executor;

    /// A node on `ex`; it connects at once. `local` bounds this node's own copy of each key's
    /// history (at least one event is kept: it marks what the node has delivered).
    static std::shared_ptr<basic_node> create(executor_type ex, cluster_options options, history_options local = {})
    {
        local.max_events = std::max<std::size_t>(local.max_events, 1);
        auto n = std::make_shared<basic_node>(pass_key{}, ex, std::move(options), std::move(local));
        std::weak_ptr<basic_node> w = n;
        connection::options link;
        link.server = n->options_.server;
        link.reconnect_delay = n->options_.reconnect_delay;
        link.max_reconnect_delay = n->options_.max_reconnect_delay;
        n->commands_ = connection::create(ex, link);
        link.on_connect = [w] {
            if (auto s = w.lock())
                s->bus_up();
        };
        n->bus_ = subscriber::create(ex, std::move(link));
        // On the executor: the links already run there, and a subscriber is not thread-safe.
        asio::dispatch(ex, [n, w] {
            n->bus_->subscribe(n->options_.prefix + "bus", [w](std::string_view, std::string_view payload) {
                if (auto s = w.lock())
                    s->on_bus(payload);
            });
        });
        return n;
    }

    basic_node(pass_key, executor_type ex, cluster_options options, history_options local)
        : ex_(std::move(ex)), options_(std::move(options)), local_(std::move(local))
    {
    }

    basic_node(const basic_node&) = delete;
    basic_node& operator=(const basic_node&) = delete;

    executor_type get_executor() const noexcept { return ex_; }

    /// This node's connections and its copy of the history. Send through the node, not here:
    /// an event sent to the local registry alone reaches only this node.
    registry_type& local() noexcept { return local_; }

    /// Whether the bus is subscribed: events published now reach this node.
    bool is_ready() const noexcept { return bus_ready_.load(std::memory_order_acquire); }

    /// Appends `e` to `key`'s stream and publishes it to every node; completes with
    /// (error_code, the event's id). `e.id` is replaced by the stream's. An invalid event
    /// completes with its validate() error; a Redis failure (not_connected while the link is
    /// down) with its own: the caller decides whether to retry.
    template <class CompletionToken>
    auto async_send(std::string key, event e, CompletionToken&& token)
    {
        return publish(std::move(key), std::move(e), false, std::forward<CompletionToken>(token));
    }

    /// As async_send(), then each node finishes `key` (basic_registry::finish()).
    template <class CompletionToken>
    auto async_finish(std::string key, event e, CompletionToken&& token)
    {
        return publish(std::move(key), std::move(e), true, std::forward<CompletionToken>(token));
    }

    /// Attaches `em` under `key` on this node, resuming from options.last_event_id (a stream
    /// id seen on any node) or replaying the key's shared history (replay::all), then live
    /// events; completes with (error_code, attach_result). A Redis failure completes with its
    /// error and nothing attached.
    template <class CompletionToken>
    auto async_attach(std::string key, emitter_ptr em, attach_options options, CompletionToken&& token)
    {
        return asio::async_initiate<CompletionToken, void(std::error_code, attach_result)>(
            [self = this->shared_from_this()](auto handler, std::string key, emitter_ptr em, attach_options options) {
                asio::dispatch(self->ex_, [self, handler = std::move(handler), key = std::move(key),
                                           em = std::move(em), options = std::move(options)]() mutable {
                    self->attach(std::move(key), std::move(em), std::move(options), std::move(handler));
                });
            },
            token, std::move(key), std::move(em), std::move(options));
    }

    /// Closes the Redis links and completes this node's connections.
    void close()
    {
        asio::dispatch(ex_, [self = this->shared_from_this()] {
            self->bus_->close();
            self->commands_->close();
            self->local_.complete_all();
        });
    }

private:
    struct message {
        std::string key;
        std::string id;
        stream_id sid;
        bool finished = false;
        event e;
    };

    std::string stream_key(std::string_view key) const
    {
        std::string k = options_.prefix;
        k += '{';
        k += key;
        k += '}';
        return k;
    }

    template <class CompletionToken>
    auto publish(std::string key, event e, bool finished, CompletionToken&& token)
    {
        return asio::async_initiate<CompletionToken, void(std::error_code, std::string)>(
            [self = this->shared_from_this(), finished](auto handler, std::string key, event e) {
                e.id.reset();
                if (auto ec = validate(e)) {
                    asio::post(self->ex_, [handler = std::move(handler), ec]() mutable { handler(ec, std::string()); });
                    return;
                }
                asio::dispatch(self->ex_, [self, finished, handler = std::move(handler), key = std::move(key),
                                           e = std::move(e)]() mutable {
                    const auto stream = self->stream_key(key);
                    const auto encoded = detail::encode_event(e);
                    const auto maxlen = std::to_string(self->options_.stream_max_events);
                    const auto bus = self->options_.prefix + "bus";
                    self->commands_->async_command(
                        {"EVAL", detail::publish_script, "1", stream, maxlen, encoded, bus, key, finished ? "1" : "0"},
                        [handler = std::move(handler)](std::error_code ec, reply r) mutable {
                            if (!ec && !r.is_string())
                                ec = errc::protocol_error;
                            handler(ec, ec ? std::string() : std::move(r.str()));
                        });
                });
            },
            token, std::move(key), std::move(e));
    }

    // On the executor from here on.

    static std::optional<message> decode_bus(std::string_view payload)
    {
        message m;
        auto key = detail::take_piece(payload);
        auto id = detail::take_piece(payload);
        if (!key || !id || payload.empty())
            return std::nullopt;
        auto sid = stream_id::parse(*id);
        m.finished = payload.front() == '1';
        payload.remove_prefix(1);
        auto e = detail::decode_event(payload);
        if (!sid || !e)
            return std::nullopt;
        m.key = *key;
        m.id = *id;
        m.sid = *sid;
        m.e = std::move(*e);
        return m;
    }

    // An XRANGE reply: [[id, [field, value, ...]], ...].
    std::vector<message> decode_range(std::string_view key, const reply& r) const
    {
        std::vector<message> out;
        if (!r.is_array())
            return out;
        for (const auto& entry : r.elements()) {
            if (!entry.is_array() || entry.size() != 2 || !entry[0].is_string() || !entry[1].is_array())
                continue;
            message m;
            m.key = key;
            m.id = entry[0].str();
            std::optional<event> e;
            const auto& fields = entry[1].elements();
            for (std::size_t i = 0; i + 1 < fields.size(); i += 2) {
                if (fields[i].str() == "e")
                    e = detail::decode_event(fields[i + 1].str());
                else if (fields[i].str() == "f")
                    m.finished = fields[i + 1].str() == "1";
            }
            auto sid = stream_id::parse(m.id);
            if (!sid || !e)
                continue;
            m.sid = *sid;
            m.e = std::move(*e);
            out.push_back(std::move(m));
        }
        return out;
    }

    void on_bus(std::string_view payload)
    {
        auto m = decode_bus(payload);
        if (!m)
            return;  // not ours: another application on the same channel
        if (catching_up_ > 0 || fetching_.contains(m->key))
            held_.push_back(std::move(*m));
        else
            apply(std::move(*m));
    }

    // Delivers what this node has not delivered yet, in the streams' order.
    void apply(message m)
    {
        auto [it, fresh] = seen_.try_emplace(m.key, m.sid);
        if (!fresh && m.sid <= it->second)
            return;
        it->second = m.sid;
        if (fresh && seen_.size() > 2 * local_.key_count() + 1024)
            forget_unheld_keys();
        m.e.id = std::move(m.id);
        if (m.finished)
            local_.finish(m.key, std::move(m.e));
        else
            local_.send(m.key, std::move(m.e));
    }

    // Applies, in order, what was held while a fetch or a catch-up was under way.
    void release_held()
    {
        if (catching_up_ > 0)
            return;
        std::vector<message> keep;
        for (auto& m : held_) {
            if (fetching_.contains(m.key))
                keep.push_back(std::move(m));
            else
                apply(std::move(m));
        }
        held_ = std::move(keep);
    }

    // The bus is (re)subscribed. After the first time, what was published while it was down
    // is read back from the streams; the bus is held meanwhile.
    void bus_up()
    {
        if (!bus_ready_.load(std::memory_order_relaxed)) {
            bus_ready_.store(true, std::memory_order_release);
            return;
        }
        forget_unheld_keys();
        for (const auto& [key, last] : seen_) {
            ++catching_up_;
            const auto from = std::to_string(last.ms) + "-" + std::to_string(last.seq);
            commands_->async_command(
                {"XRANGE", stream_key(key), from, "+"},
                [self = this->shared_from_this(), key = key, last = last](std::error_code ec, reply r) {
                    auto missed = self->decode_range(key, r);
                    if (ec || missed.empty() || missed.front().sid != last) {
                        // The stream no longer holds where this node stopped: its clients
                        // resume, and learn of the gap.
                        self->local_.close(key);
                    }
                    for (auto& m : missed)
                        self->apply(std::move(m));
                    --self->catching_up_;
                    self->release_held();
                });
        }
    }

    // Forgets the keys the local registry no longer holds (their clients resume from the
    // streams), so that what the node remembers follows what its registry does.
    void forget_unheld_keys()
    {
        std::unordered_map<std::string, stream_id> kept;
        for (const auto& k : local_.keys())
            if (auto it = seen_.find(k); it != seen_.end())
                kept.emplace(k, it->second);
        seen_ = std::move(kept);
    }

    template <class Handler>
    void attach(std::string key, emitter_ptr em, attach_options options, Handler handler)
    {
        // Live events only, or a resume this node's own history covers: no stream to read.
        if (options.last_event_id ? is_retained_locally(key, *options.last_event_id)
                                  : options.otherwise == replay::none) {
            complete(std::move(handler), {}, local_.attach(key, std::move(em), options));
            return;
        }
        // The stream holds what this node does not: read it, hold the bus for this key
        // meanwhile, then attach with it as the prefix of the local replay.
        ++fetching_[key];
        const auto count = std::to_string(options_.stream_max_events * 2);
        commands_->async_command(
            {"XRANGE", stream_key(key), "-", "+", "COUNT", count},
            [self = this->shared_from_this(), key, em = std::move(em), options = std::move(options),
             handler = std::move(handler)](std::error_code ec, reply r) mutable {
                if (--self->fetching_[key] == 0)
                    self->fetching_.erase(key);
                if (ec) {
                    self->release_held();
                    self->complete(std::move(handler), ec, {});
                    return;
                }
                auto shared = self->decode_range(key, r);
                auto result = self->attach_from(key, std::move(em), std::move(options), std::move(shared));
                self->release_held();
                self->complete(std::move(handler), {}, result);
            });
    }

    bool is_retained_locally(const std::string& key, std::string_view id) const
    {
        const auto first = local_.first_id(key);
        const auto last = local_.last_id(key);
        const auto sid = stream_id::parse(id);
        if (!first || !last || !sid)
            return false;
        const auto f = stream_id::parse(*first);
        const auto l = stream_id::parse(*last);
        return f && l && *f <= *sid && *sid <= *l;
    }

    attach_result attach_from(const std::string& key, emitter_ptr em, attach_options options,
                              std::vector<message> shared)
    {
        // First the local copy catches up with the stream (the bus may be behind the read).
        const auto seen = seen_.find(key);
        if (seen != seen_.end()) {
            for (auto& m : shared)
                if (m.sid > seen->second)
                    apply(m);
        } else if (!shared.empty()) {
            seen_.emplace(key, shared.back().sid);  // delivered to no one here: the prefix below
        }
        // Where the client resumes in the stream.
        std::size_t start = 0;
        bool resumed = false;
        if (options.last_event_id) {
            const auto want = stream_id::parse(*options.last_event_id);
            for (std::size_t i = 0; want && i < shared.size(); ++i)
                if (shared[i].sid == *want) {
                    start = i + 1;
                    resumed = true;
                    break;
                }
            if (resumed && is_retained_locally(key, *options.last_event_id))
                return local_.attach(key, std::move(em), options);
        }
        const bool gap = options.last_event_id && !resumed;
        // The prefix: the stream's events after that point that the local copy does not hold.
        const auto first = local_.first_id(key);
        const auto local_first = first ? stream_id::parse(*first) : std::nullopt;
        attach_options local{.otherwise = replay::all};
        if (gap && options.on_gap) {
            std::error_code ec;
            if (auto f = make_frame(*options.on_gap, ec))
                local.prefix.push_back(std::move(f));
        }
        std::size_t prefixed = 0;
        for (std::size_t i = start; i < shared.size(); ++i) {
            if (local_first && shared[i].sid >= *local_first)
                break;
            shared[i].e.id = shared[i].id;
            std::error_code ec;
            if (auto f = make_frame(shared[i].e, ec)) {
                local.prefix.push_back(std::move(f));
                ++prefixed;
            }
        }
        auto result = local_.attach(key, std::move(em), local);
        result.replayed += prefixed;
        result.resumed = resumed;
        result.gap = gap || result.gap;
        return result;
    }

    template <class Handler>
    void complete(Handler handler, std::error_code ec, attach_result r)
    {
        asio::post(ex_, [handler = std::move(handler), ec, r]() mutable { handler(ec, r); });
    }

    executor_type ex_;
    cluster_options options_;
    registry_type local_;
    std::shared_ptr<connection> commands_;
    std::shared_ptr<subscriber> bus_;
    std::unordered_map<std::string, stream_id> seen_;  // per key, the last entry delivered here
    std::unordered_map<std::string, int> fetching_;   // keys whose stream is being read
    std::vector<message> held_;                       // bus messages that wait for those reads
    int catching_up_ = 0;
    std::atomic<bool> bus_ready_{false};  // read from any thread
};

using node = basic_node<>;

} // namespace ssepp::redis

#endif
