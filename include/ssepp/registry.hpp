// ssepp/registry.hpp
// Live connections by key (user, transaction, topic), fan-out that formats each event once,
// and a bounded per-key history so that a client resuming with Last-Event-ID misses nothing.
// SPDX-License-Identifier: BSL-1.0
#ifndef SSEPP_REGISTRY_HPP
#define SSEPP_REGISTRY_HPP

#include <ssepp/emitter.hpp>
#include <ssepp/error.hpp>
#include <ssepp/event.hpp>
#include <ssepp/format.hpp>
#include <ssepp/frame.hpp>
#include <ssepp/history.hpp>
#include <ssepp/metrics.hpp>

#include <ssepp/detail/asio.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <concepts>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <system_error>
#include <unordered_map>
#include <utility>
#include <vector>

namespace ssepp {

/// What a connection that arrives without Last-Event-ID is sent from the history.
enum class replay {
    /// Everything retained: a late subscriber to a job's progress misses nothing.
    all,
    /// Only what no connection of the key has written yet: notifications for a user who was
    /// offline. An event counts as delivered once a connection of the key wrote it to its
    /// transport (queued to a connection that then failed, it is replayed again).
    undelivered,
    /// Nothing: live events only (a ticker).
    none,
};

struct attach_options {
    /// The id the client resumes from (see ssepp::last_event_id()); when set, every retained
    /// event after it is replayed, whatever `otherwise` says.
    std::optional<std::string> last_event_id{};
    replay otherwise = replay::all;
    /// Queued first whenever attach_result::gap is set (so the client can reset its state):
    /// before the whole retained history when `last_event_id` is not retained, before the
    /// replay otherwise. Dropped if invalid.
    std::optional<event> on_gap{};
    /// Frames queued before the replay, after on_gap, fed like the replay: the events of a
    /// shared store (another node's history) that this registry does not retain. Not
    /// counted in attach_result::replayed. A frame larger than the emitter's queue bound is
    /// left out, and attach_result::gap set.
    std::vector<shared_frame> prefix{};
};

struct attach_result {
    /// Events replayed from history: queued at once, or fed to the connection as it drains
    /// when they are more than its queue bound allows.
    std::size_t replayed = 0;
    /// last_event_id was found: the replay starts right after it.
    bool resumed = false;
    /// The client may have missed events: its last_event_id is no longer (or never was)
    /// retained, or events after it were evicted; under replay::undelivered, an event of one
    /// of its keys was evicted before any connection of that key was sent it.
    bool gap = false;
    /// Every key was finished: the stream was completed after the replay.
    bool finished = false;
};

/// What send(), finish() and broadcast() did. Their errors, as every error of ssepp, come
/// through an `error_code&` argument or a system_error.
struct send_result {
    /// Live connections the event was queued to, or (with a hand-off executor) is being
    /// handed to (0 is fine: it is retained).
    std::size_t connections = 0;
    /// The event's id as sent: the application's own, or the one the registry assigned.
    std::string id{};
};

/// How many connections a registry takes (0: no limit). An attach() past a limit is refused
/// with errc::too_many_connections, before the stream starts, so that the application can
/// answer 503 with Retry-After instead (admits() tells it beforehand).
struct connection_limits {
    std::size_t max_connections = 0;
    std::size_t max_connections_per_key = 0;
};

/// Connections keyed by `Key`, each connection under any number of keys, each key with any
/// number of connections (a user with three tabs).
///
/// Every event sent gets a place in one registry-wide order, and an event without an id gets
/// an id from its position ("<epoch>-<position>", see history_options::id_epoch), so a
/// connection under several keys resumes from one Last-Event-ID: attach() replays, merged in
/// order from all its keys, every retained event after that one, then live ones follow, with
/// no gap and no duplicate while other threads publish. broadcast() reaches every connection
/// and is retained as if every connection shared one more key.
///
/// A replay larger than a connection's queue bound is fed to it as it drains, live events
/// queued behind it, so any retained history reaches any client; a connection that falls
/// further behind than its queue bound meanwhile meets its overflow policy.
///
/// Thread-safe. An event is formatted once, under the registry's lock (that fixes its place
/// in the order), and queued to each emitter without copying: by the sending thread, or, with
/// a hand-off executor, by that executor, which hands each connection everything sent since
/// its last hand-off as one frame (see the constructor).
///
/// Errors follow Asio: send(), broadcast() and finish() have an `error_code&` overload and
/// one that throws system_error.
///
/// @tparam Emitter a stream_emitter: basic_emitter<T>, or anything with its members.
template <class Key = std::string, stream_emitter Emitter = emitter>
class basic_registry {
public:
    using key_type = Key;
    using emitter_type = Emitter;
    using emitter_ptr = std::shared_ptr<Emitter>;

    /// What an operator watches, without the library logging: each hook is called after the
    /// registry's lock is released, on the thread of what happened (attach()'s caller; a
    /// closing connection's executor), with the keys of the connection.
    struct hooks {
        /// A connection was attached (and its replay queued).
        std::function<void(std::span<const Key>, const attach_result&)> on_attach;
        /// An attach whose client may have missed events (attach_result::gap).
        std::function<void(std::span<const Key>, const attach_result&)> on_gap;
        /// A connection left the registry: it ended for `reason` (and `ec`).
        std::function<void(std::span<const Key>, close_reason, error_code)> on_detach;
        /// A connection was closed for overflow (a slow consumer), before its on_detach.
        std::function<void(std::span<const Key>)> on_overflow;
        /// connection_limits refused an attach.
        std::function<void(std::span<const Key>)> on_refused;
    };

    /// @throws std::invalid_argument for an id_epoch with CR, LF or NUL.
    explicit basic_registry(history_options options = {})
        : state_(std::make_shared<state>(std::move(options)))
    {
    }

