// ssepp/registry.hpp
// Live connections by key (user, transaction, topic), fan-out that formats each event once,
// and a bounded per-key history so that a client resuming with Last-Event-ID misses nothing.
// SPDX-License-Identifier: BSL-1.0
#ifndef SSEPP_REGISTRY_HPP
#define SSEPP_REGISTRY_HPP

#include <ssepp/emitter.hpp>
#include <ssepp/error.hpp>
#include <ssepp/event.hpp>
#include <ssepp/frame.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <deque>
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
    /// Queued first when `last_event_id` is not retained (so the client can reset its state),
    /// before the whole retained history.
    std::optional<event> on_gap{};
};

struct attach_result {
    /// Events queued from history.
    std::size_t replayed = 0;
    /// last_event_id was found: the replay starts right after it.
    bool resumed = false;
    /// The client may have missed events: its last_event_id is no longer (or never was)
    /// retained, or events after it were evicted.
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
/// and on_close(handler).
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

    /// Completes every connection; they leave as they close.
    ~basic_registry() { complete_all(); }

    /// Adds `em` under `key`; see the other overload.
    attach_result attach(const Key& key, emitter_ptr em, const attach_options& options = {})
    {
        return attach(std::span<const Key>(&key, 1), std::move(em), options);
    }

    /// Adds `em` under every key of `keys`, queues its replay (see attach_options), starts it,
    /// and from then on queues to it every event sent to one of its keys. It leaves the registry
    /// by itself when it closes.
    attach_result attach(std::span<const Key> keys, emitter_ptr em, const attach_options& options = {})
    {
        attach_result result;
        auto& s = *state_;
        std::unique_lock lock(s.mtx);
        s.purge_locked();
        auto* m = new member{em, std::vector<Key>(keys.begin(), keys.end()), s.all.size()};
        std::vector<channel*> channels{&s.everyone};
        for (const auto& k : m->keys)
            channels.push_back(&s.keys[k]);

        // Where the replay starts.
        std::uint64_t after = 0;
        bool whole = true;
        if (options.last_event_id) {
            if (auto seq = find_locked(channels, *options.last_event_id)) {
                after = *seq;
                whole = false;
                result.resumed = true;
                for (auto* c : channels)
                    result.gap |= c->evicted_through > after;
            } else {
                result.gap = true;
            }
        } else if (options.otherwise == replay::none) {
            after = s.next_seq;
            whole = false;
        } else if (options.otherwise == replay::undelivered) {
            whole = false;
            for (std::size_t i = 1; i < channels.size(); ++i)
                after = std::max(after, channels[i]->delivered_through);
        }

        if (result.gap && options.on_gap)
            em->send(*options.on_gap);
        std::vector<const record*> replay;
        for (auto* c : channels)
            for (const auto& r : c->history)
                if (whole || r.seq > after)
                    replay.push_back(&r);
        std::sort(replay.begin(), replay.end(), [](auto* a, auto* b) { return a->seq < b->seq; });
        em->start();
        for (const auto* r : replay)
            em->send(r->frame);
        result.replayed = replay.size();

        s.all.push_back(m);
        result.finished = channels.size() > 1;
        for (std::size_t i = 1; i < channels.size(); ++i) {
            channels[i]->members.push_back(m);
            channels[i]->delivered_through = s.next_seq;
            result.finished &= channels[i]->finished;
        }
        if (result.finished)
            em->complete();
        em->on_close([w = std::weak_ptr<state>(state_), m](close_reason, std::error_code) {
            if (auto s = w.lock())
                s->detach(m);
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
        auto& c = s.keys[key];
        if (c.finished)
            return {.error = errc::closed};
        return s.deliver_locked(c, std::move(e));
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
    /// once it is written, and keeps the key's history for history_options::finished_linger, so
    /// that a client attaching later replays the outcome and is completed too.
    send_result finish(const Key& key, event last)
    {
        auto& s = *state_;
        std::lock_guard lock(s.mtx);
        s.purge_locked();
        auto& c = s.keys[key];
        if (c.finished)
            return {.error = errc::closed};
        auto result = s.deliver_locked(c, std::move(last));
        if (!result)
            return result;
        c.finished = true;
        s.lingering.emplace_back(std::chrono::steady_clock::now() + s.options.finished_linger, key);
        for (auto* m : c.members)
            if (std::all_of(m->keys.begin(), m->keys.end(), [&](const Key& k) { return s.keys[k].finished; }))
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

    /// Completes `key`'s connections and forgets its history.
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
        s.erase_if_unused_locked(it);
    }

    /// Completes every connection (for shutdown); they leave as they close.
    void complete_all()
    {
        auto& s = *state_;
        std::lock_guard lock(s.mtx);
        for (auto* m : s.all)
            m->em->complete();
    }

    /// Live connections.
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
        return s.keys.contains(key);
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
        auto it = s.keys.find(key);
        if (it == s.keys.end() || it->second.history.empty())
            return std::nullopt;
        return it->second.history.back().id;
    }

private:
    struct member {
        emitter_ptr em;
        std::vector<Key> keys;
        std::size_t index;  // in state::all
    };

    struct record {
        std::uint64_t seq;
        std::string id;
        shared_frame frame;
    };

    struct channel {
        std::vector<member*> members;
        std::deque<record> history;
        std::size_t history_bytes = 0;
        std::uint64_t evicted_through = 0;    // last position dropped from history
        std::uint64_t delivered_through = 0;  // last position sent to a live connection
        bool finished = false;
    };

    struct state {
        explicit state(history_options o) : options(o) {}

        ~state()
        {
            for (auto* m : all)
                delete m;
        }

        // Fixes the event's place in the order, formats it once, retains it, queues it.
        send_result deliver_locked(channel& c, event e)
        {
            const auto seq = next_seq + 1;
            if (!e.id)
                e.id = fmt::format_int(seq).str();
            std::error_code ec;
            auto frame = make_frame(e, ec);
            if (ec)
                return {.error = ec};
            next_seq = seq;
            retain_locked(c, record{seq, *e.id, frame});
            const auto& targets = &c == &everyone ? all : c.members;
            for (auto* m : targets)
                m->em->send(frame);
            if (!targets.empty())
                c.delivered_through = seq;
            return {.connections = targets.size(), .id = std::move(*e.id)};
        }

        void retain_locked(channel& c, record r)
        {
            if (options.max_events == 0) {
                c.evicted_through = r.seq;
                return;
            }
            c.history_bytes += r.frame->size();
            c.history.push_back(std::move(r));
            while (c.history.size() > 1
                   && (c.history.size() > options.max_events || c.history_bytes > options.max_bytes)) {
                c.history_bytes -= c.history.front().frame->size();
                c.evicted_through = c.history.front().seq;
                c.history.pop_front();
            }
        }

        void detach(member* m)
        {
            std::lock_guard lock(mtx);
            for (const auto& k : m->keys) {
                auto it = keys.find(k);
                if (it == keys.end())
                    continue;
                auto& v = it->second.members;
                if (auto pos = std::find(v.begin(), v.end(), m); pos != v.end()) {
                    *pos = v.back();
                    v.pop_back();
                }
                erase_if_unused_locked(it);
            }
            all[m->index] = all.back();
            all[m->index]->index = m->index;
            all.pop_back();
            delete m;
        }

        void erase_if_unused_locked(typename std::unordered_map<Key, channel>::iterator it)
        {
            if (it->second.members.empty() && it->second.history.empty() && !it->second.finished)
                keys.erase(it);
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
                if (it == keys.end() || !it->second.finished)
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
        std::deque<std::pair<std::chrono::steady_clock::time_point, Key>> lingering;
        std::uint64_t next_seq = 0;
    };

    // The position of the retained event whose id is `id`, in any of `channels`.
    static std::optional<std::uint64_t> find_locked(const std::vector<channel*>& channels,
                                                    std::string_view id)
    {
        for (auto* c : channels)
            for (auto it = c->history.rbegin(); it != c->history.rend(); ++it)
                if (it->id == id)
                    return it->seq;
        return std::nullopt;
    }

    std::shared_ptr<state> state_;
};

/// Connections of plain TCP sockets by string key.
using registry = basic_registry<>;

} // namespace ssepp

#endif
