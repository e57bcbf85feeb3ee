// ssepp/history.hpp
// What lets a client that resumes with Last-Event-ID, or subscribes late, miss nothing: one
// order over every event with the ids it generates, and each key's bounded log (count, bytes,
// age) with its finish and what its connections were delivered. Pure: no I/O, no locking.
// SPDX-License-Identifier: BSL-1.0
#ifndef SSEPP_HISTORY_HPP
#define SSEPP_HISTORY_HPP

#include <ssepp/frame.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <deque>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace ssepp {

struct history_options {
    /// Events retained per key (and for broadcasts); 0 retains none.
    std::size_t max_events = 1024;
    /// Bytes retained per key, counted as formatted.
    std::size_t max_bytes = std::size_t(1) << 20;
    /// Events older than this are dropped (when the key is next used); 0 keeps them.
    std::chrono::milliseconds max_age{0};
    /// How long a finished key's history (and so its outcome) stays after finish().
    std::chrono::milliseconds finished_linger = std::chrono::minutes(5);
    /// Largest event accepted, formatted; a larger one is rejected with
    /// errc::event_too_large. Every connection attached must be able to queue one such event
    /// (emitter_options::max_queued_bytes at least this), so that any retained event reaches
    /// any client.
    std::size_t max_event_bytes = std::size_t(64) << 10;
    /// Generated ids are "<epoch>-<position>". Empty (the default) draws a random epoch, so
    /// that a registry's ids never repeat those of an earlier process or another node and a
    /// client resuming with an id from before a restart is told of the gap, not skipped ahead.
    /// Set it to something unique per process (a node name and boot count) to choose.
    std::string id_epoch{};
};

/// One order over every event of a registry: positions, and the ids made from them.
class history_order {
public:
    /// @throws std::invalid_argument for an epoch with CR, LF or NUL.
    explicit history_order(std::string epoch = {}) : epoch_(make_epoch(std::move(epoch))) {}

    /// The last position given out (0: none yet).
    std::uint64_t last() const noexcept { return last_; }
    /// The next position, not yet given out.
    std::uint64_t peek() const noexcept { return last_ + 1; }
    /// Gives out the next position.
    std::uint64_t take() noexcept { return ++last_; }
    /// The id of position `seq`: "<epoch>-<seq>".
    std::string id(std::uint64_t seq) const { return fmt::format("{}-{}", epoch_, seq); }
    const std::string& epoch() const noexcept { return epoch_; }

private:
    static std::string make_epoch(std::string given)
    {
        if (given.find_first_of(std::string_view("\r\n\0", 3)) != std::string::npos)
            throw std::invalid_argument("ssepp::history_options::id_epoch contains CR, LF or NUL");
        if (!given.empty())
            return given;
        // 40 random bits as 8 base-36 digits: compact, and a repeat across restarts is a
        // one-in-a-trillion event.
        std::random_device rd;
        auto bits = ((std::uint64_t(rd()) << 32) ^ rd()) & ((std::uint64_t(1) << 40) - 1);
        std::string out(8, '0');
        for (auto i = out.size(); i-- > 0; bits /= 36)
            out[i] = "0123456789abcdefghijklmnopqrstuvwxyz"[bits % 36];
        return out;
    }

    std::string epoch_;
    std::uint64_t last_ = 0;
};

/// An event as retained: its position, its id as sent, its wire bytes.
struct history_record {
    std::uint64_t seq = 0;
    std::string id{};
    shared_frame frame{};
    std::chrono::steady_clock::time_point at{};
};

/// One key's log (or the broadcasts'): bounded by history_options, oldest first.
class key_history {
public:
    using clock = std::chrono::steady_clock;

    const std::deque<history_record>& records() const noexcept { return records_; }
    bool empty() const noexcept { return records_.empty(); }
    std::size_t bytes() const noexcept { return bytes_; }
    /// The last position dropped (by a bound, or never retained): a client resuming from
    /// before it missed something.
    std::uint64_t evicted_through() const noexcept { return evicted_through_; }

    /// Appends `r`, then drops the oldest records past the bounds (always keeping `r`).
    /// `keep`: retain it even when max_events is 0 (a terminal event).
    void append(history_record r, const history_options& o, bool keep = false)
    {
        expire(r.at, o);
        if (std::max<std::size_t>(o.max_events, keep ? 1 : 0) == 0) {
            evicted_through_ = r.seq;
            return;
        }
        const auto cap = std::max<std::size_t>(o.max_events, 1);
        bytes_ += r.frame->size();
        records_.push_back(std::move(r));
        while (records_.size() > 1 && (records_.size() > cap || bytes_ > o.max_bytes))
            pop_front();
    }

    /// Drops the records older than history_options::max_age at `now`.
    void expire(clock::time_point now, const history_options& o)
    {
        if (o.max_age.count() <= 0)
            return;
        while (!records_.empty() && now - records_.front().at > o.max_age)
            pop_front();
    }

    /// The position of the oldest record whose id is `id`: on duplicate ids a replay from the
    /// oldest repeats events rather than skipping them.
    std::optional<std::uint64_t> find(std::string_view id) const
    {
        for (const auto& r : records_)
            if (r.id == id)
                return r.seq;
        return std::nullopt;
    }

    /// Drops every record (the key is forgotten or erased).
    void clear() noexcept
    {
        records_.clear();
        bytes_ = 0;
    }

private:
    void pop_front()
    {
        bytes_ -= records_.front().frame->size();
        evicted_through_ = records_.front().seq;
        records_.pop_front();
    }

    std::deque<history_record> records_;
    std::size_t bytes_ = 0;
    std::uint64_t evicted_through_ = 0;
};

} // namespace ssepp

#endif