    /// A registry that hands events to connections on `hand_off` (usually the executor of the
    /// io_context the emitters run on) instead of on the sending thread. send() and broadcast()
    /// then cost the sender O(1) whatever the number of connections: they format and retain
    /// the event and return. One handler at a time on `hand_off` queues to each connection, in
    /// order, everything sent since the last hand-off, consecutive events of one key as one
    /// frame: the busier the connections, the larger the batches, as a fan-out server wants
    /// at saturation. Ids, order, history and resume are as without it; attach(), finish(),
    /// complete(), erase() and async_send() hand off what is pending first, on their caller's
    /// thread, so nothing they do overtakes an event sent before.
    /// @throws std::invalid_argument as the other constructor.
    explicit basic_registry(asio::any_io_executor hand_off, history_options options = {})
        : basic_registry(std::move(options))
    {
        state_->hand_off_ex = std::move(hand_off);
    }

    basic_registry(const basic_registry&) = delete;
    basic_registry& operator=(const basic_registry&) = delete;

    /// Completes every connection; they leave as they close. The connections may outlive the
    /// registry (their close handlers then find it gone and do nothing), but not their
    /// execution context: destroy the registry before the io_context its emitters use.
    ~basic_registry() { complete_all(); }

    /// Adds `em` under `key`; see the other overload.
    attach_result attach(const Key& key, emitter_ptr em, const attach_options& options = {})
    {
        return attach(std::span<const Key>(&key, 1), std::move(em), options);
    }

    attach_result attach(const Key& key, emitter_ptr em, const attach_options& options, error_code& ec)
    {
        return attach(std::span<const Key>(&key, 1), std::move(em), options, ec);
    }

    /// As the overload with `ec`; throws system_error where that one sets `ec`.
    attach_result attach(std::span<const Key> keys, emitter_ptr em, const attach_options& options = {})
    {
        error_code ec;
        auto result = attach(keys, std::move(em), options, ec);
        detail::throw_on_error(ec, "ssepp::basic_registry::attach");
        return result;
    }

    /// Adds `em` under every key of `keys` (a key given twice counts once), queues its replay
    /// (see attach_options), starts it, and from then on queues to it every event sent to one
    /// of its keys and every broadcast. It leaves the registry by itself when it closes.
    ///
    /// Without last_event_id, replay::undelivered replays, per key, the key's retained events
    /// after the last one a connection of that key wrote, and the retained broadcasts after
    /// the last one a connection of any of the keys wrote; `gap` is set when such an
    /// undelivered event of a key was already evicted. A key is remembered only while it has
    /// connections, a history or a lingering finish: a key with none is forgotten, and its
    /// next connection is replayed every retained broadcast (a duplicate rather than a loss).
    ///
    /// Errors: errc::too_many_connections when connection_limits refuse it: `em` is then
    /// neither started nor attached (abort() it, or answer on its transport's socket).
    /// @throws std::invalid_argument when `em` cannot queue an event of
    /// history_options::max_event_bytes (its max_queued_bytes() is smaller).
    attach_result attach(std::span<const Key> keys, emitter_ptr em, const attach_options& options, error_code& ec)
    {
        auto& s = *state_;
        if (em->max_queued_bytes() < s.options.max_event_bytes)
            throw std::invalid_argument("ssepp::basic_registry::attach: the emitter's max_queued_bytes is "
                                        "below history_options::max_event_bytes");
        ec = {};
        attach_result result;
        std::unique_lock lock(s.mtx);
        const auto h = s.hook_set;
        if (!s.admits_locked(keys)) {
            ++s.stats.connections_refused_total;
            ec = errc::too_many_connections;
            lock.unlock();
            if (h && h->on_refused)
                h->on_refused(keys);
            return result;
        }
        s.hand_off_locked();
        s.purge_locked();
        auto owned = std::make_unique<member>();
        auto* m = owned.get();
        m->em = std::move(em);
        // Allocate first: once the member is linked in below, nothing may throw.
        reserve_one(s.all);
        // channels[0] holds the broadcasts; the others are the member's keys, each once.
        std::vector<channel*> channels{&s.everyone};
        for (const auto& k : keys) {
            auto* c = &s.lookup_locked(k)->second;
            if (std::find(channels.begin(), channels.end(), c) != channels.end())
                continue;
            reserve_one(c->members);
            channels.push_back(c);
        }
        if (channels.size() > 2) {
            m->more = std::make_unique<typename member::channels>();
            m->more->reserve(channels.size() - 2);
        }
        if (s.options.max_age.count() > 0)
            for (auto* c : channels)
                c->history.expire(std::chrono::steady_clock::now(), s.options);

        // Per channel, the position after which retained events are replayed.
        std::vector<std::uint64_t> after(channels.size(), 0);
        if (options.last_event_id) {
            if (auto seq = find_locked(channels, *options.last_event_id)) {
                std::fill(after.begin(), after.end(), *seq);
                result.resumed = true;
                for (auto* c : channels)
                    result.gap |= c->history.evicted_through() > *seq;
            } else {
                result.gap = true;  // unknown, foreign or evicted: the whole retained history follows
            }
        } else if (options.otherwise == replay::none) {
            std::fill(after.begin(), after.end(), s.order.last());
        } else if (options.otherwise == replay::undelivered) {
            for (std::size_t i = 1; i < channels.size(); ++i) {
                after[i] = s.delivered_locked(*channels[i], false);
                after[0] = std::max(after[0], s.delivered_locked(*channels[i], true));
                result.gap |= channels[i]->history.evicted_through() > after[i];
            }
        }

        auto& e = *m->em;
        if (result.gap && options.on_gap) {
            error_code ec;
            if (auto frame = make_frame(*options.on_gap, ec))
                e.enqueue(std::move(frame), 0, ec);
        }
        std::vector<const history_record*> replay;
        for (std::size_t i = 0; i < channels.size(); ++i)
            for (const auto& r : channels[i]->history.records())
                if (r.seq > after[i])
                    replay.push_back(&r);
        std::sort(replay.begin(), replay.end(), [](auto* a, auto* b) { return a->seq < b->seq; });
        e.start();
        m->after_broadcasts = after[0];
        for (std::size_t i = 1; i < channels.size(); ++i) {
            m->add(channels[i], after[i]);
            if (!channels[i]->finished)
                ++m->unfinished;
        }
        if (!replay.empty() || !options.prefix.empty()) {
            m->backlog = std::make_unique<pending_feed>();
            m->backlog->live_after = s.order.last();
            for (const auto& f : options.prefix) {
                if (f && f->size() > e.max_queued_bytes())
                    result.gap = true;  // it could never be queued
                else if (f && !f->empty())
                    m->backlog->frames.emplace_back(0, f);
            }
            for (const auto* r : replay)
                m->backlog->frames.emplace_back(r->seq, r->frame);
            s.feed_locked(*m, false);
        }
        result.replayed = replay.size();

        m->for_each_channel([&](channel* c, std::uint64_t) { c->members.push_back(m); });
        result.finished = m->first != nullptr && m->unfinished == 0;
        if (result.finished)
            s.complete_locked(*m, true);
        m->index = static_cast<std::uint32_t>(s.all.size());
        s.all.push_back(owned.release());
        e.on_close([w = std::weak_ptr<state>(state_), m](close_reason reason, error_code why) {
            if (auto st = w.lock())
                st->detach(m, reason, why);
        });
        ++s.stats.connections_total;
        s.stats.replayed_events_total += result.replayed;
        s.stats.gaps_total += result.gap;
        lock.unlock();
        if (h && h->on_attach)
            h->on_attach(keys, result);
        if (h && h->on_gap && result.gap)
            h->on_gap(keys, result);
        return result;
    }

