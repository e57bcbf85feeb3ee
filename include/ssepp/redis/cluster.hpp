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

#include <ssepp/detail/asio.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <charconv>
#include <compare>
#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace ssepp::redis {

/// Which nodes an event goes to (cluster_options::delivery).
enum class delivery { broadcast, targeted };

struct cluster_options {
    endpoint server{};
    /// Names in Redis: the stream of key K is "<prefix>{K}" (the braces make K the hash tag,
    /// so that Redis Cluster shards by key), the bus channel "<prefix>bus".
    std::string prefix = "ssepp:";
    /// Each stream keeps about this many entries (XADD MAXLEN ~): the shared history.
    std::size_t stream_max_events = 1024;
    /// A key's stream expires this long after the key's last send, and the mark of what its
    /// connections wrote (replay::undelivered) this long after a connection last raised it,
    /// so that keys no one uses leave Redis; 0 keeps them.
    std::chrono::milliseconds stream_ttl = std::chrono::hours(24);
    /// broadcast: every event goes to every node, which delivers it to its connections of the
    /// key, if any. targeted: a node announces in Redis the keys it holds connections for (a
    /// presence entry with a TTL, refreshed), and an event goes only to the nodes that hold
    /// its key. Either way a node keeps a copy of a key's history only while it holds a
    /// connection of the key. Every node of a cluster uses the same.
    redis::delivery delivery = redis::delivery::broadcast;
    /// targeted: a node's presence under a key lapses this long after its last refresh (every
    /// third of it), so that a node that died stops being sent to. Every third of it, too, a
    /// node lets go of the keys it no longer holds connections for.
    std::chrono::milliseconds presence_ttl = std::chrono::seconds(30);
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
// bus in the streams' order. The id is taken from one order over every key (the hash
// KEYS[2]: the last "<ms>-<n>" given out, ms from the server's clock, never going back), so
// that ids are unique and ordered across keys, nodes and restarts: a connection under
// several keys resumes from one Last-Event-ID. The bus message:
// <key piece><id piece><finished flag><event>.
inline constexpr std::string_view publish_script = R"(
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ms = now
local last = tonumber(redis.call('HGET', KEYS[2], 'ms') or 0)
local n = 0
if ms > last then
  redis.call('HSET', KEYS[2], 'ms', ms, 'n', 0)
else
  ms = last
  n = redis.call('HINCRBY', KEYS[2], 'n', 1)
end
local id = ms .. '-' .. n  -- ms has 13 digits: Lua writes it whole
local added = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], id, 'e', ARGV[2], 'f', ARGV[5])
if type(added) == 'table' and added.err then
  -- The stream is ahead of the order (the order hash was lost): continue after the stream.
  local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1][1]
  local tm, tn = string.match(top, '^(%d+)-(%d+)$')
  ms, n = tonumber(tm), tonumber(tn) + 1
  redis.call('HSET', KEYS[2], 'ms', tm, 'n', n)
  id = tm .. '-' .. n
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], id, 'e', ARGV[2], 'f', ARGV[5])
end
if ARGV[6] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[6]) end
local msg = #ARGV[4] .. ':' .. ARGV[4] .. #id .. ':' .. id .. ARGV[5] .. ARGV[2]
if ARGV[7] == '' then
  redis.call('PUBLISH', ARGV[3], msg)
else
  -- Targeted: to each node present under the key (KEYS[3]: node -> lapse time), dropping
  -- the lapsed.
  local nodes = redis.call('HGETALL', KEYS[3])
  for i = 1, #nodes, 2 do
    if tonumber(nodes[i + 1]) > now then
      redis.call('PUBLISH', ARGV[7] .. nodes[i], msg)
    else
      redis.call('HDEL', KEYS[3], nodes[i])
    end
  end
end
return id)";

// A node's presence under a key (targeted delivery): KEYS[1] node -> lapse time (the
// server's clock), the hash itself expiring when no node refreshes it.
inline constexpr std::string_view presence_script = R"(
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], string.format('%.0f', now + tonumber(ARGV[2])))
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[2]))
return 1)";

