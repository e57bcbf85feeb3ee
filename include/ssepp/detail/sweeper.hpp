// ssepp/detail/sweeper.hpp
// One timer per execution context that drives every emitter's heartbeat and timeouts, so an
// idle connection costs a pointer here instead of a timer object (and its pending wait).
// SPDX-License-Identifier: BSL-1.0
#ifndef SSEPP_DETAIL_SWEEPER_HPP
#define SSEPP_DETAIL_SWEEPER_HPP

#include <asio/any_io_executor.hpp>
#include <asio/execution_context.hpp>
#include <asio/steady_timer.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
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

class sweeper;

/// What the sweeper calls on each tick. sweep() runs under the sweeper's lock on the timer's
/// thread: it may only read its own atomics and post work to its own executor.
class sweep_target {
public:
    virtual void sweep(std::int64_t now_ns) noexcept = 0;

protected:
    ~sweep_target() = default;

private:
    friend class sweeper;
    sweeper* sweeper_ = nullptr;
    std::uint32_t sweep_index_ = 0;
};

/// An Asio service: asio::use_service<sweeper>(context) gives the context's one sweeper.
class sweeper final : public asio::execution_context::service {
public:
    inline static asio::execution_context::id id;

    explicit sweeper(asio::execution_context& context) : service(context) {}

    /// Starts sweeping `target` every `period` or sooner (clamped to 5 ms .. 1 s). The first
    /// target's executor runs the timer; the tick itself only posts to each target's executor.
    void add(sweep_target& target, const asio::any_io_executor& ex, std::chrono::nanoseconds period)
    {
        std::lock_guard lock(mtx_);
        if (shut_)
            return;
        target.sweeper_ = this;
        target.sweep_index_ = static_cast<std::uint32_t>(targets_.size());
        targets_.push_back(&target);
        const auto clamped = std::clamp<std::chrono::nanoseconds>(period, std::chrono::milliseconds(5),
                                                                  std::chrono::seconds(1));
        const bool sooner = clamped < period_;
        period_ = std::min(period_, clamped);
        if (!timer_)
            timer_.emplace(ex);
        // A shorter period re-arms at once, so that a target with a short heartbeat is not
        // first swept at the pace of the ones before it.
        if (!armed_ || sooner)
            arm();
    }

    /// Stops sweeping `target`; safe to call more than once, and after the context shut down.
    static void remove(sweep_target& target)
    {
        if (auto* self = target.sweeper_)
            self->erase(target);
    }

    std::size_t size() const
    {
        std::lock_guard lock(mtx_);
        return targets_.size();
    }

private:
    void erase(sweep_target& target)
    {
        std::lock_guard lock(mtx_);
        if (target.sweeper_ != this)
            return;
        const auto i = target.sweep_index_;
        targets_[i] = targets_.back();
        targets_[i]->sweep_index_ = i;
        targets_.pop_back();
        target.sweeper_ = nullptr;
        if (targets_.empty()) {
            // Nothing left to sweep: stop now, so that io_context::run() can return once every
            // connection is gone, and start again at the slowest pace.
            period_ = std::chrono::seconds(1);
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
        timer_->async_wait([this](std::error_code ec) {
            if (!ec)
                tick();
        });
    }

    void tick()
    {
        std::lock_guard lock(mtx_);
        armed_ = false;
        if (shut_ || targets_.empty())
            return;
        const auto now = steady_now_ns();
        for (auto* t : targets_)
            t->sweep(now);
        arm();
    }

    void shutdown() override
    {
        std::lock_guard lock(mtx_);
        shut_ = true;
        for (auto* t : targets_)
            t->sweeper_ = nullptr;
        targets_.clear();
        timer_.reset();
    }

    mutable std::mutex mtx_;
    std::vector<sweep_target*> targets_;
    std::optional<asio::steady_timer> timer_;
    std::chrono::nanoseconds period_ = std::chrono::seconds(1);
    bool armed_ = false;
    bool shut_ = false;
};

} // namespace ssepp::detail

#endif