    /// Whether attach() would take one more connection under `keys` now (connection_limits).
    bool admits(std::span<const Key> keys) const
    {
        std::lock_guard lock(state_->mtx);
        return state_->admits_locked(keys);
    }

    bool admits(const Key& key) const { return admits(std::span<const Key>(&key, 1)); }

    /// Records a refusal the application answered itself after admits() said no (a 503
    /// before making the emitter): counted in metrics().connections_refused_total, and
    /// hooks::on_refused called, as for a refused attach().
    void refuse(std::span<const Key> keys)
    {
        std::unique_lock lock(state_->mtx);
        ++state_->stats.connections_refused_total;
        const auto h = state_->hook_set;
        lock.unlock();
        if (h && h->on_refused)
            h->on_refused(keys);
    }

    void refuse(const Key& key) { refuse(std::span<const Key>(&key, 1)); }

    /// Limits later attaches; connections already attached stay.
    void set_limits(connection_limits limits)
    {
        std::lock_guard lock(state_->mtx);
        state_->limits = limits;
    }

    /// Replaces the hooks; a hook already running finishes with the old set.
    void set_hooks(hooks h)
    {
        auto p = std::make_shared<const hooks>(std::move(h));
        std::lock_guard lock(state_->mtx);
        state_->hook_set = std::move(p);
    }

    /// A snapshot of the registry's counters and gauges (see ssepp::metrics); O(connections).
    /// Bytes are counted as the transports take them, for open connections too.
    ssepp::metrics metrics() const
    {
        auto& s = *state_;
        std::lock_guard lock(s.mtx);
        auto m = s.stats;
        m.connections = s.all.size();
        m.keys = s.keys.size();
        m.queued_bytes = s.pending_bytes;
        for (const auto* x : s.all) {
            m.queued_bytes += x->em->queued_bytes();
            s.add_totals(m, *x->em);
        }
        return m;
    }

    /// Sends `e` to every connection under `key`, and retains it in the key's history.
    /// An event without id gets an id from the registry's next position.
    /// Errors: validate()'s, errc::event_too_large (over history_options::max_event_bytes),
    /// errc::closed when the key is finished; nothing is then sent or retained.
    send_result send(const Key& key, event e, error_code& ec)
    {
        auto& s = *state_;
        std::lock_guard lock(s.mtx);
        return s.send_locked(key, std::move(e), ec);
    }

    send_result send(const Key& key, event e)
    {
        error_code ec;
        auto r = send(key, std::move(e), ec);
        detail::throw_on_error(ec, "ssepp::basic_registry::send");
        return r;
    }

    /// Sends `e` as send() does, then completes, `void(error_code, send_result)`, once no
    /// connection of `key` has more than half its queue bound queued: a publisher that waits
    /// for each send goes no faster than the key's connections read. It completes on the
    /// handler's associated executor (asio::system_executor for a plain callback).
    template <class CompletionToken>
    auto async_send(const Key& key, event e, CompletionToken&& token)
    {
        return asio::async_initiate<CompletionToken, void(error_code, send_result)>(
            [this](auto handler, Key key, event e) { state_->send_then_wait(key, std::move(e), std::move(handler)); },
            token, Key(key), std::move(e));
    }

    /// Sends `events`, in order, to every connection under `key`, as one frame per connection:
    /// for a publisher with several events at hand (a burst, a batch job's output), one enqueue
    /// and one buffer per connection instead of one per event. Ids, order and history are those
    /// of that many send() calls; all or nothing: an invalid event refuses the batch. A
    /// connection that ends partway through writing a batch counts none of it as written
    /// (replay::undelivered replays it again: a duplicate rather than a loss). Errors as send().
    send_result send_batch(const Key& key, std::span<const event> events, error_code& ec)
    {
        auto& s = *state_;
        std::lock_guard lock(s.mtx);
        s.purge_locked();
        auto it = s.lookup_locked(key);
        if (it->second.finished) {
            ec = errc::closed;
            return {};
        }
        auto result = s.deliver_batch_locked(it->second, events, ec);
        s.erase_if_unused_locked(it);
        return result;
    }

    /// As send_batch(), to every live connection. Errors as send().
    send_result broadcast_batch(std::span<const event> events, error_code& ec)
    {
        auto& s = *state_;
        std::lock_guard lock(s.mtx);
        s.purge_locked();
        return s.deliver_batch_locked(s.everyone, events, ec);
    }

    /// Sends `e` to every live connection, and retains it for every connection's replay.
    /// Errors as send().
    send_result broadcast(event e, error_code& ec)
    {
        auto& s = *state_;
        std::lock_guard lock(s.mtx);
        s.purge_locked();
        return s.deliver_locked(s.everyone, std::move(e), ec);
    }