// Raises a key's delivered mark (the last id one of its connections wrote) to ARGV[1],
// never lowers it: nodes record what their connections wrote as those close.
inline constexpr std::string_view mark_script = R"(
local cur = redis.call('GET', KEYS[1])
if cur then
  local cm, cn = string.match(cur, '^(%d+)-(%d+)$')
  local nm, nn = string.match(ARGV[1], '^(%d+)-(%d+)$')
  if cm and (tonumber(cm) > tonumber(nm) or (tonumber(cm) == tonumber(nm) and tonumber(cn) >= tonumber(nn))) then
    return 0
  end
end
if ARGV[2] ~= '0' then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) else redis.call('SET', KEYS[1], ARGV[1]) end
return 1)";

} // namespace detail

/// One node of a cluster: a local basic_registry fed by Redis.
///
/// async_send() and async_finish() append the event to the key's stream and publish it on the
/// bus in one round trip; every node (this one too) delivers it from the bus to its own
/// connections, with the stream entry id as the event's id. Ids follow one order over every
/// key, unique across nodes and restarts, so async_attach() resumes a client from its
/// Last-Event-ID on any node, under one key or several: what the node's own history lacks (it
/// was down, or joined later) comes from the streams. replay::undelivered works across nodes
/// too: as a connection closes, its node raises the key's delivered mark in Redis to what it
/// wrote. When the bus link drops, the node catches up from the streams once it is back, so
/// its clients see no gap; when a stream no longer holds what a node missed, the key's
/// connections are completed and resume with attach_result::gap set.
///
/// The node runs on one executor (a strand if several threads run its context): every member
/// function may be called from any thread; handlers run on that executor.
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
        auto commands = link;
        commands.on_connect = [w] {
            if (auto s = w.lock())
                s->commands_up();
        };
        link.on_connect = [w] {
            if (auto s = w.lock())
                s->bus_up();
        };
        link.on_disconnect = [w](error_code) {
            if (auto s = w.lock())
                s->bus_ready_.store(false, std::memory_order_release);
        };
        // The links are made on the executor, where their hooks run: a hook then always finds
        // them (and a subscriber is not thread-safe). What is asked of the node meanwhile is
        // dispatched there too, so it comes after.
        asio::dispatch(ex, [n, w, commands = std::move(commands), link = std::move(link)]() mutable {
            n->commands_ = connection::create(n->ex_, std::move(commands));
            n->bus_ = subscriber::create(n->ex_, std::move(link));
            const auto deliver = [w](std::string_view, std::string_view payload) {
                if (auto s = w.lock())
                    s->on_bus(payload);
            };
            n->bus_->subscribe(n->options_.prefix + "bus", deliver);
            if (n->targeted())
                n->bus_->subscribe(n->options_.prefix + "node:" + n->id_, deliver);
            n->refresh_later();
        });
        return n;
    }

    basic_node(pass_key, executor_type ex, cluster_options options, history_options local)
        : ex_(std::move(ex)), options_(std::move(options)), local_(std::move(local)), refresh_(ex_),
          id_(random_name())
    {
    }

    basic_node(const basic_node&) = delete;
    basic_node& operator=(const basic_node&) = delete;

    executor_type get_executor() const noexcept { return ex_; }

    /// This node's connections and its copy of the history. Send through the node, not here:
    /// an event sent to the local registry alone reaches only this node.
    registry_type& local() noexcept { return local_; }

    /// Whether the bus is subscribed (false while its link is down): events published now
    /// reach this node.
    bool is_ready() const noexcept { return bus_ready_.load(std::memory_order_acquire); }

    /// This node's name in Redis (targeted delivery: its presence entries and channel).
    const std::string& id() const noexcept { return id_; }

    /// The Redis key of `key`'s stream, "<prefix>{key}": for an application that reads it
    /// itself (to learn, after a lost reply, whether a send was stored).
    std::string stream_key(std::string_view key) const
    {
        std::string k = options_.prefix;
        k += '{';
        k += key;
        k += '}';
        return k;
    }

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

    /// Attaches `em` under `key` on this node; see the other overload.
    template <class CompletionToken>
    auto async_attach(std::string key, emitter_ptr em, attach_options options, CompletionToken&& token)
    {
        return async_attach(std::vector<std::string>{std::move(key)}, std::move(em), std::move(options),
                            std::forward<CompletionToken>(token));
    }

    /// Attaches `em` under every key of `keys` on this node and completes with
    /// (error_code, attach_result). It resumes from options.last_event_id (an id seen on any
    /// node: ids follow one order over every key), or replays the keys' shared histories
    /// (replay::all), or what no connection of each key wrote yet (replay::undelivered: the
    /// nodes record in Redis what their connections wrote as those close), then live events.
    /// What this node's own copy lacks is read from the streams. A Redis failure completes with
    /// its error and nothing attached, as does errc::too_many_connections when the local
    /// registry's connection_limits (local().set_limits()) refuse it (`em` not started).
    template <class CompletionToken>
    auto async_attach(std::vector<std::string> keys, emitter_ptr em, attach_options options, CompletionToken&& token)
    {
        return asio::async_initiate<CompletionToken, void(error_code, attach_result)>(
            [self = this->shared_from_this()](auto handler, std::vector<std::string> keys, emitter_ptr em,
                                              attach_options options) {
                asio::dispatch(self->ex_, [self, handler = std::move(handler), keys = std::move(keys),
                                           em = std::move(em), options = std::move(options)]() mutable {
                    self->attach(std::move(keys), std::move(em), std::move(options), std::move(handler));
                });
            },
            token, std::move(keys), std::move(em), std::move(options));
    }

    /// Closes the Redis links and completes this node's connections.
    void close()
    {
        asio::dispatch(ex_, [self = this->shared_from_this()] {
            self->refresh_.cancel();
            self->closed_ = true;
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

    template <class CompletionToken>
    auto publish(std::string key, event e, bool finished, CompletionToken&& token)
    {
        return asio::async_initiate<CompletionToken, void(error_code, std::string)>(
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
                    const auto order = self->options_.prefix + "order";
                    const auto ttl = std::to_string(self->options_.stream_ttl.count());
                    const auto nodes = self->presence_key(key);
                    const auto to_nodes = self->targeted() ? self->options_.prefix + "node:" : std::string();
                    self->call_script(
                        script::publish, {"3", stream, order, nodes, maxlen, encoded, bus, key, finished ? "1" : "0",
                                          ttl, to_nodes},
                        [handler = std::move(handler)](error_code ec, reply r) mutable {
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
        if (!present_.contains(m->key) && !fetching_.contains(m->key))
            return;  // no connection here: the node's copy of the key is filled from the stream when one comes
        if (holding())
            held_.push_back(std::move(*m));
        else
            apply(std::move(*m));
    }

    // Delivers what this node has not delivered yet, in the streams' order.
    void apply(message m)
    {
        // seen_ follows present_: the sweep that lets a key go forgets it (refresh()).
        auto [it, fresh] = seen_.try_emplace(m.key, m.sid);
        if (!fresh && m.sid <= it->second)
            return;
        it->second = m.sid;
        m.e.id = std::move(m.id);
        error_code ignored;  // the stream's own checks passed; a finished key stays finished
        if (m.finished)
            local_.finish(m.key, std::move(m.e), ignored);
        else
            local_.send(m.key, std::move(m.e), ignored);
    }

    // While a read of the streams is under way (an attach's, a catch-up's, or one waiting for
    // the commands link), the bus is held, whatever the key: what the read brings may come
    // before what the bus brings meanwhile, and a connection under several keys must get
    // them in one order.
    bool holding() const noexcept { return reads_ > 0 || !retry_.empty(); }

    // Once no read is under way: what catch-ups read and what the bus held, in one order.
    void settle()
    {
        if (holding())
            return;
        auto all = std::exchange(batch_, {});
        all.insert(all.end(), std::make_move_iterator(held_.begin()), std::make_move_iterator(held_.end()));
        held_.clear();
        std::stable_sort(all.begin(), all.end(), [](const auto& a, const auto& b) { return a.sid < b.sid; });
        for (auto& m : all)
            if (present_.contains(m.key) || fetching_.contains(m.key))
                apply(std::move(m));
    }

    // The bus is (re)subscribed: what was published while it was not is read back from the
    // streams (the first time too: an attach may have completed before it).
    void bus_up()
    {
        bus_ready_.store(true, std::memory_order_release);
        // Its presence may have lapsed while it was away: announced again before the reads.
        if (targeted())
            for (const auto& k : present_)
                announce(k, [](error_code) {});
        catch_up();
    }

    // Reads back from the streams what was published after what this node delivered, for
    // every key it holds connections for.
    void catch_up()
    {
        for (const auto& k : present_) {
            const auto it = seen_.find(k);
            catch_up(k, it == seen_.end() ? std::nullopt : std::optional<stream_id>(it->second));
        }
    }

    // One key's catch-up from `last` (none: the key had no event here yet, the whole stream
    // is new). A read that could not reach Redis (the bus link came back before the commands
    // link) is made again when the commands link is back, the bus held till then.
    void catch_up(const std::string& key, std::optional<stream_id> last)
    {
        ++reads_;
        const auto from = last ? std::to_string(last->ms) + "-" + std::to_string(last->seq) : std::string("-");
        commands_->async_command(
            {"XRANGE", stream_key(key), from, "+"},
            [w = this->weak_from_this(), key, last](error_code ec, reply r) {
                auto self = w.lock();
                if (!self)
                    return;
                --self->reads_;
                if (ec == errc::not_connected || ec == errc::connection_lost) {
                    if (self->commands_->is_connected())
                        self->catch_up(key, last);  // it came back meanwhile
                    else
                        self->retry_.emplace_back(key, last);
                    return;
                }
                auto missed = self->decode_range(key, r);
                if (last && (ec || missed.empty() || missed.front().sid != *last)) {
                    // The stream no longer holds where this node stopped: its copy starts
                    // again from the stream, and its clients resume and learn of the gap.
                    self->local_.erase(key);
                    self->seen_.erase(key);
                }
                self->batch_.insert(self->batch_.end(), std::make_move_iterator(missed.begin()),
                                    std::make_move_iterator(missed.end()));
                self->settle();
            });
    }

    // The commands link is (re)connected: its scripts first; then, if reads waited for it or
    // the node's presence may have lapsed meanwhile (it could not be refreshed), it announces
    // itself again and catches up.
    void commands_up()
    {
        load_scripts();
        if (!targeted() && retry_.empty())
            return;
        retry_.clear();
        if (targeted())
            for (const auto& k : present_)
                announce(k, [](error_code) {});
        catch_up();
        settle();
    }

    // The scripts go by their SHA1 (EVALSHA: Redis hashes an EVAL's whole text on every call)
    // once this link has loaded them; before, and after a NOSCRIPT (the server's script cache
    // was flushed), by their text.
    enum class script { publish, mark, presence };

    static std::string_view script_text(script which)
    {
        switch (which) {
        case script::publish: return detail::publish_script;
        case script::mark: return detail::mark_script;
        default: return detail::presence_script;
        }
    }

    template <class Handler>
    void call_script(script which, std::initializer_list<std::string_view> rest, Handler handler)
    {
        const auto& sha = shas_[static_cast<std::size_t>(which)];
        std::vector<std::string_view> args;
        args.reserve(rest.size() + 2);
        args.push_back(sha.empty() ? "EVAL" : "EVALSHA");
        args.push_back(sha.empty() ? script_text(which) : std::string_view(sha));
        args.insert(args.end(), rest.begin(), rest.end());
        commands_->async_command(std::span<const std::string_view>(args),
                                 [w = this->weak_from_this(), handler = std::move(handler)](error_code ec,
                                                                                                  reply r) mutable {
                                     auto self = w.lock();
                                     if (self && ec == errc::server_error && r.is_error()
                                         && r.str().starts_with("NOSCRIPT")) {
                                         self->shas_ = {};
                                         self->load_scripts();
                                     }
                                     handler(ec, std::move(r));
                                 });
    }

    // On each (re)connection of the commands link: its first commands, so the SHA1s hold for
    // everything after.
    void load_scripts()
    {
        for (auto which : {script::publish, script::mark, script::presence})
            commands_->async_command({"SCRIPT", "LOAD", script_text(which)},
                                     [w = this->weak_from_this(), which](error_code ec, reply r) {
                                         auto self = w.lock();
                                         if (self && !ec && r.is_string())
                                             self->shas_[static_cast<std::size_t>(which)] = r.str();
                                     });
    }

    bool targeted() const noexcept { return options_.delivery == delivery::targeted; }

    std::string presence_key(std::string_view key) const { return stream_key(key) + ":nodes"; }

    static std::string random_name()
    {
        std::random_device rd;
        auto bits = (std::uint64_t(rd()) << 32) ^ rd();
        std::string out(12, '0');
        for (auto& c : out) {
            c = "0123456789abcdefghijklmnopqrstuvwxyz"[bits % 36];
            bits /= 36;
        }
        return out;
    }

    // Targeted delivery: this node is present under `key` until presence_ttl from now.
    template <class Handler>
    void announce(const std::string& key, Handler done)
    {
        call_script(script::presence,
                    {"1", presence_key(key), id_, std::to_string(options_.presence_ttl.count())},
                                 [done = std::move(done)](error_code ec, reply) mutable { done(ec); });
    }

    void refresh_later()
    {
        refresh_.expires_after(std::max(options_.presence_ttl / 3, std::chrono::milliseconds(1)));
        refresh_.async_wait([w = this->weak_from_this()](error_code ec) {
            if (auto s = w.lock(); s && !ec && !s->closed_)
                s->refresh();
        });
    }

    // Leaves the keys this node no longer holds connections for (its copy of them goes: the
    // next connection's attach reads the stream), and, with targeted delivery, announces the
    // others again. After a refresh that failed, its presence may have lapsed and events gone
    // elsewhere: it catches up from the streams.
    void refresh()
    {
        for (auto it = present_.begin(); it != present_.end();) {
            if (local_.size(*it) == 0 && !fetching_.contains(*it)) {
                if (targeted())
                    commands_->async_command({"HDEL", presence_key(*it), id_}, [](error_code, reply) {});
                local_.erase(*it);
                seen_.erase(*it);
                it = present_.erase(it);
            } else {
                ++it;
            }
        }
        if (present_.empty() || !targeted()) {
            refresh_failed_ = false;
            refreshed_at_ = std::chrono::steady_clock::now();
            refresh_later();
            return;
        }
        auto failed = std::make_shared<bool>(false);
        std::size_t left = present_.size();
        const auto sent = std::chrono::steady_clock::now();
        // Late (the node stalled) or after failures, the presence may have lapsed: the bus is
        // held from the announce on, so that the catch-up comes before what the bus brings.
        const bool lapsed = refresh_failed_ || sent - refreshed_at_ > 2 * options_.presence_ttl / 3;
        if (lapsed)
            ++reads_;
        for (const auto& k : present_)
            announce(k, [w = this->weak_from_this(), failed, sent, lapsed, last = --left == 0](error_code ec) {
                *failed |= bool(ec);
                auto self = w.lock();
                if (!last || !self)
                    return;
                self->refresh_failed_ = *failed;
                if (!*failed) {
                    self->refreshed_at_ = sent;
                    if (lapsed)
                        self->catch_up();
                }
                if (lapsed) {
                    --self->reads_;
                    self->settle();
                }
                self->refresh_later();
            });
    }

    // What an attach read from Redis, per key.
    struct attach_read {
        std::vector<std::string> keys;
        std::vector<std::vector<message>> streams;
        std::vector<std::optional<stream_id>> marks;    // replay::undelivered: what was written
        std::vector<std::optional<stream_id>> trimmed;  // the first entry, when older ones were trimmed
        error_code ec;
    };

    std::string mark_key(std::string_view key) const { return stream_key(key) + ":delivered"; }

    template <class Handler>
    void attach(std::vector<std::string> keys, emitter_ptr em, attach_options options, Handler handler)
    {
        std::sort(keys.begin(), keys.end());
        keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
        // Live events only, or a resume this node's own history covers: no stream to read
        // (with targeted delivery, once the node is present under the keys).
        const bool present = std::all_of(keys.begin(), keys.end(), [this](const auto& k) {
            return present_.contains(k);
        });
        if (present && (options.last_event_id ? keys.size() == 1 && is_retained_locally(keys[0], *options.last_event_id)
                                              : options.otherwise == replay::none)) {
            error_code ec;  // the local registry's connection_limits
            auto result = local_.attach(keys, em, options, ec);
            if (!ec)
                watch(*em, keys);
            complete(std::move(handler), ec, result);
            return;
        }
        // Read each key's stream (and, for replay::undelivered, its mark) in one transaction:
        // one instant of the streams, so that the bus messages held meanwhile split cleanly
        // into those the reads hold and those that come after.
        auto read = std::make_shared<attach_read>();
        read->streams.resize(keys.size());
        read->marks.resize(keys.size());
        read->trimmed.resize(keys.size());
        const bool marks = !options.last_event_id && options.otherwise == replay::undelivered;
        read->keys = keys;
        ++reads_;
        for (const auto& k : keys) {
            ++fetching_[k];
            // Present first, then read: an event published after the read reaches this node.
            if (targeted() && !present_.contains(k))
                announce(k, [read](error_code ec) { read->ec = read->ec ? read->ec : ec; });
        }
        const auto queued = [](error_code, reply) {};  // the replies come with EXEC's
        commands_->async_command({"MULTI"}, queued);
        for (const auto& k : keys) {
            if (marks)
                commands_->async_command({"GET", mark_key(k)}, queued);
            commands_->async_command({"XINFO", "STREAM", stream_key(k)}, queued);  // an error when there is none
            // The whole stream (XADD MAXLEN ~ bounds it): its newest entries are the ones needed.
            commands_->async_command({"XRANGE", stream_key(k), "-", "+"}, queued);
        }
        commands_->async_command(
            {"EXEC"}, [w = this->weak_from_this(), read, marks, em = std::move(em), options = std::move(options),
                       handler = std::move(handler)](error_code ec, reply r) mutable {
                auto self = w.lock();
                if (!self)
                    return;  // the node is gone, and its connections with it
                for (const auto& k : read->keys)
                    if (--self->fetching_[k] == 0)
                        self->fetching_.erase(k);
                --self->reads_;
                const std::size_t per_key = marks ? 3 : 2;
                if (!ec && (!r.is_array() || r.size() != per_key * read->keys.size()))
                    ec = errc::protocol_error;
                if (auto err = read->ec ? read->ec : ec) {
                    self->settle();
                    self->complete(std::move(handler), err, {});
                    return;
                }
                for (std::size_t i = 0, at = 0; i < read->keys.size(); ++i) {
                    if (marks && r[at].is_string())
                        read->marks[i] = stream_id::parse(r[at].str());
                    at += marks ? 1 : 0;
                    read->trimmed[i] = trimmed_before(r[at++]);
                    read->streams[i] = self->decode_range(read->keys[i], r[at++]);
                }
                // ec is clear here; it takes the local registry's refusal, if any.
                auto result = self->attach_read_done(*read, em, options, ec);
                if (!ec)
                    self->watch(*em, read->keys);
                self->complete(std::move(handler), ec, result);
                self->settle();
            });
    }

    // The reads are in: this node's copy catches up with them, in one order with what the
    // bus held from before their instant; then the attach; what the bus held from after it
    // follows (settle()), live to the new connection too.
    attach_result attach_read_done(attach_read& read, const emitter_ptr& em, const attach_options& options, error_code& ec)
    {
        present_.insert(read.keys.begin(), read.keys.end());
        // A key the registry forgot (a finished key after its linger) is copied afresh, its
        // finish included, so that a client attaching to it is completed.
        for (const auto& k : read.keys)
            if (!local_.contains(k))
                seen_.erase(k);
        std::optional<stream_id> instant;
        std::vector<message> now;
        for (const auto& stream : read.streams)
            for (const auto& m : stream) {
                instant = instant ? std::max(*instant, m.sid) : m.sid;
                now.push_back(m);
            }
        std::vector<message> later;
        for (auto& m : held_)
            (instant && m.sid <= *instant ? now : later).push_back(std::move(m));
        held_ = std::move(later);
        std::stable_sort(now.begin(), now.end(), [](const auto& a, const auto& b) { return a.sid < b.sid; });
        for (auto& m : now)
            if (present_.contains(m.key) || fetching_.contains(m.key))
                apply(std::move(m));
        return attach_from(read, em, options, ec);
    }

    // From XINFO STREAM: when the stream has trimmed entries (entries-added is more than its
    // length), its first entry's id; a reader from before it may have lost something.
    static std::optional<stream_id> trimmed_before(const reply& r)
    {
        if (!r.is_array())
            return std::nullopt;
        std::optional<long long> length, added;
        std::optional<stream_id> first;
        const auto& f = r.elements();
        for (std::size_t i = 0; i + 1 < f.size(); i += 2) {
            if (!f[i].is_string())
                continue;
            const auto& name = f[i].str();
            if (name == "length" && f[i + 1].is_integer())
                length = f[i + 1].integer();
            else if (name == "entries-added" && f[i + 1].is_integer())
                added = f[i + 1].integer();
            else if (name == "first-entry" && f[i + 1].is_array() && f[i + 1].size() > 0 && f[i + 1][0].is_string())
                first = stream_id::parse(f[i + 1][0].str());
        }
        if (length && added && *added > *length)
            return first ? first : stream_id{~std::uint64_t(0), 0};
        return std::nullopt;
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

    std::optional<stream_id> local_first(const std::string& key) const
    {
        const auto first = local_.first_id(key);
        return first ? stream_id::parse(*first) : std::nullopt;
    }

    attach_result attach_from(attach_read& read, const emitter_ptr& em, const attach_options& options, error_code& ec)
    {
        const auto& keys = read.keys;
        // This node's copy has caught up with the reads (attach_read_done()).
        std::vector<const message*> fetched;
        for (const auto& stream : read.streams)
            for (const auto& m : stream)
                fetched.push_back(&m);

        // Live events only, or resuming under one key whose copy here now covers the point:
        // the local registry does it.
        if (options.last_event_id ? keys.size() == 1 && is_retained_locally(keys[0], *options.last_event_id)
                                  : options.otherwise == replay::none)
            return local_.attach(keys, em, options, ec);

        // Where the client starts, per key, and whether what it needs is still there (a start
        // before a trimmed stream's first entry may have lost something).
        const auto want = options.last_event_id ? stream_id::parse(*options.last_event_id) : std::nullopt;
        bool resumed = false;
        for (const auto* m : fetched)
            resumed |= want && m->sid == *want;
        bool gap = options.last_event_id && !resumed;  // unknown, foreign or trimmed: all follows
        std::vector<std::optional<stream_id>> from(keys.size());
        for (std::size_t i = 0; i < keys.size(); ++i) {
            if (resumed)
                from[i] = want;
            else if (!options.last_event_id && options.otherwise == replay::undelivered)
                from[i] = read.marks[i];
            else
                continue;
            gap |= read.trimmed[i] && (!from[i] || *read.trimmed[i] > *from[i]);
        }

        attach_options local{.otherwise = replay::all};
        if (gap && options.on_gap) {
            error_code ec;
            if (auto f = make_frame(*options.on_gap, ec))
                local.prefix.push_back(std::move(f));
        }
        // Resuming under several keys: everything after the point comes from the streams, in
        // one order (this node's copies of the keys may hold older entries of one key after
        // newer ones of another), then live events.
        const bool all_from_streams = resumed && keys.size() > 1;
        if (all_from_streams)
            local.otherwise = replay::none;
        else if (!options.last_event_id && options.otherwise == replay::undelivered)
            local.otherwise = replay::undelivered;

        // The prefix: per key, the stream's entries after the start that this node's copy
        // does not hold (all of them, when resuming under several keys).
        std::vector<const message*> prefix;
        for (std::size_t i = 0; i < keys.size(); ++i) {
            const auto first = all_from_streams ? std::nullopt : local_first(keys[i]);
            if (local.otherwise == replay::undelivered && from[i] && first && *first <= *from[i]) {
                // This node holds the key from its mark on: the local watermark learns it.
                const auto through = *from[i];
                local_.mark_delivered(keys[i], [through](std::string_view id) {
                    const auto sid = stream_id::parse(id);
                    return sid && *sid <= through;
                });
                continue;
            }
            for (const auto& m : read.streams[i])
                if ((!from[i] || m.sid > *from[i]) && (!first || m.sid < *first))
                    prefix.push_back(&m);
        }
        std::sort(prefix.begin(), prefix.end(), [](auto* a, auto* b) { return a->sid < b->sid; });
        for (const auto* m : prefix) {
            auto e = m->e;
            e.id = m->id;
            error_code ec;
            if (auto f = make_frame(e, ec))
                local.prefix.push_back(std::move(f));
        }
        auto result = local_.attach(keys, em, local, ec);
        if (ec)
            return result;
        result.replayed += prefix.size();
        result.resumed = resumed;
        result.gap = gap || result.gap;
        return result;
    }

    // When `em` closes, what it wrote raises its keys' delivered marks in Redis, for the next
    // replay::undelivered on any node. (Its close handlers run in order: the registry's, which
    // counts what it wrote, was added first.)
    void watch(Emitter& em, const std::vector<std::string>& keys)
    {
        em.on_close([w = this->weak_from_this(), keys](close_reason, error_code) {
            auto self = w.lock();
            if (!self)
                return;
            // Read now (the registry is thread-safe): on the node's executor the key's copy
            // may be gone by then.
            std::vector<std::pair<std::string, std::string>> marks;
            for (const auto& k : keys)
                if (auto id = self->local_.delivered_id(k))
                    marks.emplace_back(self->mark_key(k), std::move(*id));
            asio::dispatch(self->ex_, [self, marks = std::move(marks)] {
                const auto ttl = std::to_string(self->options_.stream_ttl.count());
                for (const auto& [key, id] : marks)
                    self->call_script(script::mark, {"1", key, id, ttl}, [](error_code, reply) {});
            });
        });
    }

    template <class Handler>
    void complete(Handler handler, error_code ec, attach_result r)
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
    std::vector<message> held_;                       // bus messages that wait for reads under way
    std::vector<message> batch_;                      // what those reads brought
    int reads_ = 0;                                   // reads under way (see holding())
    std::atomic<bool> bus_ready_{false};  // read from any thread
    // The keys this node holds connections for (with targeted delivery: is present under in
    // Redis), its copy of each complete from their fetch on; the sweep that lets go of them
    // (and refreshes the presence).
    std::unordered_set<std::string> present_;
    asio::steady_timer refresh_;
    bool refresh_failed_ = false;
    std::chrono::steady_clock::time_point refreshed_at_ = std::chrono::steady_clock::now();
    bool closed_ = false;
    std::string id_;
    std::array<std::string, 3> shas_;  // the scripts' SHA1s, once loaded
    std::vector<std::pair<std::string, std::optional<stream_id>>> retry_;  // catch-ups that wait for the commands link
};

using node = basic_node<>;

} // namespace ssepp::redis

#endif
