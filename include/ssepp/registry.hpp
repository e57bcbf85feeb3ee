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

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <deque>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace ssepp {

/// What a connection that arrives without Last-Event-ID is sent from the history.
enum class replay {
    /// Everything retained: a late subscriber to a job's progress misses nothing.
    all,
    /// Only what no connection of the key has been sent yet: notifications for a user who was
    /// offline.
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
};

struct attach_result {
    /// Events queued from history.
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

struct history_options {
    /// Events retained per key (and for broadcasts); 0 retains none.
    std::size_t max_events = 1024;
    /// Bytes retained per key, counted as formatted.
    std::size_t max_bytes = std::size_t(1) << 20;
    /// How long a finished key's history (and so its outcome) stays after finish().
    std::chrono::milliseconds finished_linger = std::chrono::minutes(5);
};

/// The result of send(), finish() and broadcast().
struct send_result {
    /// Live connections the event was queued to (0 is fine: it is retained).
    std::size_t connections = 0;
    /// The event's id as sent: the application's own, or the one the registry assigned.
    std::string id{};
    /// Set when the event was invalid (see validate()) or the key is finished: nothing was
    /// sent or retained.
    std::error_code error{};

    explicit operator bool() const noexcept { return !error; }
};

/// Connections keyed by `Key`, each connection under any number of keys, each key with any
/// number of connections (a user with three tabs).
///
/// Every event sent gets a place in one registry-wide order, and an event without an id gets
/// its position as id, so a connection under several keys resumes from one Last-Event-ID:
/// attach() replays, merged in order from all its keys, every retained event after that one,
/// then live ones follow, with no gap and no duplicate while other threads publish.
/// broadcast() reaches every connection and is retained as if every connection shared one
/// more key.
///
/// Thread-safe. An event is formatted once, under the registry's lock (that fixes its place
/// in the order), and queued to each emitter without copying.
///
/// @tparam Emitter basic_emitter<T> or anything with start(), send(shared_frame), complete()
/// and on_close(handler), none of which may call back into the registry (close handlers run
/// later, on the emitter's executor).
template <class Key = std::string, class Emitter = emitter>
class basic_registry {
public:
    using key_type = Key;
    using emitter_type = Emitter;
    using emitter_ptr = std::shared_ptr<Emitter>;

    explicit basic_registry(history_options options = {})
        : state_(std::make_shared<state>(options))
    {
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

    /// Adds `em` under every key of `keys` (a key given twice counts once), queues its replay
    /// (see attach_options), starts it, and from then on queues to it every event sent to one
    /// of its keys and every broadcast. It leaves the registry by itself when it closes.
    ///
    /// Without last_event_id, replay::undelivered replays, per key, the key's retained events
    /// after the last one that was sent to a live connection of that key, and the retained
    /// broadcasts after the last one sent to a connection of any of the keys; `gap` is set when
    /// such an undelivered event of a key was already evicted.
    attach_result attach(std::span<const Key> keys, emitter_ptr em, const attach_options& options = {})
    {
        attach_result result;
        auto& s = *state_;
        std::lock_guard lock(s.mtx);
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
            s.activate_locked(*c);
            m->add(c);
            channels.push_back(c);
            if (!c->finished)
                ++m->unfinished;
        }

        // Per channel, the position after which retained events are replayed.
        std::vector<std::uint64_t> after(channels.size(), 0);
        bool mark_delivered = true;
        if (options.last_event_id) {
            if (auto seq = find_locked(channels, *options.last_event_id)) {
                std::fill(after.begin(), after.end(), *seq);
                result.resumed = true;
                for (auto* c : channels)
                    result.gap |= c->evicted_through > *seq;
            } else {
                result.gap = true;  // unknown or evicted: the whole retained history follows
            }
        } else if (options.otherwise == replay::none) {
            std::fill(after.begin(), after.end(), s.next_seq);
            mark_delivered = false;
        } else if (options.otherwise == replay::undelivered) {
            for (std::size_t i = 1; i < channels.size(); ++i) {
                after[i] = channels[i]->delivered_through;
                after[0] = std::max(after[0], s.broadcasts_delivered(*channels[i]));
                result.gap |= channels[i]->evicted_through > channels[i]->delivered_through;
            }
        }

        auto& e = *m->em;
        if (result.gap && options.on_gap) {
            std::error_code ec;
            if (auto frame = make_frame(*options.on_gap, ec))
                e.send(std::move(frame));
        }
        std::vector<const record*> replay;
        for (std::size_t i = 0; i < channels.size(); ++i)
            for (const auto& r : channels[i]->history)
                if (r.seq > after[i])
                    replay.push_back(&r);
        std::sort(replay.begin(), replay.end(), [](auto* a, auto* b) { return a->seq < b->seq; });
        e.start();
        for (const auto* r : replay)
            e.send(r->frame);
        result.replayed = replay.size();

        m->for_each_channel([&](channel* c) {
            c->members.push_back(m);
            if (mark_delivered) {
                c->delivered_through = std::max(c->delivered_through, s.next_seq);
                c->broadcast_delivered_through = std::max(c->broadcast_delivered_through, s.next_seq);
            }
        });
        result.finished = m->first != nullptr && m->unfinished == 0;
        if (result.finished)
            e.complete();
        m->index = static_cast<std::uint32_t>(s.all.size());
        s.all.push_back(owned.release());
        e.on_close([w = std::weak_ptr<state>(state_), m](close_reason, std::error_code) {
            if (auto st = w.lock())
                st->detach(m);
        });
        return result;
    }

    /// Sends `e` to every connection under `key`, and retains it in the key's history.
    /// An event without id gets the registry's next position as id.
    send_result send(const Key& key, event e)
    {
        auto& s = *state_;
        std::lock_guard lock(s.mtx);
        s.purge_locked();
        auto it = s.lookup_locked(key);
        if (it->second.finished)
            return {.error = errc::closed};
        s.activate_locked(it->second);
        auto result = s.deliver_locked(it->second, std::move(e));
        s.erase_if_unused_locked(it);
        return result;
    }

    /// Sends `e` to every live connection, and retains it for every connection's replay.
    send_result broadcast(event e)
    {
        auto& s = *state_;
        std::lock_guard lock(s.mtx);
        s.purge_locked();
        return s.deliver_locked(s.everyone, std::move(e));
    }

    /// Sends `last` to `key` (a job's `complete` or `error`), completes the key's connections
    /// once it is written (a connection under several keys: once all its keys are finished),
    /// and keeps the key's history, `last` always included, for
    /// history_options::finished_linger, so that a client attaching later replays the outcome
    /// and is completed too. After the linger the key is forgotten.
    send_result finish(const Key& key, event last)
    {
        auto& s = *state_;
        std::lock_guard lock(s.mtx);
        s.purge_locked();
        auto it = s.lookup_locked(key);
        auto& c = it->second;
        if (c.finished)
            return {.error = errc::closed};
        s.activate_locked(c);
        auto result = s.deliver_locked(c, std::move(last), true);
        if (!result) {
            s.erase_if_unused_locked(it);
            return result;
        }
        c.finished = true;
        c.linger_until = std::chrono::steady_clock::now() + s.options.finished_linger;
        s.lingering.emplace_back(c.linger_until, key);
        for (auto* m : c.members)
            if (--m->unfinished == 0)
                m->em->complete();
        return result;
    }

    /// Completes every connection under `key` (each flushes, then closes); the history stays.
    /// @returns how many connections were completed.
    std::size_t close(const Key& key)
    {
        auto& s = *state_;
        std::lock_guard lock(s.mtx);
        auto it = s.keys.find(key);
        if (it == s.keys.end())
            return 0;
        for (auto* m : it->second.members)
            m->em->complete();
        return it->second.members.size();
    }

    /// Completes `key`'s connections and forgets its history (and that it was finished).
    void erase(const Key& key)
    {
        auto& s = *state_;
        std::lock_guard lock(s.mtx);
        auto it = s.keys.find(key);
        if (it == s.keys.end())
            return;
        for (auto* m : it->second.members)
            m->em->complete();
        it->second.history.clear();
        it->second.history_bytes = 0;
        it->second.finished = false;
        s.erase_if_unused_locked(it, true);
    }

    /// Completes every connection (for shutdown); they leave as they close.
    void complete_all()
    {
        auto& s = *state_;
        std::lock_guard lock(s.mtx);
        for (auto* m : s.all)
            m->em->complete();
    }

    /// Bytes queued or being written over all live connections: with size(), what a publisher
    /// needs for backpressure (publish more only while connections keep up).
    std::size_t queued_bytes() const
    {
        std::lock_guard lock(state_->mtx);
        std::size_t total = 0;
        for (const auto* m : state_->all)
            total += m->em->queued_bytes();
        return total;
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
    std::optional<std::string> last_id(const Key& key) const
    {
        auto& s = *state_;
        std::lock_guard lock(s.mtx);
        s.purge_locked();
        auto it = s.keys.find(key);
        if (it == s.keys.end() || it->second.history.empty())
            return std::nullopt;
        return it->second.history.back().id;
    }

private:
    // Room for one more element, so that linking a member in cannot throw; growing
    // geometrically (reserve(size() + 1) would reallocate, and copy, on every attach).
    template <class Vector>
    static void reserve_one(Vector& v)
    {
        if (v.size() == v.capacity())
            v.reserve(std::max<std::size_t>(4, 2 * v.capacity()));
    }

    struct record {
        std::uint64_t seq;
        std::string id;
        shared_frame frame;
    };

    struct member;

    struct channel {
        std::vector<member*> members;
        std::deque<record> history;
        std::size_t history_bytes = 0;
        std::uint64_t evicted_through = 0;              // last position dropped from history
        std::uint64_t delivered_through = 0;            // last own event sent to a live connection
        std::uint64_t broadcast_delivered_through = 0;  // last broadcast sent to a live connection
        std::chrono::steady_clock::time_point linger_until{};
        bool finished = false;
        // Kept only for broadcast_delivered_through (see state::idle): its place there.
        std::optional<typename std::multimap<std::uint64_t, Key>::iterator> idle;
        const Key* key = nullptr;  // its own key in the map (nodes are stable)

        bool unused() const noexcept { return members.empty() && history.empty() && !finished; }
    };

    // One per attached connection. Its keys' channels are stable: a channel with members stays
    // in the map. The first is held inline, as most connections have one key.
    struct member {
        emitter_ptr em;
        channel* first = nullptr;
        std::vector<channel*> more;
        std::uint32_t index = 0;       // in state::all
        std::uint32_t unfinished = 0;  // keys not finished yet

        void add(channel* c) { first ? more.push_back(c) : void(first = c); }
        template <class F>
        void for_each_channel(F f) const
        {
            if (first)
                f(first);
            for (auto* c : more)
                f(c);
        }
    };

    struct state {
        explicit state(history_options o) : options(o) {}

        state(const state&) = delete;
        state& operator=(const state&) = delete;

        ~state()
        {
            for (auto* m : all)
                delete m;
        }

        // Fixes the event's place in the order, formats it once, retains it, queues it.
        // `keep`: retain it even when history_options keep nothing (a terminal event).
        send_result deliver_locked(channel& c, event e, bool keep = false)
        {
            // Validated as given: the id added below must not turn an empty event into one.
            if (auto ec = validate(e))
                return {.error = ec};
            const auto seq = next_seq + 1;
            if (!e.id)
                e.id = fmt::format_int(seq).str();
            std::error_code ec;
            auto frame = make_frame(e, ec);
            if (ec)
                return {.error = ec};
            next_seq = seq;
            retain_locked(c, record{seq, *e.id, frame}, keep);
            const bool everyone_ = &c == &everyone;
            const auto& targets = everyone_ ? all : c.members;
            for (auto* m : targets)
                m->em->send(frame);
            // A key with connections has been sent every broadcast: broadcasts_delivered()
            // reads that off last_broadcast instead of this loop touching every key.
            if (everyone_ && !targets.empty())
                last_broadcast = seq;
            else if (!targets.empty())
                c.delivered_through = seq;
            return {.connections = targets.size(), .id = std::move(*e.id)};
        }

        void retain_locked(channel& c, record r, bool keep)
        {
            const auto cap = std::max<std::size_t>(options.max_events, keep ? 1 : 0);
            if (cap == 0) {
                c.evicted_through = r.seq;
                return;
            }
            c.history_bytes += r.frame->size();
            c.history.push_back(std::move(r));
            bool evicted = false;
            while (c.history.size() > 1 && (c.history.size() > cap || c.history_bytes > options.max_bytes)) {
                c.history_bytes -= c.history.front().frame->size();
                c.evicted_through = c.history.front().seq;
                c.history.pop_front();
                evicted = true;
            }
            if (evicted && &c == &everyone)
                drop_idle_locked();
        }

        // The last broadcast a connection of `c` was sent.
        std::uint64_t broadcasts_delivered(const channel& c) const noexcept
        {
            return c.members.empty() ? c.broadcast_delivered_through
                                     : std::max(c.broadcast_delivered_through, last_broadcast);
        }

        // The key's channel, made if need be; it learns its key for detach().
        typename std::unordered_map<Key, channel>::iterator lookup_locked(const Key& key)
        {
            auto it = keys.try_emplace(key).first;
            it->second.key = &it->first;
            return it;
        }

        void detach(member* m)
        {
            std::lock_guard lock(mtx);
            m->for_each_channel([&](channel* c) {
                c->broadcast_delivered_through = broadcasts_delivered(*c);  // while it has members
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
        }

        // Erases a key with no connections, no history and no finish to remember, unless
        // replay::undelivered still needs to know which retained broadcasts its connections
        // were sent (then it waits in `idle` until those broadcasts are evicted). `forget`:
        // erase it regardless.
        void erase_if_unused_locked(typename std::unordered_map<Key, channel>::iterator it, bool forget = false)
        {
            auto& c = it->second;
            if (!c.unused())
                return;
            if (!forget && !everyone.history.empty()
                && everyone.history.front().seq <= c.broadcast_delivered_through) {
                if (!c.idle)
                    c.idle = idle.emplace(c.broadcast_delivered_through, it->first);
                return;
            }
            activate_locked(c);
            keys.erase(it);
        }

        // The key is in use again: it leaves `idle`.
        void activate_locked(channel& c)
        {
            if (c.idle) {
                idle.erase(*c.idle);
                c.idle.reset();
            }
        }

        // Erases the idle keys whose watermark is older than every retained broadcast.
        void drop_idle_locked()
        {
            const auto oldest = everyone.history.empty() ? std::numeric_limits<std::uint64_t>::max()
                                                         : everyone.history.front().seq;
            while (!idle.empty() && idle.begin()->first < oldest) {
                auto it = keys.find(idle.begin()->second);
                idle.erase(idle.begin());
                it->second.idle.reset();
                keys.erase(it);
            }
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
                it->second.history.clear();
                it->second.history_bytes = 0;
                it->second.finished = false;
                erase_if_unused_locked(it);
            }
        }

        history_options options;
        std::mutex mtx;
        std::unordered_map<Key, channel> keys;
        channel everyone;
        std::vector<member*> all;
        // Keys kept only for their broadcast watermark, by that watermark.
        std::multimap<std::uint64_t, Key> idle;
        std::deque<std::pair<std::chrono::steady_clock::time_point, Key>> lingering;
        std::uint64_t next_seq = 0;
        std::uint64_t last_broadcast = 0;  // the last broadcast sent to at least one connection
    };

    // The position of the newest retained event whose id is `id`, in any of `channels`.
    static std::optional<std::uint64_t> find_locked(const std::vector<channel*>& channels,
                                                    std::string_view id)
    {
        std::optional<std::uint64_t> found;
        for (auto* c : channels)
            for (auto it = c->history.rbegin(); it != c->history.rend(); ++it)
                if (it->id == id) {
                    if (!found || it->seq > *found)
                        found = it->seq;
                    break;
                }
        return found;
    }

    std::shared_ptr<state> state_;
};

/// Connections of plain TCP sockets by string key.
using registry = basic_registry<>;

} // namespace ssepp

#endif