    send_result broadcast(event e)
    {
        error_code ec;
        auto r = broadcast(std::move(e), ec);
        detail::throw_on_error(ec, "ssepp::basic_registry::broadcast");
        return r;
    }

    /// Sends `last` to `key` (a job's `complete` or `error`), completes the key's connections
    /// once it is written (a connection under several keys: once all its keys are finished),
    /// and keeps the key's history, `last` always included, for
    /// history_options::finished_linger, so that a client attaching later replays the outcome
    /// and is completed too. After the linger the key is forgotten. Errors as send().
    send_result finish(const Key& key, event last, error_code& ec)
    {
        auto& s = *state_;
        std::lock_guard lock(s.mtx);
        s.purge_locked();
        auto it = s.lookup_locked(key);
        auto& c = it->second;
        if (c.finished) {
            ec = errc::closed;
            return {};
        }
        auto result = s.deliver_locked(c, std::move(last), ec, true);
        if (ec) {
            s.erase_if_unused_locked(it);
            return result;
        }
        s.hand_off_locked();
        c.finished = true;
        c.linger_until = std::chrono::steady_clock::now() + s.options.finished_linger;
        s.lingering.emplace_back(c.linger_until, key);
        for (auto* m : c.members)
            if (--m->unfinished == 0)
                s.complete_locked(*m, true);
        return result;
    }

    send_result finish(const Key& key, event last)
    {
        error_code ec;
        auto r = finish(key, std::move(last), ec);
        detail::throw_on_error(ec, "ssepp::basic_registry::finish");
        return r;
    }

    /// Completes every connection under `key` (each flushes what it has queued, then closes;
    /// a replay still being fed stops, and the client resumes it with its Last-Event-ID); the
    /// history stays.
    /// @returns how many connections were completed.
    std::size_t complete(const Key& key)
    {
        auto& s = *state_;
        std::lock_guard lock(s.mtx);
        s.hand_off_locked();
        auto it = s.keys.find(key);
        if (it == s.keys.end())
            return 0;
        for (auto* m : it->second.members)
            s.complete_locked(*m, false);
        return it->second.members.size();
    }

    /// Completes `key`'s connections and forgets its history (and that it was finished).
    void erase(const Key& key)
    {
        auto& s = *state_;
        std::lock_guard lock(s.mtx);
        s.hand_off_locked();
        auto it = s.keys.find(key);
        if (it == s.keys.end())
            return;
        for (auto* m : it->second.members)
            s.complete_locked(*m, false);
        s.forget_locked(it);
    }

    /// Graceful shutdown: queues to each connection a `retry` drawn uniformly from
    /// [retry_min, retry_max] and completes it, so that its client reconnects after that long
    /// and a server's clients come back spread over the window, not all in the same second.
    void complete_all(std::chrono::milliseconds retry_min, std::chrono::milliseconds retry_max)
    {
        auto& s = *state_;
        std::minstd_rand random(std::random_device{}());
        std::uniform_int_distribution<std::int64_t> pick(retry_min.count(), std::max(retry_min, retry_max).count());
        std::lock_guard lock(s.mtx);
        s.hand_off_locked();
        for (auto* m : s.all) {
            error_code ec;
            if (auto frame = make_frame(event{.retry = std::chrono::milliseconds(pick(random))}, ec))
                m->em->enqueue(std::move(frame), 0, ec);
            s.complete_locked(*m, false);
        }
    }

    /// Completes every connection (for shutdown); they leave as they close.
    void complete_all()
    {
        auto& s = *state_;
        std::lock_guard lock(s.mtx);
        s.hand_off_locked();
        for (auto* m : s.all)
            s.complete_locked(*m, false);
    }

    /// Bytes queued or being written over all live connections, and sent but not yet handed
    /// off (counted once): with size(), what a publisher needs for backpressure (publish more
    /// only while connections keep up).
    std::size_t queued_bytes() const
    {
        std::lock_guard lock(state_->mtx);
        std::size_t total = state_->pending_bytes;
        for (const auto* m : state_->all)
            total += m->em->queued_bytes();
        return total;
    }

    /// Bytes sent and not yet handed off (always 0 without a hand-off executor). A publisher
    /// that watches its connections' queues adds this: what the sender has outrun the hand-off
    /// by reaches every connection at the next one.
    std::size_t pending_bytes() const noexcept { return state_->pending_size.load(std::memory_order_relaxed); }

    /// How far the connection furthest behind is, in bytes queued or being written, plus
    /// what was sent and not yet handed off: what a fast publisher watches, waiting while it
    /// is over a high-water mark, so that no connection meets its bound. As of at most a
    /// millisecond ago: asking every connection costs O(connections), so it is done once a
    /// millisecond at most (and for free at each hand-off).
    std::size_t backlog() const
    {
        auto& s = *state_;
        const auto now = std::chrono::steady_clock::now().time_since_epoch().count();
        if (now - s.furthest_at.load(std::memory_order_relaxed) > std::chrono::nanoseconds(std::chrono::milliseconds(1)).count()) {
            std::lock_guard lock(s.mtx);
            std::size_t most = 0;
            for (const auto* m : s.all)
                most = std::max(most, m->em->queued_bytes());
            s.furthest_behind.store(most, std::memory_order_relaxed);
            s.furthest_at.store(now, std::memory_order_relaxed);
        }
        return s.furthest_behind.load(std::memory_order_relaxed) + pending_bytes();
    }

    /// Live connections (a closed one counts until its close handler has run).
    std::size_t size() const
    {
        std::lock_guard lock(state_->mtx);
        return state_->all.size();
    }

    /// Live connections under `key`.
    std::size_t size(const Key& key) const
    {
        std::lock_guard lock(state_->mtx);
        auto it = state_->keys.find(key);
        return it == state_->keys.end() ? 0 : it->second.members.size();
    }

