// ssepp/detail/stream_service.hpp
// What the emitters on one execution context share: one timer that sweeps their heartbeats and
// timeouts (an idle connection costs a pointer here, not a timer object), and one queue that
// batches their write kicks (a broadcast to 10,000 idle connections posts about 160 handlers,
// one per 64 connections, not 10,000, each of which would wake another thread).
// SPDX-License-Identifier: BSL-1.0
#ifndef SSEPP_DETAIL_STREAM_SERVICE_HPP
#define SSEPP_DETAIL_STREAM_SERVICE_HPP

#include <ssepp/detail/asio.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <deque>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

namespace ssepp::detail {

inline std::int64_t steady_now_ns() noexcept
{
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

class stream_service;

/// What an emitter gives the service: sweep() on each tick, kicked() to start writing.
class stream_member {
public:
    /// Runs under the service's lock on the timer's thread: may only read its own atomics and
    /// post work to its own executor.
    virtual void sweep(std::int64_t now_ns) noexcept = 0;
    /// Runs on an io_context thread, with no lock of the service held.
    virtual void kicked() = 0;

protected:
    ~stream_member() = default;

private:
    friend class stream_service;
    static constexpr std::uint32_t not_swept = std::numeric_limits<std::uint32_t>::max();
    stream_service* service_ = nullptr;
    std::uint32_t sweep_index_ = not_swept;  // written under the service's lock, also for others
    std::uint32_t sweep_period_us_ = 0;      // 0: not swept; written only for this member
};

/// An Asio service: asio::use_service<stream_service>(context) gives the context's one.
class stream_service final : public asio::execution_context::service {
public:
    inline static asio::execution_context::id id;

    explicit stream_service(asio::execution_context& context) : service(context) {}

    /// The service of `ex`'s context, remembered in `member` so that kicks need no lookup.
    template <class Executor>
    static stream_service& of(stream_member& member, const Executor& ex)
    {
        if (!member.service_)
            member.service_ = &asio::use_service<stream_service>(asio::query(ex, asio::execution::context));
        return *member.service_;
    }

    /// Starts sweeping `member` every `period` or sooner (clamped to 5 ms .. 1 s). The first
    /// member's executor runs the timer; the tick itself only posts to each member's executor.
    void add(stream_member& member, const asio::any_io_executor& ex, std::chrono::nanoseconds period)
    {
        std::lock_guard lock(mtx_);
        if (shut_ || member.sweep_index_ != stream_member::not_swept)
            return;
        const auto clamped = std::chrono::duration_cast<std::chrono::microseconds>(
            std::clamp<std::chrono::nanoseconds>(period, std::chrono::milliseconds(5), std::chrono::seconds(1)));
        member.service_ = this;
        member.sweep_index_ = static_cast<std::uint32_t>(swept_.size());
        member.sweep_period_us_ = static_cast<std::uint32_t>(clamped.count());
        swept_.push_back(&member);
        ++periods_[clamped];
        const bool sooner = clamped < period_;
        period_ = periods_.begin()->first;
        if (!timer_)
            timer_.emplace(ex);
        // A shorter period re-arms at once, so that a member with a short heartbeat is not
        // first swept at the pace of the ones before it.
        if (!armed_ || sooner)
            arm();
    }

    /// Stops sweeping `member`; safe to call more than once, and after the context shut down.
    /// A member that is not swept does not touch the service (which may be gone).
    static void remove(stream_member& member)
    {
        if (auto* self = member.service_; self && member.sweep_period_us_ != 0)
            self->erase(member);
    }

    /// How many members are swept.
    std::size_t swept() const
    {
        std::lock_guard lock(mtx_);
        return swept_.size();
    }

    /// The sweep period: the shortest that any swept member asks for (1 s with none).
    std::chrono::microseconds period() const
    {
        std::lock_guard lock(mtx_);
        return period_;
    }

    /// Queues `member` to have kicked() called on a thread running `ex`'s io_context. Kicks
    /// queued together run in batches, each one posted handler; a batch that finds more queued
    /// posts the next at once, so that every thread running the context can take a share.
    void kick(std::shared_ptr<stream_member> member, asio::io_context::executor_type ex)
    {
        std::lock_guard lock(mtx_);
        if (shut_)
            return;
        kicks_.push_back(std::move(member));
        if (!drain_posted_)
            post_drain(ex);
    }

private:
    static constexpr std::size_t kick_batch = 64;

    using batch = std::array<std::shared_ptr<stream_member>, kick_batch>;

    void post_drain(asio::io_context::executor_type ex)
    {
        asio::post(ex, [this, ex] { drain(ex); });
        drain_posted_ = true;  // only once posted: a failed post leaves the next kick to try
    }

    void drain(asio::io_context::executor_type ex)
    {
        batch taken;
        std::size_t n = 0;
        std::size_t done = 0;
        // Should a kick (or the post) throw, the rest of the batch goes back to the front of
        // the queue, to be kicked by the next drain: none of them may be left waiting.
        struct requeue_rest {
            stream_service& service;
            batch& taken;
            const std::size_t& done;
            const std::size_t& n;
            asio::io_context::executor_type ex;
            ~requeue_rest()
            {
                if (done < n)
                    service.requeue(taken, done, n, ex);
            }
        } guard{*this, taken, done, n, ex};
        {
            std::lock_guard lock(mtx_);
            drain_posted_ = false;
            n = std::min(kick_batch, kicks_.size());
            std::move(kicks_.begin(), kicks_.begin() + static_cast<std::ptrdiff_t>(n), taken.begin());
            kicks_.erase(kicks_.begin(), kicks_.begin() + static_cast<std::ptrdiff_t>(n));
            if (!kicks_.empty() && !shut_)
                post_drain(ex);
        }
        // Kicked outside the lock: a member released here may be destroyed, and remove itself.
        while (done < n)
            std::exchange(taken[done++], nullptr)->kicked();
    }

    void requeue(batch& taken, std::size_t from, std::size_t to, asio::io_context::executor_type ex) noexcept
    {
        try {
            std::lock_guard lock(mtx_);
            if (shut_)
                return;
            kicks_.insert(kicks_.begin(), std::make_move_iterator(taken.begin() + static_cast<std::ptrdiff_t>(from)),
                          std::make_move_iterator(taken.begin() + static_cast<std::ptrdiff_t>(to)));
            if (!drain_posted_)
                post_drain(ex);
        } catch (...) {
            // Out of memory while unwinding: what is not queued waits for the next kick's drain.
        }
    }

    void erase(stream_member& member)
    {
        std::lock_guard lock(mtx_);
        const auto i = member.sweep_index_;
        if (i == stream_member::not_swept || i >= swept_.size() || swept_[i] != &member)
            return;
        swept_[i] = swept_.back();
        swept_[i]->sweep_index_ = i;
        swept_.pop_back();
        member.sweep_index_ = stream_member::not_swept;
        // The pace follows the members left: a short heartbeat gone, the sweeps slow down.
        if (const auto it = periods_.find(std::chrono::microseconds(member.sweep_period_us_));
            it != periods_.end() && --it->second == 0)
            periods_.erase(it);
        member.sweep_period_us_ = 0;
        period_ = periods_.empty() ? std::chrono::seconds(1) : periods_.begin()->first;
        if (swept_.empty()) {
            // Nothing left to sweep: stop now, so that io_context::run() can return once every
            // connection is gone.
            if (armed_ && timer_) {
                armed_ = false;
                timer_->cancel();
            }
        }
    }

    // Arms (or re-arms: expires_after cancels a pending wait, whose handler then does nothing).
    void arm()
    {
        armed_ = true;
        timer_->expires_after(period_);
        timer_->async_wait([this](error_code ec) {
            if (!ec)
                tick();
        });
    }

    void tick()
    {
        std::lock_guard lock(mtx_);
        armed_ = false;
        if (shut_ || swept_.empty())
            return;
        const auto now = steady_now_ns();
        for (auto* m : swept_)
            m->sweep(now);
        arm();
    }

    void shutdown() override
    {
        std::deque<std::shared_ptr<stream_member>> kicks;
        {
            std::lock_guard lock(mtx_);
            shut_ = true;
            for (auto* m : swept_) {
                m->service_ = nullptr;
                m->sweep_index_ = stream_member::not_swept;
                m->sweep_period_us_ = 0;
            }
            swept_.clear();
            periods_.clear();
            timer_.reset();
            kicks.swap(kicks_);
        }
        // Released outside the lock: a member destroyed here removes itself.
    }

    mutable std::mutex mtx_;
    std::vector<stream_member*> swept_;
    std::optional<asio::steady_timer> timer_;
    std::chrono::microseconds period_ = std::chrono::seconds(1);
    std::map<std::chrono::microseconds, std::uint32_t> periods_;  // members per sweep period
    std::deque<std::shared_ptr<stream_member>> kicks_;
    bool armed_ = false;
    bool drain_posted_ = false;
    bool shut_ = false;
};

} // namespace ssepp::detail

#endif
