// examples/common/stream_slots.hpp
// Places for event streams. The HTTP front stops counting a connection once its socket is
// taken for a stream (take_socket), so a server counts its streams itself: at most `total` at
// once, and at most a given number under one key (a session, a job, "the public ticker"). A
// place is taken when the stream is asked for, before it is answered (so that a refusal can
// still be an HTTP answer), and given back when the last copy of its slot goes: keep the slot
// in the stream's close handler.
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

namespace common {

class stream_slots {
public:
    /// Holds a place while it lives (shared: copies hold the same place).
    using slot = std::shared_ptr<void>;
    enum class full { total, key };

    explicit stream_slots(std::size_t total) : state_(std::make_shared<state>(total)) {}

    /// A place under `key` when fewer than `total` streams are open in all and fewer than
    /// `per_key` under `key` (an empty key counts in the total only); else what is full.
    std::pair<slot, std::optional<full>> take(const std::string& key, std::size_t per_key)
    {
        std::lock_guard lock(state_->mtx);
        if (state_->open >= state_->total)
            return {nullptr, full::total};
        if (!key.empty() && state_->by_key[key] >= per_key) {
            if (state_->by_key[key] == 0)
                state_->by_key.erase(key);
            return {nullptr, full::key};
        }
        ++state_->open;
        if (!key.empty())
            ++state_->by_key[key];
        // The places outlive this object if need be (a stream may close after its server).
        return {slot(nullptr, [s = state_, key](void*) { s->give_back(key); }), std::nullopt};
    }

    std::size_t open() const
    {
        std::lock_guard lock(state_->mtx);
        return state_->open;
    }

    std::size_t open(const std::string& key) const
    {
        std::lock_guard lock(state_->mtx);
        auto it = state_->by_key.find(key);
        return it == state_->by_key.end() ? 0 : it->second;
    }

    std::size_t total() const { return state_->total; }

private:
    struct state {
        explicit state(std::size_t t) : total(t) {}
        void give_back(const std::string& key)
        {
            std::lock_guard lock(mtx);
            --open;
            if (!key.empty()) {
                auto it = by_key.find(key);
                if (--it->second == 0)
                    by_key.erase(it); // keys come and go (sessions, jobs): keep only live ones
            }
        }
        mutable std::mutex mtx;
        const std::size_t total;
        std::size_t open = 0;
        std::map<std::string, std::size_t> by_key;
    };
    std::shared_ptr<state> state_;
};

} // namespace common