    /// Keys the registry holds anything for (connections, a history, a lingering finish):
    /// what its memory grows with besides connections and retained events.
    std::size_t key_count() const
    {
        auto& s = *state_;
        std::lock_guard lock(s.mtx);
        s.purge_locked();
        return s.keys.size();
    }

    /// Whether `key` has a history or connections (a finished key lingers).
    bool contains(const Key& key) const
    {
        auto& s = *state_;
        std::lock_guard lock(s.mtx);
        s.purge_locked();
        auto it = s.keys.find(key);
        return it != s.keys.end() && !it->second.unused();
    }

    /// Whether `key` was finished and still lingers.
    bool finished(const Key& key) const
    {
        auto& s = *state_;
        std::lock_guard lock(s.mtx);
        s.purge_locked();
        auto it = s.keys.find(key);
        return it != s.keys.end() && it->second.finished;
    }

    /// The id of `key`'s last retained event, if any (a finished key's: its terminal event).
    std::optional<std::string> last_id(const Key& key) const { return edge_id(key, false); }

    /// The id of `key`'s oldest retained event, if any.
    std::optional<std::string> first_id(const Key& key) const { return edge_id(key, true); }

    /// The id of the last retained event of `key` that a connection of the key is known to
    /// have written (what replay::undelivered starts after), if it is still retained.
    std::optional<std::string> delivered_id(const Key& key) const
    {
        auto& s = *state_;
        std::lock_guard lock(s.mtx);
        s.purge_locked();
        auto it = s.keys.find(key);
        if (it == s.keys.end())
            return std::nullopt;
        const auto through = s.delivered_locked(it->second, false);
        const auto& records = it->second.history.records();
        for (auto r = records.rbegin(); r != records.rend(); ++r)
            if (r->seq <= through)
                return r->id;
        return std::nullopt;
    }

    /// Records that `key`'s retained events through the last one whose id `delivered`
    /// accepts were delivered, as if a connection of the key had written them: what another
    /// process learnt (a node of a cluster, from the others). replay::undelivered starts after
    /// them. `delivered` is called under the registry's lock, newest record first, and must
    /// not call back into the registry.
    /// @returns whether a retained event was accepted.
    template <class Predicate>
        requires std::predicate<Predicate&, std::string_view>
    bool mark_delivered(const Key& key, Predicate delivered)
    {
        auto& s = *state_;
        std::lock_guard lock(s.mtx);
        s.purge_locked();
        auto it = s.keys.find(key);
        if (it == s.keys.end())
            return false;
        auto& c = it->second;
        const auto& records = c.history.records();
        for (auto r = records.rbegin(); r != records.rend(); ++r)
            if (delivered(std::string_view(r->id))) {
                c.delivered_through = std::max(c.delivered_through, r->seq);
                return true;
            }
        return false;
    }

    /// Every key the registry holds anything for (see key_count()).
    std::vector<Key> keys() const
    {
        auto& s = *state_;
        std::lock_guard lock(s.mtx);
        s.purge_locked();
        std::vector<Key> out;
        out.reserve(s.keys.size());
        for (const auto& [k, c] : s.keys)
            out.push_back(k);
        return out;
    }

    /// The epoch of the ids this registry generates (history_options::id_epoch, or the one
    /// it drew).
    const std::string& id_epoch() const noexcept { return state_->order.epoch(); }

private:
    std::optional<std::string> edge_id(const Key& key, bool oldest) const
    {
        auto& s = *state_;
        std::lock_guard lock(s.mtx);
        s.purge_locked();
        auto it = s.keys.find(key);
        if (it == s.keys.end() || it->second.history.empty())
            return std::nullopt;
        const auto& records = it->second.history.records();
        return oldest ? records.front().id : records.back().id;
    }

    // Room for one more element, so that linking a member in cannot throw; growing
    // geometrically (reserve(size() + 1) would reallocate, and copy, on every attach).
    template <class Vector>
    static void reserve_one(Vector& v)
    {
        if (v.size() == v.capacity())
            v.reserve(std::max<std::size_t>(4, 2 * v.capacity()));
    }

    struct member;

    struct channel {
        std::vector<member*> members;
        key_history history;
        // Last own event, and last broadcast, that a connection of the key that has since
        // closed wrote (live connections are asked: state::delivered_locked()).
        std::uint64_t delivered_through = 0;
        std::uint64_t broadcast_delivered_through = 0;
        std::chrono::steady_clock::time_point linger_until{};
        bool finished = false;
        const Key* key = nullptr;  // its own key in the map (nodes are stable)

        bool unused() const noexcept { return members.empty() && history.empty() && !finished; }
    };

    // What a connection is still to be fed, in order: the replay, then the live events that
    // arrived while it was fed. Allocated only while there is something.
    struct pending_feed {
        std::deque<std::pair<std::uint64_t, shared_frame>> frames;
        std::uint64_t live_after = 0;  // frames after this position arrived live
        std::size_t live_bytes = 0;    // past the emitter's bound, its overflow policy decides
    };

    // One per attached connection, with the position after which it was sent everything of
    // each channel (the replay's start): what it wrote then proves what was delivered. Its
    // keys' channels are stable: a channel with members stays in the map. The first is held
    // inline, as most connections have one key; the others only when there are (8 bytes, not
    // an empty vector's 24: thousands of idle connections each have one).
    struct member {
        using channels = std::vector<std::pair<channel*, std::uint64_t>>;
        emitter_ptr em;
        channel* first = nullptr;
        std::uint64_t first_after = 0;
        std::unique_ptr<channels> more;
        std::uint64_t after_broadcasts = 0;
        std::unique_ptr<pending_feed> backlog;
        std::uint32_t index = 0;       // in state::all
        std::uint32_t unfinished = 0;  // keys not finished yet
        bool complete_after_backlog = false;
        bool refill_pending = false;   // an async_wait_drained() is under way

        void add(channel* c, std::uint64_t after)
        {
            if (first)
                more->emplace_back(c, after);  // reserved by attach()
            else
                first = c, first_after = after;
        }
        std::uint64_t after(const channel* c) const
        {
            if (c == first)
                return first_after;
            if (more)
                for (const auto& [ch, a] : *more)
                    if (ch == c)
                        return a;
            return 0;
        }
        template <class F>
        void for_each_channel(F f) const
        {
            if (first)
                f(first, first_after);
            if (more)
                for (const auto& [c, a] : *more)
                    f(c, a);
        }
    };

    struct state : std::enable_shared_from_this<state> {
        explicit state(history_options o) : options(std::move(o)), order(options.id_epoch) {}

        state(const state&) = delete;
        state& operator=(const state&) = delete;

        ~state()
        {
            for (auto* m : all)
                delete m;
        }

        // Validates `e` as given (the id added here must not turn an empty event into one),
        // gives it the id of position `seq` if it has none, and formats it once, within
        // history_options::max_event_bytes. Null, with `ec` set, when it cannot be sent.
        shared_frame format_locked(event& e, std::uint64_t seq, error_code& ec) const
        {
            if ((ec = validate(e)))
                return nullptr;
            if (!e.id)
                e.id = order.id(seq);
            auto frame = make_frame(e, ec);
            if (frame && frame->size() > options.max_event_bytes)
                ec = errc::event_too_large;
            return ec ? nullptr : frame;
        }

        // Fixes the event's place in the order, formats it once, retains it, queues it.
        // `keep`: retain it even when history_options keep nothing (a terminal event).
        send_result deliver_locked(channel& c, event e, error_code& ec, bool keep = false)
        {
            const auto seq = order.peek();
            auto frame = format_locked(e, seq, ec);
            if (!frame)
                return {};
            order.take();
            ++stats.events_total;
            c.history.append({seq, *e.id, frame, now_if_aged()}, options, keep);
            return {.connections = out_locked(c, seq, std::span(&frame, 1)), .id = std::move(*e.id)};
        }

        // As deliver_locked() for each of `events`, all or none, and queued to each
        // connection as one frame: one enqueue and one buffer per connection for the batch.
        send_result deliver_batch_locked(channel& c, std::span<const event> events, error_code& ec)
        {
            ec = {};
            if (events.size() == 1)
                return deliver_locked(c, events.front(), ec);
            std::vector<shared_frame> frames;
            std::vector<std::string> ids;
            frames.reserve(events.size());
            ids.reserve(events.size());
            const auto first = order.peek();
            for (const auto& given : events) {
                event e = given;
                auto frame = format_locked(e, first + frames.size(), ec);
                if (!frame)
                    return {};
                frames.push_back(std::move(frame));
                ids.push_back(std::move(*e.id));
            }
            if (frames.empty())
                return {};
            const auto at = now_if_aged();
            stats.events_total += frames.size();
            for (std::size_t i = 0; i < frames.size(); ++i)
                c.history.append({order.take(), ids[i], frames[i], at}, options, false);
            return {.connections = out_locked(c, first, frames), .id = std::move(ids.back())};
        }

        std::chrono::steady_clock::time_point now_if_aged() const
        {
            return options.max_age.count() > 0 ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point{};
        }

        // The frames of positions first, first + 1, ... sent to `c`: queued to its connections
        // now, or, with a hand-off executor, left for the next hand-off (one posted if none
        // is). Returns the connections they are (to be) queued to.
        std::size_t out_locked(channel& c, std::uint64_t first, std::span<const shared_frame> frames)
        {
            const auto connections = (&c == &everyone ? all : c.members).size();
            if (!hand_off_ex) {
                if (frames.size() == 1)
                    return fan_out_locked(c, frames.front(), frames, std::span(&first, 1));
                std::vector<std::uint64_t> seqs(frames.size());
                for (std::size_t i = 0; i < seqs.size(); ++i)
                    seqs[i] = first + i;
                return fan_out_locked(c, join(frames), frames, seqs);
            }
            if (connections == 0)
                return 0;  // retained already; a channel without connections may be erased
            std::size_t bytes = 0;
            for (std::size_t i = 0; i < frames.size(); ++i) {
                outbox.push_back({&c, first + i, frames[i]});
                bytes += frames[i]->size();
            }
            pending_bytes += bytes;
            pending_size.fetch_add(bytes, std::memory_order_relaxed);
            if (!std::exchange(hand_off_posted, true))
                asio::post(*hand_off_ex, [w = this->weak_from_this()] {
                    if (auto st = w.lock()) {
                        std::lock_guard lock(st->mtx);
                        st->hand_off_locked();
                    }
                });
            return connections;
        }

        static shared_frame join(std::span<const shared_frame> frames)
        {
            std::size_t size = 0;
            for (const auto& f : frames)
                size += f->size();
            std::string whole;
            whole.reserve(size);
            for (const auto& f : frames)
                whole += *f;
            return make_raw_frame(std::move(whole));
        }

        // Queues what was sent since the last hand-off to the connections, in the order sent;
        // each run of consecutive events of one channel as one frame per connection.
        void hand_off_locked()
        {
            hand_off_posted = false;
            if (outbox.empty())
                return;
            auto out = std::move(outbox);
            outbox.clear();
            pending_size.fetch_sub(pending_bytes, std::memory_order_relaxed);
            pending_bytes = 0;
            furthest = 0;
            measured_all = false;
            std::vector<shared_frame> run;
            std::vector<std::uint64_t> seqs;
            for (std::size_t i = 0; i < out.size();) {
                auto* c = out[i].c;
                run.clear();
                seqs.clear();
                for (; i < out.size() && out[i].c == c; ++i) {
                    run.push_back(std::move(out[i].frame));
                    seqs.push_back(out[i].seq);
                }
                fan_out_locked(*c, run.size() == 1 ? run.front() : join(run), run, seqs, true);
            }
            if (measured_all)
                store_furthest(furthest);
            out.clear();
            if (outbox.capacity() < out.capacity())
                outbox.swap(out);  // keep the capacity: the next hand-off is as large
        }

        // Queues `whole` (`frames`, of positions `seqs`, in order) to each connection of `c`,
        // tagged with the last position; frame by frame to one still fed its replay, or whose
        // bound is smaller than the batch. Returns how many connections took it.
        // `measure`: note how far behind the connection furthest behind is (see backlog()).
        std::size_t fan_out_locked(channel& c, const shared_frame& whole, std::span<const shared_frame> frames,
                                   std::span<const std::uint64_t> seqs, bool measure = false)
        {
            std::size_t queued = 0;
            const auto last = seqs.back();
            measured_all |= measure && &c == &everyone;
            for (auto* m : &c == &everyone ? all : c.members) {
                error_code refused;  // the connection is ending: it leaves by its close handler
                if (!m->backlog && (frames.size() == 1 || whole->size() <= m->em->max_queued_bytes())) {
                    m->em->enqueue(whole, last, refused);
                    queued += !refused;
                    if (measure)
                        furthest = std::max(furthest, m->em->queued_bytes());
                    continue;
                }
                for (std::size_t i = 0; i < frames.size() && !refused; ++i) {
                    if (m->backlog)
                        refused = push_backlog_locked(*m, seqs[i], frames[i]) ? error_code() : errc::closed;
                    else
                        m->em->enqueue(frames[i], seqs[i], refused);
                }
                queued += !refused;
            }
            return queued;
        }

        send_result send_locked(const Key& key, event e, error_code& ec)
        {
            purge_locked();
            auto it = lookup_locked(key);
            if (it->second.finished) {
                ec = errc::closed;
                return {};
            }
            auto result = deliver_locked(it->second, std::move(e), ec);
            erase_if_unused_locked(it);
            return result;
        }

        // async_send(): the send, then a wait on each connection of the key over half its bound.
        template <class Handler>
        void send_then_wait(const Key& key, event e, Handler handler)
        {
            struct op {
                Handler handler;
                asio::executor_work_guard<asio::associated_executor_t<Handler>> work;
                error_code ec;
                send_result result;
                std::atomic<std::size_t> left{1};

                explicit op(Handler h) : handler(std::move(h)), work(asio::get_associated_executor(handler)) {}
                static void done(const std::shared_ptr<op>& self)
                {
                    if (--self->left != 0)
                        return;
                    auto ex = self->work.get_executor();
                    asio::post(ex, [self] { std::move(self->handler)(self->ec, std::move(self->result)); });
                }
            };
            auto o = std::make_shared<op>(std::move(handler));
            {
                std::lock_guard lock(mtx);
                o->result = send_locked(key, std::move(e), o->ec);
                hand_off_locked();
                if (auto it = keys.find(key); !o->ec && it != keys.end())
                    for (auto* m : it->second.members)
                        if (auto half = m->em->max_queued_bytes() / 2; m->em->queued_bytes() > half) {
                            ++o->left;
                            // A connection that closes first is not behind any more either.
                            m->em->async_wait_drained(half, [o](error_code) { op::done(o); });
                        }
            }
            op::done(o);
        }

        // Behind a replay still being fed: in order after it, within the backlog's bound.
        // Returns whether the member took it (or may still).
        bool push_backlog_locked(member& m, std::uint64_t seq, const shared_frame& frame)
        {
            auto& b = *m.backlog;
            b.frames.emplace_back(seq, frame);
            b.live_bytes += frame->size();
            return feed_locked(m, b.live_bytes > m.em->max_queued_bytes());
        }

        // Queues the member's backlog to its emitter while the emitter's bound has room (all of
        // it, regardless, when `force`: the emitter's overflow policy then decides), and asks
        // to be called again when the emitter has drained to half its bound.
        // Returns false when the emitter refused a frame (it is ending).
        bool feed_locked(member& m, bool force)
        {
            auto& b = *m.backlog;
            auto& e = *m.em;
            const auto bound = e.max_queued_bytes();
            error_code ec;
            while (!b.frames.empty() && !ec) {
                auto& [seq, frame] = b.frames.front();
                const auto size = frame->size();
                if (!force && e.queued_bytes() + size > bound) {
                    // Called back once there is room for this frame and, so that a drain
                    // calls back once, not at every write, for half the bound.
                    refill_below_locked(m, std::min(bound / 2, bound - size));
                    return true;
                }
                if (seq > b.live_after)
                    b.live_bytes -= size;
                e.enqueue(std::move(frame), seq, ec);  // on error, it leaves through its close handler
                b.frames.pop_front();
            }
            // Fed, but the queue may still be near its bound: live events keep coming through
            // here until it has drained to half, or the next one would meet the overflow
            // policy although the client keeps up.
            if (!ec && !force && e.queued_bytes() > bound / 2) {
                refill_below_locked(m, bound / 2);
                return true;
            }
            m.backlog.reset();
            if (m.complete_after_backlog && !ec)
                e.complete();
            return !ec;
        }

        // Asks the member's emitter to call refill() once its queue is at most `threshold`;
        // one request at a time: refill() asks again if it must.
        void refill_below_locked(member& m, std::size_t threshold)
        {
            if (std::exchange(m.refill_pending, true))
                return;
            m.em->async_wait_drained(threshold, [w = this->weak_from_this(), mp = &m, ep = std::weak_ptr<Emitter>(m.em)](error_code ec) {
                if (auto st = w.lock(); st && !ec)
                    if (auto e = ep.lock())
                        st->refill(mp, *e);
            });
        }

        // The emitter has room again. The member is alive while its emitter is open: it is
        // deleted only by the close handler, which runs once the emitter is closed and needs
        // the lock held here.
        void refill(member* m, Emitter& e)
        {
            std::lock_guard lock(mtx);
            if (!e.is_open())
                return;
            m->refill_pending = false;
            if (m->backlog)
                feed_locked(*m, false);
        }

        // Completes a connection; `after_backlog`: once its backlog is fed (a finish), else at
        // once, dropping the backlog.
        void complete_locked(member& m, bool after_backlog)
        {
            if (m.backlog && after_backlog) {
                m.complete_after_backlog = true;
                return;
            }
            m.backlog.reset();
            m.em->complete();
        }

        // The last position through which `c`'s own events (or the broadcasts) are known
        // written by a connection of `c`: the closed connections' watermark, extended by each
        // live connection that was sent everything after it and has written further.
        std::uint64_t delivered_locked(const channel& c, bool broadcasts) const
        {
            auto through = broadcasts ? c.broadcast_delivered_through : c.delivered_through;
            for (bool grew = true; grew;) {
                grew = false;
                for (const auto* m : c.members) {
                    const auto from = broadcasts ? m->after_broadcasts : m->after(&c);
                    const auto written = m->em->written_seq();
                    if (from <= through && written > through) {
                        through = written;
                        grew = true;
                    }
                }
            }
            return through;
        }

        // The key's channel, made if need be; it learns its key for detach().
        typename std::unordered_map<Key, channel>::iterator lookup_locked(const Key& key)
        {
            auto it = keys.try_emplace(key).first;
            it->second.key = &it->first;
            return it;
        }

        void detach(member* m, close_reason reason, error_code why)
        {
            std::unique_lock lock(mtx);
            hand_off_locked();  // its channels may go with it
            ++stats.closed_total[static_cast<std::size_t>(reason)];
            add_totals(stats, *m->em);
            const auto h = hook_set;
            std::vector<Key> left;
            if (h && (h->on_detach || (h->on_overflow && reason == close_reason::overflow)))
                m->for_each_channel([&](channel* c, std::uint64_t) { left.push_back(*c->key); });
            // What it wrote, of what it was sent from its replay's start on, was delivered.
            const auto written = m->em->written_seq();
            m->for_each_channel([&](channel* c, std::uint64_t from) {
                if (from <= c->delivered_through)
                    c->delivered_through = std::max(c->delivered_through, written);
                if (m->after_broadcasts <= c->broadcast_delivered_through)
                    c->broadcast_delivered_through = std::max(c->broadcast_delivered_through, written);
                auto& v = c->members;
                if (auto pos = std::find(v.begin(), v.end(), m); pos != v.end()) {
                    *pos = v.back();
                    v.pop_back();
                }
                erase_if_unused_locked(keys.find(*c->key));
            });
            all[m->index] = all.back();
            all[m->index]->index = m->index;
            all.pop_back();
            delete m;
            lock.unlock();
            if (h && h->on_overflow && reason == close_reason::overflow)
                h->on_overflow(left);
            if (h && h->on_detach)
                h->on_detach(left, reason, why);
        }

        // Adds what `e` wrote, dropped and heartbeats it queued to `m`'s totals (for the
        // emitters that count them).
        static void add_totals(ssepp::metrics& m, const Emitter& e)
        {
            if constexpr (requires { e.bytes_written(); })
                m.bytes_written_total += e.bytes_written();
            if constexpr (requires { e.dropped(); })
                m.dropped_events_total += e.dropped();
            if constexpr (requires { e.heartbeats(); })
                m.heartbeats_total += e.heartbeats();
        }

        bool admits_locked(std::span<const Key> ks) const
        {
            if (limits.max_connections && all.size() >= limits.max_connections)
                return false;
            if (limits.max_connections_per_key)
                for (const auto& k : ks)
                    if (auto it = keys.find(k); it != keys.end() && it->second.members.size() >= limits.max_connections_per_key)
                        return false;
            return true;
        }

        // Erases a key with no connections, no history and no finish to remember.
        void erase_if_unused_locked(typename std::unordered_map<Key, channel>::iterator it)
        {
            if (it->second.unused())
                keys.erase(it);
        }

        // Drops the key's history and finish; the key goes once its connections have left.
        void forget_locked(typename std::unordered_map<Key, channel>::iterator it)
        {
            it->second.history.clear();
            it->second.finished = false;
            erase_if_unused_locked(it);
        }

        // Forgets finished keys whose linger is over.
        void purge_locked()
        {
            if (lingering.empty())
                return;
            const auto now = std::chrono::steady_clock::now();
            while (!lingering.empty() && lingering.front().first <= now) {
                auto it = keys.find(lingering.front().second);
                lingering.pop_front();
                // Skip a key erased, or erased and finished again since (its own entry follows).
                if (it == keys.end() || !it->second.finished || it->second.linger_until > now)
                    continue;
                forget_locked(it);
            }
        }

        // Sent, not yet handed off (with a hand-off executor only).
        struct outgoing {
            channel* c;
            std::uint64_t seq;
            shared_frame frame;
        };

        history_options options;
        history_order order;
        std::mutex mtx;
        std::optional<asio::any_io_executor> hand_off_ex;
        ssepp::metrics stats;  // the counters; gauges and live connections' totals are added by metrics()
        connection_limits limits;
        std::shared_ptr<const hooks> hook_set;
        std::vector<outgoing> outbox;
        std::size_t pending_bytes = 0;
        bool hand_off_posted = false;
        std::size_t furthest = 0;
        bool measured_all = false;  // this hand-off reached every connection
        std::atomic<std::size_t> pending_size{0};
        mutable std::atomic<std::size_t> furthest_behind{0};
        mutable std::atomic<std::chrono::steady_clock::rep> furthest_at{0};

        void store_furthest(std::size_t bytes)
        {
            furthest_behind.store(bytes, std::memory_order_relaxed);
            furthest_at.store(std::chrono::steady_clock::now().time_since_epoch().count(), std::memory_order_relaxed);
        }
        std::unordered_map<Key, channel> keys;
        channel everyone;
        std::vector<member*> all;
        std::deque<std::pair<std::chrono::steady_clock::time_point, Key>> lingering;
    };

    // The position of the oldest retained event whose id is `id`, in any of `channels`: on
    // duplicate ids a replay from the oldest repeats events rather than skipping them.
    static std::optional<std::uint64_t> find_locked(const std::vector<channel*>& channels,
                                                    std::string_view id)
    {
        std::optional<std::uint64_t> found;
        for (auto* c : channels)
            if (auto seq = c->history.find(id); seq && (!found || *seq < *found))
                found = seq;
        return found;
    }

    std::shared_ptr<state> state_;
};

/// Connections of plain TCP sockets by string key.
using registry = basic_registry<>;

} // namespace ssepp

#endif
